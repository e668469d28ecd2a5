"""What `run` and `evaluate` print: rich tables for people, JSON for programs.

Labels and paths come from files cnnspec did not write, so control characters (ANSI escapes, newlines) are shown
escaped, rich markup is never interpreted, and undecodable bytes in file names appear as \\xNN.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from .runtime import Evaluation, Result


def printable(text: str) -> str:
    """`text` with undecodable bytes as \\xNN and control characters escaped (so `\\x1b[2J` cannot clear a screen)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def results_json(results: list[Result]) -> str:
    """Exactly `[{"path": str, "predictions": [{"label", "index", "score"}], "error": str|null}]`."""
    return json.dumps([_entry(r) for r in results], ensure_ascii=False, allow_nan=False)


def result_jsonl(result: Result) -> str:
    """One entry of `run --json` on a line of its own (`run --jsonl`: printed as each image is classified)."""
    return json.dumps(_entry(result), ensure_ascii=False, allow_nan=False)


def stream_jsonl(results: Iterator[Result]) -> int:
    """`run --jsonl`: each result on stdout as soon as it is known; the exit code (1 when any image failed)."""
    total = failed = 0
    for result in results:
        print(result_jsonl(result), flush=True)
        total, failed = total + 1, failed + (result.error is not None)
    if failed:
        print(f"error: {failed} of {total} image(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def _entry(r: Result) -> dict[str, Any]:
    entry = r.as_dict()
    entry["path"] = r.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return entry


def render_results(results: list[Result], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (("path", "left"), ("top-1", "left"), ("score", "right"), ("next", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in results:
        if r.error is not None:
            table.add_row(Text(printable(r.path)), Text("error", style="red"), Text(""), Text(printable(r.error)))
            continue
        top, rest = r.predictions[0], r.predictions[1:]
        others = ", ".join(f"{printable(p.label)} {p.score:.3f}" for p in rest)
        table.add_row(Text(printable(r.path)), Text(printable(top.label)), Text(f"{top.score:.4f}"), Text(others))
    console.print(table)


def evaluation_json(ev: Evaluation) -> str:
    return json.dumps(ev.as_dict(), ensure_ascii=False, allow_nan=False)


def render_evaluation(ev: Evaluation, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text(f"accuracy {ev.accuracy:.4f}   loss {ev.loss:.4f}   n {ev.n}"))
    per_class = Table(box=None, pad_edge=False, header_style="bold", title="per class", title_justify="left")
    for name in ("class", "n", "accuracy"):
        per_class.add_column(name, justify="left" if name == "class" else "right")
    for row in ev.per_class:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        per_class.add_row(Text(printable(row["label"])), Text(str(row["n"])), Text(acc))
    console.print(per_class)
    confusion = Table(box=None, pad_edge=False, header_style="bold", title="confusion (rows: true, columns: predicted)")
    confusion.add_column("")
    short = [printable(label)[:8] for label in ev.labels]
    for name in short:
        confusion.add_column(Text(name), justify="right")
    for name, row in zip(short, ev.confusion, strict=True):
        confusion.add_row(Text(name), *(Text(str(v)) for v in row))
    console.print(confusion)
