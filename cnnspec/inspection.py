"""`cnnspec inspect`: what is inside an .onnx file."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import CnnspecError, SpecError
from .modelfile import read_model


def inspect_model(path: Path, console: Any) -> None:
    model = read_model(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if "cnnspec.spec" in meta:
        from .analysis import analyze
        from .spec import spec_from_data
        from .summary import render_report

        try:
            spec = spec_from_data(json.loads(meta["cnnspec.spec"]), source=f"{path} (embedded spec)")
            report = analyze(spec)
        except (SpecError, ValueError) as exc:
            raise CnnspecError(f"{path}: the embedded spec is damaged: {exc}") from None
        render_report(report, console)
        console.print(f"labels: {_safe(', '.join(report.labels))}", markup=False)
        console.print(f"preprocess: {_safe(str(meta.get('cnnspec.preprocess')))}", markup=False)
        console.print(f"made by cnnspec {_safe(meta.get('cnnspec.version', '?'))}; opset {_opset(model)}", markup=False)
        _describe_graph(model, meta, console, report, spec.input_shape)
        return
    producer = _safe(model.producer_name or "?")
    console.print(f"{path}: not made by cnnspec (producer {producer}, opset {_opset(model)})", markup=False)
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        initializers = {t.name for t in model.graph.initializer}
        for v in values:
            if v.name not in initializers:
                console.print(f"  {kind} {_safe(v.name)}: {_safe(_type_text(v))}", markup=False)
    counts = Counter(node.op_type for node in model.graph.node)
    console.print("  ops: " + _safe(", ".join(f"{op} x{n}" for op, n in counts.most_common()), 2000), markup=False)
    _describe_graph(model, meta, console)


def _describe_graph(model: Any, meta: dict[str, str], console: Any, report: Any = None, hwc: Any = ()) -> None:
    """The graph as it is (the spec table above shows the fp32 model the spec describes): precision, weight bytes
    per data type, quantization ops, any export summary, and whether the weights still fit the embedded spec."""
    from .graph_stats import graph_stats, spec_mismatch

    stats = graph_stats(model)
    declared = meta.get("cnnspec.precision")
    said = f" (metadata cnnspec.precision: {_safe(declared, 20)})" if declared and declared != stats.precision else ""
    sizes = ", ".join(f"{dtype} {n:,} B" for dtype, n in stats.weight_bytes.items())
    console.print(f"graph: {stats.precision} weights{said}; {stats.total_bytes:,} bytes ({sizes})", markup=False)
    if stats.quantized_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in stats.quantized_ops.items())
        console.print(f"quantization ops: {ops}", markup=False)
    for key in ("cnnspec.calibration", "cnnspec.export"):
        if key in meta:
            text = _safe(_export_summary(meta[key], stats.precision), 600)
            console.print(f"{key.split('.')[1]}: {text}", markup=False)
    if report is None:
        return
    if stats.precision != "fp32":
        console.print(f"note: the table above describes the spec's fp32 model; this file holds {stats.precision} "
                      "weights", markup=False)  # fmt: skip
    from .shapes import hwc_to_chw

    kernels = [math.prod(s) for layer in report.layers for s in layer.param_shapes.values() if len(s) >= 2]
    why = spec_mismatch(stats, kernels, hwc_to_chw(tuple(hwc)), model, len(report.labels))
    if why:
        console.print(f"warning: the graph no longer matches its embedded spec: {why}", markup=False)


def _export_summary(raw: str, precision: str) -> str:
    """`export`'s summary in words; the raw JSON when it is not what export writes."""
    try:
        info = json.loads(raw)
        parts = []
        if "method" in info:
            rr = "on" if info.get("reduce_range") else "off"
            parts.append(
                f"{info['method']} on {info['samples']} samples of {info['data']} ({info['format']}, "
                f"{info['weights']} weights, {info['activations']} activations, reduce_range {rr})"
            )
        if "kept_float32" in info:
            parts.append(f"kept in float32: {', '.join(map(str, info['kept_float32']))}")
        acc = info.get("accuracy")
        if acc:
            parts.append(f"accuracy fp32 {100 * acc['fp32']:.2f}% -> {precision} {100 * acc['exported']:.2f}% on "
                         f"{acc['n']} samples of {acc['data']} (agreement {100 * acc['agreement']:.2f}%, drop "
                         f"{acc['drop_points']:.2f} points)")  # fmt: skip
        return "; ".join(parts) if parts else raw
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw


def _safe(text: str, limit: int = 200) -> str:
    """Text from an untrusted model, printable: control characters (terminal escapes) escaped, length capped."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _opset(model: Any) -> int | str:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")


def _type_text(value: Any) -> str:
    from onnx import helper

    t = value.type.tensor_type
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim]
    try:
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else "?"
    except KeyError:  # an element type this onnx does not know (found by fuzzing)
        dtype = f"type {t.elem_type}"
    return f"{dtype}[{', '.join(dims)}]"
