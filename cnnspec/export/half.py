"""`export --to fp16`: float16 weights and compute with onnxruntime's own float16 converter
(onnxruntime.transformers.float16, shipped inside the onnxruntime wheel), float32 input and output.

Kept in float32 (Cast nodes around them): the in-graph preprocessing (raw 0..255 pixels and their mean/std
arithmetic), Softmax (its exp overflows float16 past logits of ~11), BatchNormalization that could not be
folded into a convolution (its variance and epsilon), and reductions over whole maps (a sum of 56x56 values
loses the low bits in float16). BatchNormalization after a convolution is folded into that convolution's
float32 weights first (onnxruntime's basic optimizations), and the folded weights are then rounded once.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import onnx

from ..errors import ModelError, UsageError
from ..files import check_output_path
from .report import DEFAULT_MAX_DROP, ExportResult, gate, measure, write
from .source import first_line, load_source, prepare, preprocessing_nodes, quiet, restore_contract

KEEP_FLOAT32 = ("Softmax", "LogSoftmax", "BatchNormalization", "GlobalAveragePool", "ReduceMean", "ReduceSum",
                "ReduceL2", "ReduceLogSumExp")  # fmt: skip
HINT = "Hint: the model may have values beyond float16's range (65504); keep it fp32 or try --to int8."


def export_fp16(
    model: Path,
    output: Path,
    eval_data: Path | None = None,
    max_drop: float | None = None,
    scale: float | None = None,
    mean: str | None = None,
    std: str | None = None,
    threads: int | None = None,
    calibration: Path | None = None,
) -> ExportResult:
    """Convert MODEL to float16 (float32 I/O), score it against fp32 on eval_data, gate on max_drop, write."""
    check_output_path(output, not_same_as={"model": model})
    if calibration is not None:
        raise UsageError("--calibration is for --to int8; fp16 needs no calibration (give --eval DATA to score it)")
    if max_drop is not None and eval_data is None:
        raise UsageError("--max-drop needs labelled data to compare on: give --eval DATA")
    source = load_source(model, scale, mean, std, threads, needs_pixels=eval_data is not None)
    evaluation = source.load(eval_data, "--eval data") if eval_data is not None else None
    converted, kept = convert(source.model)
    details: dict[str, Any] = {"kept_float32": kept}
    meta = {"cnnspec.precision": "fp16", "cnnspec.export": json.dumps(details, sort_keys=True)}
    out = restore_contract(source, converted, meta)
    result = ExportResult(None, "fp16", details={**details, "hint": HINT})
    if evaluation is not None:
        result.accuracy = measure(source, out, evaluation, Path(eval_data).name)
        result.max_drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
        details["accuracy"] = result.accuracy.as_dict()
        meta["cnnspec.export"] = json.dumps(details, sort_keys=True)
        out = restore_contract(source, onnx.ModelProto.FromString(out), meta)
    gate(result, result.max_drop)
    result.details.pop("hint")
    return write(result, output, out)


def convert(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """(the float16 model, the names of the nodes kept in float32)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with tempfile.TemporaryDirectory(prefix="cnnspec-fp16-") as tmp:
        prepared = prepare(model, Path(tmp))
    keep = preprocessing_nodes(prepared.graph)
    keep += [n.name for n in prepared.graph.node if n.op_type in KEEP_FLOAT32 and n.name not in keep]
    try:
        with quiet():
            half = convert_float_to_float16(
                prepared, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(KEEP_FLOAT32),
                node_block_list=keep, disable_shape_infer=False,
            )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the converter raises plain Exceptions and ValueErrors
        raise ModelError(f"onnxruntime's float16 converter failed: {first_line(exc)}") from None
    drop_round_trips(half.graph, float32=set(keep))
    return half, keep


def drop_round_trips(graph: onnx.GraphProto, float32: set[str]) -> None:
    """Remove float32 -> float16 -> float32 Cast pairs, which only round a float32 value to float16.

    With keep_io_types the converter casts the graph's input and output to float16 as if their neighbours were
    float16; when the neighbour was kept in float32 (the preprocessing, the final Softmax) the pair is left, and it
    would round the raw pixels and the probabilities. `float32` names the nodes kept in float32.
    """
    fp32 = {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        if node.name in float32 or (node.op_type == "Cast" and _cast_to(node) == onnx.TensorProto.FLOAT):
            fp32.update(node.output)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {v.name for v in graph.output}
    for second in list(graph.node):
        first = producer.get(second.input[0]) if second.op_type == "Cast" and second.input else None
        if (
            first is None or first.op_type != "Cast" or _cast_to(second) != onnx.TensorProto.FLOAT
            or _cast_to(first) != onnx.TensorProto.FLOAT16 or first.input[0] not in fp32
        ):  # fmt: skip
            continue
        x, y = first.input[0], second.output[0]
        if y in outputs and x in producer:  # the graph output keeps its name: x's producer writes it directly
            graph.node.remove(second)
            _rename(graph, x, y)
        else:
            _rename(graph, y, x, outputs_too=False)
    _remove_dead(graph)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _rename(graph: onnx.GraphProto, old: str, new: str, outputs_too: bool = True) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        if outputs_too:
            node.output[:] = [new if x == old else x for x in node.output]


def _remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is used (until none is left)."""
    while True:
        used = {x for node in graph.node for x in node.input} | {v.name for v in graph.output}
        dead = [i for i, node in enumerate(graph.node) if not any(o in used for o in node.output)]
        if not dead:
            return
        for i in reversed(dead):
            del graph.node[i]
