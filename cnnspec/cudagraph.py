"""Running a classifier on CUDA: IOBinding with fixed device buffers and, by default, CUDA graphs.

A CUDA graph records every kernel launch of one run and replays them with one launch, which removes the CPU
cost of launching (most of the latency of a small net at batch 1). onnxruntime captures a graph per
`gpu_graph_id` (a run option) and replays it on later runs with that id; the input and output must stay at the
same device addresses, so each batch size gets its own bound buffers, copied into in place.

onnxruntime refuses graph capture when a node of the model runs on the CPU provider; the model then runs
without graphs, and the caller is told once. `-1` as the graph id runs without capture (used past MAX_GRAPHS
distinct batch sizes, to bound the device memory held by captured graphs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelError
from .sessions import make_session

MAX_GRAPHS = 8  # distinct batch sizes captured; `run` uses at most two (full batches and the last one)
NO_GRAPH = -1
_REFUSED = "graph capture"  # onnxruntime: "This session cannot use the graph capture feature as requested ..."


@dataclass
class _Binding:
    io: Any
    input: Any
    output: Any
    options: Any
    graph_id: int


class CudaRunner:
    """Batches of float32 [N, C, H, W] in, [N, classes] out, on the GPU.

    `factory` and `ort` are onnxruntime's session maker and module; tests pass stand-ins to check the decisions
    (graph or not, which id, buffer reuse, the fallback) without a GPU.
    """

    def __init__(
        self,
        data: bytes,
        input_name: str,
        output_name: str,
        classes: int | None,
        threads: int | None = None,
        use_graph: bool = True,
        notify: Callable[[str], None] | None = None,
        factory: Callable[..., Any] = make_session,
        ort: Any = None,
    ) -> None:
        if ort is None:
            import onnxruntime as ort
        self.ort, self.input_name, self.output_name, self.classes = ort, input_name, output_name, classes
        self.notify = notify or (lambda message: None)
        self.graphs = False
        if use_graph:
            try:
                self.session = factory(data, "cuda", threads, cuda_graph=True)
                self.graphs = True
            except ModelError as exc:
                if _REFUSED not in str(exc):
                    raise
                self.notify(f"CUDA graphs are off for this model ({_reason(exc)}); running it without them")
        if not self.graphs:
            self.session = factory(data, "cuda", threads)
        self._bindings: dict[int, _Binding] = {}

    @property
    def captured(self) -> list[int]:
        """The batch sizes that have a CUDA graph."""
        return sorted(n for n, b in self._bindings.items() if b.graph_id != NO_GRAPH)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.classes is None:  # the class count is symbolic in the file: one plain run tells it
            return self._run_unbound(x)
        binding = self._bindings.get(len(x))
        if binding is None:
            binding = self._bind(len(x), x.shape[1:])
            # a captured graph replays on these very buffers: keep them; plain ones only up to a few sizes
            if binding.graph_id != NO_GRAPH or len(self._bindings) < MAX_GRAPHS:
                self._bindings[len(x)] = binding
        binding.input.update_inplace(x)
        self.session.run_with_iobinding(binding.io, binding.options)
        return binding.output.numpy()

    def _graph_id(self) -> int:
        if not self.graphs:
            return NO_GRAPH
        used = sum(b.graph_id != NO_GRAPH for b in self._bindings.values())
        return used if used < MAX_GRAPHS else NO_GRAPH

    def _bind(self, n: int, chw: tuple[int, ...]) -> _Binding:
        ort = self.ort
        x = ort.OrtValue.ortvalue_from_shape_and_type((n, *chw), np.float32, "cuda", 0)
        y = ort.OrtValue.ortvalue_from_shape_and_type((n, self.classes), np.float32, "cuda", 0)
        io = self.session.io_binding()
        io.bind_ortvalue_input(self.input_name, x)
        io.bind_ortvalue_output(self.output_name, y)
        options = ort.RunOptions()
        graph_id = self._graph_id()
        if self.graphs:  # the key means something only to a session with graph capture on
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return _Binding(io, x, y, options, graph_id)

    def _run_unbound(self, x: np.ndarray) -> np.ndarray:
        io = self.session.io_binding()
        io.bind_ortvalue_input(self.input_name, self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        io.bind_output(self.output_name, "cuda", 0)
        options = self.ort.RunOptions()
        if self.graphs:
            options.add_run_config_entry("gpu_graph_id", str(NO_GRAPH))
        self.session.run_with_iobinding(io, options)
        out = io.copy_outputs_to_cpu()[0]
        self.classes = int(out.shape[1])
        return out


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "partitioned" in text or "CPU" in text:
        return "a node of it runs on the CPU provider"
    if "control flow" in text:
        return "it has control-flow nodes"
    return text.split(": ", 1)[-1][:200]
