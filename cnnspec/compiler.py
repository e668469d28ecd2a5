"""Lowering a checked spec to an inference ModelProto with initialized weights and its own metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import __version__
from .analysis import Report, check, expanded_layers
from .builder import GraphBuilder, make_model
from .errors import UsageError
from .graph import INPUT
from .initializers import layer_rng
from .layers import Lowering
from .shapes import hwc_to_chw
from .spec import Spec, normalized

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax over one axis and Pad with tensor pads
INPUT_NAME, OUTPUT_NAME = "input", "output"

Params = dict[str, np.ndarray]
"""Parameters by full name ('conv2d.weight'), in layer order: the network's state dict."""


def initial_params(spec: Spec, report: Report, seed: int = 0) -> Params:
    """Initial weights of every layer, each drawn from its own stream keyed on (seed, expanded layer name)."""
    params: Params = {}
    for row in report.layers:
        names = row.param_names()
        for key, value in row.layer.init_params(row.input_shape, layer_rng(seed, row.name)).items():
            params[names[key]] = value
    return params


def lower_preprocess(g: GraphBuilder, spec: Spec, x: str) -> str:
    """x * scale, then (x - mean) / std per channel, folded to one Mul and one Add."""
    if spec.preprocess is None:
        return x
    p, channels = spec.preprocess, spec.input_shape[2]
    mean = np.broadcast_to(np.asarray(p.mean, np.float64), (channels,))
    std = np.broadcast_to(np.asarray(p.std, np.float64), (channels,))
    # (x * scale - mean) / std = x * (scale / std) + (-mean / std); a factor of 1 or a term of 0 is
    # left out, so `scale: 1/255` alone is one Mul and the identity emits nothing.
    mul, add = p.scale / std, -mean / std
    shape = (1, channels, 1, 1)
    if np.any(mul != 1):
        x = g.op("Mul", [x, g.constant("preprocess", mul.reshape(shape))], "preprocess")
    if np.any(add != 0):
        x = g.op("Add", [x, g.constant("preprocess", add.reshape(shape))], "preprocess")
    return x


@dataclass
class Forward:
    output: str
    contexts: list[Lowering]
    """One per node of the graph, in its order."""


def lower_layers(g: GraphBuilder, report: Report, x: str, param_tensor, training: bool, lower=None) -> Forward:
    """Emit every node's forward ops, reading its inputs by name; `param_tensor(full_name)` gives the tensor
    of a parameter. `lower(layer, g, xs, ctx)`, when given, replaces the layers' own lowering (a backend's)."""
    tensors = {INPUT: x}
    contexts = []
    for row in report.layers:
        names = {key: param_tensor(full) for key, full in row.param_names().items()}
        xs = [tensors[ref] for ref in row.inputs]
        ctx = Lowering(row.name, row.input_shapes, row.output_shape, names, training, input_tensors=tuple(xs))
        tensors[row.name] = (lower or _own_lowering)(row.layer, g, xs, ctx)
        contexts.append(ctx)
    _keep_pads_before_pools(g)
    return Forward(tensors[report.graph.output], contexts)


def _own_lowering(layer, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
    return layer.lower_node(g, xs, ctx)


def _keep_pads_before_pools(g: GraphBuilder) -> None:
    """Give a Pad that feeds a MaxPool/AveragePool the pad value -0.0 (equal to 0) instead of the default 0.

    NOTE: onnxruntime <= 1.19 (PadFusion) folds a zero Pad into a following pool's `pads`, which is wrong:
    MaxPool pads with -inf and AveragePool (count_include_pad=0) leaves pads out of the divisor, so
    ZeroPadding2D -> MaxPooling2D gives the window maximum instead of 0 on all-negative borders (and a
    pad >= kernel fails to load). The fusion only fires when the pad value's bytes are all zero.
    """
    pads = {node.output[0]: node for node in g.nodes if node.op_type == "Pad" and len(node.input) == 2}
    for node in g.nodes:
        pad = pads.pop(node.input[0], None) if node.op_type in ("MaxPool", "AveragePool") else None
        if pad is not None:
            pad.input.append(g.constant(pad.name.split("/")[0], -0.0))


def metadata(spec: Spec, report: Report) -> dict[str, str]:
    preprocess = (
        spec.preprocess.model_dump(mode="json") if spec.preprocess else {"scale": 1.0, "mean": [0.0], "std": [1.0]}
    )
    expanded = {"cnnspec.expanded": json.dumps(expanded_layers(report), sort_keys=True)} if spec.blocks else {}
    return {
        "cnnspec.version": __version__,
        "cnnspec.spec": json.dumps(normalized(spec), sort_keys=True),
        **expanded,
        "cnnspec.labels": json.dumps(report.labels),
        "cnnspec.preprocess": json.dumps(preprocess, sort_keys=True),
        "cnnspec.input_layout": "NCHW",
        "cnnspec.input_range": "raw pixel values (0..255 for 8-bit images)",
    }


def check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset} is not supported: use {MIN_OPSET} to {newest} (the installed onnx's newest)")
    return opset


def build_inference_model(spec: Spec, report: Report, params: Params, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The deployable model: `input` [batch, C, H, W] raw pixels -> `output` [batch, classes]."""
    g = GraphBuilder(check_opset(opset))
    for name, value in params.items():
        g.initializer(name, value)
    x = lower_preprocess(g, spec, INPUT_NAME)
    forward = lower_layers(g, report, x, lambda name: name, training=False)
    _rename_output(g, forward.output)
    model = make_model(classifier_graph(g, spec, report, OUTPUT_NAME), opset)
    helper.set_model_props(model, metadata(spec, report))
    return model


def classifier_graph(g: GraphBuilder, spec: Spec, report: Report, output: str) -> onnx.GraphProto:
    """The built nodes as a graph: `input` float32 [batch, C, H, W] -> `output` [batch, classes]."""
    c, h, w = hwc_to_chw(spec.input_shape)
    return helper.make_graph(
        g.nodes,
        spec.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", report.output_shape[0]])],
        initializer=g.initializers,
    )


def _rename_output(g: GraphBuilder, tensor: str) -> None:
    """Give the last node's output the contract name `output`."""
    for node in reversed(g.nodes):
        for i, name in enumerate(node.output):
            if name == tensor:
                node.output[i] = OUTPUT_NAME
                return
    raise AssertionError(f"no node produces {tensor!r}")


def compile_spec(spec: Spec, seed: int = 0, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Check the spec and lower it with freshly initialized weights (`compile --seed` gives the same)."""
    report = check(spec)
    return build_inference_model(spec, report, initial_params(spec, report, seed), opset)


def model_bytes(model: onnx.ModelProto) -> bytes:
    """Deterministic serialization (map fields sorted), so the same model gives the same bytes."""
    return model.SerializeToString(deterministic=True)


def compile_to_file(spec: Spec | str | Path, output: str | Path, seed: int = 0, opset: int = DEFAULT_OPSET) -> Path:
    """`cnnspec compile SPEC -o OUTPUT` in one call: a spec file (or a Spec) to an .onnx file, written atomically.

    >>> compile_to_file("specs/seed.yaml", "seed.onnx", seed=0)     # doctest: +SKIP
    """
    from .files import atomic_write, check_output_path
    from .spec import load_spec

    source = {"spec": spec} if isinstance(spec, (str, Path)) else {}
    output = check_output_path(output, not_same_as=source)
    parsed = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    atomic_write(output, model_bytes(compile_spec(parsed, seed=seed, opset=opset)))
    return output
