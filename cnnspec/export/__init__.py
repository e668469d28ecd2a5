"""`cnnspec export M.onnx --to TARGET`: one command, one module per target.

A target is a function `(source, options) -> Exported` registered in TARGETS under its `--to` name; the command
(cli.py) only parses options and dispatches here. int8 (quantize.py) and fp16 (half.py) rewrite the graph and
share the accuracy report and gate (report.py) and the contract checks and writing (source.py).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError

# --to NAME -> "module:function"; imported only when chosen, so one target's dependencies never load for another.
TARGETS: dict[str, str] = {
    "int8": "cnnspec.export.quantize:export_int8",
    "fp16": "cnnspec.export.half:export_fp16",
}


def target(name: str) -> Callable[..., Any]:
    """The export function registered for `--to name`."""
    if name not in TARGETS:
        raise UsageError(f"--to {name!r} is not an export target; choose one of: {', '.join(TARGETS)}")
    module, function = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), function)


# Parameter names whose command-line option is spelled differently.
_OPTION_NAMES = {"eval_data": "--eval"}


def export(model: str | Path, to: str, output: str | Path, **options: Any) -> Any:
    """Convert MODEL for target `to` and write OUTPUT; returns the target's result (see report.ExportResult).
    Options left None are the target's defaults; one the target does not take is a UsageError.

    >>> export("digits.onnx", "int8", "digits-int8.onnx", calibration="train.npz")   # doctest: +SKIP
    """
    function = target(to)
    accepted = inspect.signature(function).parameters
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in accepted:
            option = _OPTION_NAMES.get(key, "--" + key.replace("_", "-"))
            raise UsageError(f"{option} does not apply to --to {to}")
    return function(Path(model), Path(output), **given)


def export_command(model: Path, to: str, output: Path, as_json: bool = False, **options: Any) -> None:
    """`cnnspec export`: the report on stderr, or one JSON document on stdout with --json (also when the
    --max-drop gate refuses the model, with "path": null, before the error)."""
    from .report import GateError, summary_lines

    try:
        result = export(model, to, output, **options)
    except GateError as exc:
        if as_json:
            print(exc.result.json())
        else:
            print("\n".join(summary_lines(exc.result)), file=sys.stderr)
        raise
    if as_json:
        print(result.json())
    else:
        print("\n".join(summary_lines(result)), file=sys.stderr)
