"""Rendering a Report: the human table (in the spirit of Keras's model.summary()) and the JSON object."""

from __future__ import annotations

from typing import Any

from .analysis import LayerReport, Report
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
                "inputs": list(r.inputs),
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


_COLUMNS = (  # (header, right-aligned)
    ("#", True), ("layer", False), ("type", False), ("output", False), ("params", True), ("FLOPs", True),
    ("act. mem", True), ("padding t,b,l,r", False), ("RF", False),
)  # fmt: skip


_CONNECTED = ("connected to", False)


def _row(r: LayerReport, connected: bool) -> tuple[str, ...]:
    cells = (
        str(r.index), r.name, r.type, _shape(r.output_shape), f"{r.params:,}", _si(r.flops),
        _bytes(r.activation_bytes), r.padding or "-", f"{r.receptive_field[0]}x{r.receptive_field[1]}",
    )  # fmt: skip
    return cells + ((", ".join(r.inputs),) if connected else ())


def format_report(report: Report) -> str:
    """The per-layer table and the totals as plain text (ASCII, so any terminal or pipe can take it).

    NOTE: plain text rather than rich: importing and laying out rich costs ~45 ms, a sixth of
    `cnnspec validate`'s start-up budget, for a table this simple.
    """
    spec = report.spec
    # As Keras: a chain's table has no "connected to" column; a graph's names what each layer reads.
    connected = not report.graph.is_chain
    columns = _COLUMNS + ((_CONNECTED,) if connected else ())
    rows = [tuple(h for h, _ in columns)] + [_row(r, connected) for r in report.layers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]

    def line(cells: tuple[str, ...]) -> str:
        parts = (c.rjust(w) if right else c.ljust(w) for c, w, (_, right) in zip(cells, widths, columns, strict=True))
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(tuple("-" * w for w in widths)))
    classes = report.classes if len(report.output_shape) == 1 else "?"
    return "\n".join(
        [f"Model: {spec.name}  (input {_shape(spec.input_shape)}, H x W x C)", rule, line(rows[0]), rule]
        + [line(row) for row in rows[1:]]
        + [
            rule,
            f"Total params: {report.total_params:,} (trainable {report.trainable_params:,}, "
            f"non-trainable {report.total_params - report.trainable_params:,})" + _frozen(report),
            f"Weights: {_bytes(4 * report.total_params)} (float32);  FLOPs per image: {_si(report.total_flops)};  "
            f"classes: {classes}",
        ]
    )


def _frozen(report: Report) -> str:
    frozen = report.frozen_layers
    if not frozen:
        return ""
    count = sum(r.params for r in report.layers if r.name in frozen)
    shown = ", ".join(frozen[:6]) + (f", ... ({len(frozen)} layers)" if len(frozen) > 6 else "")
    return f"\nFrozen (trainable: false): {count:,} params in {shown}"


def render_report(report: Report, console: Any) -> None:
    """Print the table through a rich Console (for commands that already use one, e.g. `inspect`)."""
    console.print(format_report(report), markup=False, highlight=False)
