"""`cnnspec inspect`: what is inside an .onnx file."""

from __future__ import annotations

import json
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
            report = analyze(spec_from_data(json.loads(meta["cnnspec.spec"]), source=f"{path} (embedded spec)"))
        except (SpecError, ValueError) as exc:
            raise CnnspecError(f"{path}: the embedded spec is damaged: {exc}") from None
        render_report(report, console)
        console.print(f"labels: {_safe(', '.join(report.labels))}", markup=False)
        console.print(f"preprocess: {_safe(str(meta.get('cnnspec.preprocess')))}", markup=False)
        console.print(f"made by cnnspec {_safe(meta.get('cnnspec.version', '?'))}; opset {_opset(model)}", markup=False)
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
