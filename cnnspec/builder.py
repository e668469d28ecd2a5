"""A small ONNX graph builder: deterministic names scoped by layer, nodes and initializers in order."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphBuilder:
    """Collects nodes and initializers; every tensor name is unique and derived from the layer name.

    A node named `conv2d/Conv` outputs the tensor `conv2d/Conv`, so Netron (and error messages
    from onnxruntime) show the user's layer names.
    """

    def __init__(self, opset: int, dtype: Any = np.float32) -> None:
        self.opset = opset
        self.dtype = np.dtype(dtype)
        """Float type of constants; float64 builds serve the gradient checks (onnx's reference evaluator)."""
        self.device = "cpu"  # where the graph will run: training uses CPU-only kernels (Col2Im, MaxUnpool) on cpu
        self.serial = False
        """The graph runs in a session with ONE intra-op thread, which allows ScatterND(reduction='add')
        with repeated indices (onnxruntime's kernel splits the rows among its threads without locks)."""
        self.sync: Any = None
        """Data-parallel training (training/staged.py's SyncPoints): batch statistics and the loss's mean are
        taken over the global batch of all ranks; None (every other graph): over the tensor's own batch."""
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken: set[str] = set()

    def unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._taken:
            candidate, n = f"{name}_{n}", n + 1
        self._taken.add(candidate)
        return candidate

    def op(self, op_type: str, inputs: list[str], scope: str, *, outputs: int = 1, **attrs: Any) -> Any:
        """Append one node; returns its output name (or a list when `outputs` > 1)."""
        name = self.unique(f"{scope}/{op_type}")
        names = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self._taken.update(names)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def initializer(self, name: str, value: np.ndarray) -> str:
        """Add a named constant tensor (weights, fixed constants); the name is used as given."""
        if name in self._taken:
            raise ValueError(f"tensor name {name!r} used twice")
        self._taken.add(name)
        return self._add_initializer(name, value)

    def _add_initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def scalar(self, scope: str, value: float, dtype: Any) -> str:
        """A 0-d constant, for inputs the ONNX spec wants as true scalars (Range's start and delta)."""
        name = self.unique(f"{scope}/const")
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def constant(self, scope: str, value: np.ndarray | float, dtype: Any = None) -> str:
        """A small fixed constant (not a parameter) named after its scope; floats follow `self.dtype`."""
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        return self._add_initializer(self.unique(f"{scope}/const"), array)


PRODUCER = "cnnspec"


def make_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    """Wrap a graph with the standard-domain `opset`, the lowest IR version that allows it (opset 17 -> IR 8,
    loadable by onnxruntime-training 1.19.2) and cnnspec as producer."""
    from . import __version__

    opsets = [helper.make_opsetid("", opset)]
    ir_version = helper.find_min_ir_version_for(opsets)
    return helper.make_model(
        graph, opset_imports=opsets, ir_version=ir_version, producer_name=PRODUCER, producer_version=__version__
    )
