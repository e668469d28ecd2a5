"""Rendering a Report: the human table (in the spirit of Keras's model.summary()) and the JSON object."""

from __future__ import annotations

from typing import Any

from .analysis import Report
from .errors import Issue


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def report_json(report: Report, issues: list[Issue] | None = None, name: str | None = None) -> dict[str, Any]:
    """The `validate --json` object (documented in the README)."""
    spec = report.spec if report else None
    issues = issues if issues is not None else report.issues
    return {
        "valid": not issues,
        "name": name if spec is None else spec.name,
        "input_shape": list(spec.input_shape) if spec else None,
        "layers": [
            {
                "name": r.name,
                "type": r.type,
                "output_shape": list(r.output_shape),
                "params": r.params,
                "trainable_params": r.trainable_params,
                "flops": r.flops,
                "padding": r.padding or None,
                "receptive_field": list(r.receptive_field),
            }
            for r in (report.layers if report else [])
        ],
        "total_params": report.total_params if report else 0,
        "trainable_params": report.trainable_params if report else 0,
        "total_flops": report.total_flops if report else 0,
        "errors": [i.as_dict() for i in issues],
        "warnings": [w.as_dict() for w in (report.warnings if report else [])],
    }


def render_report(report: Report, console: Any) -> None:
    """Print the per-layer table and the totals with rich."""
    from rich.table import Table

    spec = report.spec
    table = Table(title=f"{spec.name}  (input {_shape(spec.input_shape)})", title_justify="left")
    for col, justify in (
        ("#", "right"), ("layer", "left"), ("type", "left"), ("output", "left"), ("params", "right"),
        ("FLOPs", "right"), ("act. mem", "right"), ("padding t,b,l,r", "left"), ("RF", "left"),
    ):  # fmt: skip
        table.add_column(col, justify=justify)
    for r in report.layers:
        table.add_row(
            str(r.index), r.name, r.type, _shape(r.output_shape), f"{r.params:,}", _si(r.flops),
            _bytes(r.activation_bytes), r.padding, f"{r.receptive_field[0]}x{r.receptive_field[1]}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"Total params: {report.total_params:,} (trainable {report.trainable_params:,}, "
        f"non-trainable {report.total_params - report.trainable_params:,});  "
        f"weights {_bytes(4 * report.total_params)};  FLOPs/image {_si(report.total_flops)};  "
        f"classes {report.output_shape[0] if len(report.output_shape) == 1 else '?'}",
        highlight=False,
    )
