"""How the command line presents itself: help text, examples, option groups, completion and the README table.

Typer builds the commands from cli.py's functions; the classes here adjust what Typer's defaults get wrong for
cnnspec, for every command at once (also those added later), so cli.py stays a list of thin commands:

- positional arguments in capitals on the usage line and in the help (`SPEC`, `MODEL`, `INPUT...`), as click
  writes them; Typer 0.29 writes `{spec}`;
- flags shown as flags: Typer 0.29 gives every option a type column, so `--resume` read `--resume <bool>`;
- the options of long commands in groups (data, optimization, outputs and checkpoints, devices);
- every command's help ending with real examples;
- plain help (no colour, no box drawing) when stdout is not a terminal, `NO_COLOR` is set or `TERM=dumb`;
  rich's panels on a terminal (`FORCE_COLOR` forces them);
- shell completion of spec files (.yaml, .yml, .json) and models (.onnx) by extension.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
MODEL_SUFFIXES = (".onnx",)

DATA, OPTIMIZATION, OUTPUTS, DEVICES, FOREIGN = (
    "Data", "Optimization", "Outputs and checkpoints", "Devices", "Models made elsewhere",
)  # fmt: skip

RAY = "Ray Data (--engine ray, cnnspec[ray])"

# Option groups, by command and parameter name; options not listed stay under "Options".
PANELS: dict[str, dict[str, str]] = {
    "train": {
        "data": DATA, "val_split": DATA, "val": DATA, "skip_bad_images": DATA,
        "epochs": OPTIMIZATION, "batch_size": OPTIMIZATION, "learning_rate": OPTIMIZATION, "seed": OPTIMIZATION,
        "output": OUTPUTS, "checkpoint_dir": OUTPUTS, "resume": OUTPUTS, "metrics_json": OUTPUTS,
        "export_train_step": OUTPUTS,
        "device": DEVICES, "backend": DEVICES, "threads": DEVICES,
    },
    "run": {
        "device": DEVICES, "batch_size": DEVICES, "threads": DEVICES,
        "labels": FOREIGN, "scale": FOREIGN, "mean": FOREIGN, "std": FOREIGN,
        "engine": RAY, "address": RAY, "output": RAY, "concurrency": RAY, "gpus_per_worker": RAY,
    },
    "evaluate": {
        "data": DATA, "skip_bad_images": DATA,
        "device": DEVICES, "batch_size": DEVICES, "threads": DEVICES,
        "labels": FOREIGN, "scale": FOREIGN, "mean": FOREIGN, "std": FOREIGN,
    },
}  # fmt: skip

# One or two real examples per command (they run as written from the repository's root, given the files).
EXAMPLES: dict[str, list[str]] = {
    "cnnspec": ["cnnspec validate specs/seed.yaml", "cnnspec train specs/digits.yaml --data digits.npz -o digits.onnx"],
    "validate": ["cnnspec validate specs/seed.yaml", "cnnspec validate specs/lenet5.yaml --json"],
    "schema": ["cnnspec schema > schema.json"],
    "compile": ["cnnspec compile specs/seed.yaml -o seed.onnx", "cnnspec compile specs/seed.yaml -o seed.onnx --json"],
    "inspect": ["cnnspec inspect seed.onnx", "cnnspec inspect seed.onnx --json"],
    "export-artifacts": ["cnnspec export-artifacts specs/digits.yaml artifacts/"],
    "run": [
        "cnnspec run digits.onnx one.png 'scans/*.png' --top-k 1 --json",
        "cnnspec run digits.onnx photos/ s3://bucket/scans/ --engine ray -o preds.parquet --concurrency 4",
    ],
    "evaluate": ["cnnspec evaluate digits.onnx --data test.npz", "cnnspec evaluate digits.onnx --data images/ --json"],
    "train": [
        "cnnspec train specs/digits.yaml --data digits.npz -o digits.onnx --val-split 0.2",
        "cnnspec train specs/seed.yaml --data images/ -o seed.onnx --checkpoint-dir ckpt --resume --json",
    ],
    "doctor": ["cnnspec doctor", "cnnspec doctor --device cuda --json"],
    "export": [
        "cnnspec export digits.onnx --to int8 --calibration train.npz --eval test.npz -o digits-int8.onnx",
        "cnnspec export digits.onnx --to triton -o model_repository --max-batch-size 64",
    ],
    "serve": ["cnnspec serve digits.onnx", "cnnspec serve digits.onnx seed.onnx --port 8080 --device cuda"],
    "visualize": [
        "cnnspec visualize digits.onnx seven.png -o pictures/",
        "cnnspec visualize digits.onnx seven.png -o pictures/ --layers conv2d,max_pooling2d",
    ],
    "import": [
        "cnnspec import model.keras -o spec.yaml",
        "cnnspec import model.keras -o spec.yaml --onnx model.onnx --labels labels.txt",
    ],
}


def plain_output(stream: Any = None) -> bool:
    """No colour and no box drawing: NO_COLOR set (no-color.org), TERM=dumb, or the stream is not a terminal."""
    if os.environ.get("FORCE_COLOR"):
        return False
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return True
    stream = stream or sys.stdout
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return True


def examples_epilog(name: str) -> str | None:
    lines = EXAMPLES.get(name)
    return "Examples:\n" + "\n".join(f"  $ {line}" for line in lines) if lines else None


def _usage_name(param: Any) -> str:
    """An argument as click writes it on the usage line: SPEC, [SPEC], INPUT..."""
    name = param.metavar or param.name.upper()
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name if param.required else f"[{name}]"


def _fix_params(params: list[Any], panels: dict[str, str]) -> None:
    for param in params:
        if param.param_type_name == "argument" and param.metavar is None:
            # A variadic argument is named in the singular: `inputs` -> INPUT...
            name = param.name.upper()
            param.metavar = name[:-1] + "..." if param.nargs != 1 and name.endswith("S") else name
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # NOTE: Typer 0.29 would show `<bool>`; an empty metavar shows nothing
        if param.name in panels and getattr(param, "rich_help_panel", None) is None:
            param.rich_help_panel = panels[param.name]


class _Presentation:
    """What cnnspec's command and group share: metavars, groups, examples and the plain help."""

    def _setup(self: Any) -> None:
        _fix_params(self.params, PANELS.get(self.name or "", {}))
        if self.epilog is None:
            self.epilog = examples_epilog(self.name or "")

    def get_params(self: Any, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        _fix_params(params, {})  # the help option is made here, on demand
        return params

    def format_help(self: Any, ctx: Any, formatter: Any) -> None:
        if not plain_output():
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        self.format_usage(ctx, formatter)
        if self.help:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(" ".join(self.help.split()))
        for title, rows in _sections(self, ctx):
            with formatter.section(title):
                formatter.write_dl(rows)
        if self.epilog:
            formatter.write_paragraph()
            formatter.write(self.epilog.rstrip() + "\n")


def _sections(command: Any, ctx: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """The help's sections in the rich help's order: arguments, options, the option groups, commands."""
    groups: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            required = "  [required]" if param.required else ""
            groups["Arguments"].append((param.metavar or param.name.upper(), (param.help or "") + required))
            continue
        record = param.get_help_record(ctx)
        if record is not None:
            groups.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
    if isinstance(command, TyperGroup):
        names = [n for n in command.list_commands(ctx) if not command.get_command(ctx, n).hidden]
        groups["Commands"] = [(n, command.get_command(ctx, n).get_short_help_str(limit=300)) for n in names]
    return [(title, rows) for title, rows in groups.items() if rows]


class CnnspecCommand(_Presentation, TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class CnnspecGroup(_Presentation, TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup()
        self.epilog = self.epilog or examples_epilog("cnnspec")


class CnnspecTyper(typer.Typer):
    """typer.Typer whose commands and group are cnnspec's classes, unless a command asks for another."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", CnnspecGroup)
        super().__init__(**kwargs)

    def command(self, *args: Any, cls: type | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or CnnspecCommand, **kwargs)


# ---- shell completion ------------------------------------------------------------------------------------


def complete_paths(incomplete: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files ending in one of `suffixes` and folders (to descend into), under the typed prefix."""
    folder, _, stem = incomplete.rpartition("/")
    base = Path(folder + "/" if folder else ".") if incomplete.startswith("/") or folder else Path(".")
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.name.startswith(stem) or (entry.name.startswith(".") and not stem.startswith(".")):
            continue
        text = f"{folder}/{entry.name}" if folder or incomplete.startswith("/") else entry.name
        if entry.is_dir():
            found.append(text + "/")
        elif entry.name.lower().endswith(suffixes):
            found.append(text)
    return found


def complete_spec(incomplete: str) -> list[str]:
    return complete_paths(incomplete, SPEC_SUFFIXES)


def complete_model(incomplete: str) -> list[str]:
    return complete_paths(incomplete, MODEL_SUFFIXES)


# ---- the README's command table ------------------------------------------------------------------------

README_START = "<!-- generated by tools/readme_commands.py from the commands' help: do not edit -->"
README_END = "<!-- end of the generated command table -->"


def readme_table(app: typer.Typer) -> str:
    """The README's command table: each command's arguments and required options, and its first sentence."""
    group = typer.main.get_command(app)
    ctx = group.make_context("cnnspec", ["--help"], resilient_parsing=True)
    rows = ["| command | what it does |", "|---|---|"]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        words = ["cnnspec", name]
        for param in command.get_params(sub):
            if param.param_type_name == "argument":
                words.append(_usage_name(param))
            elif param.required:
                words.append(f"{min(param.opts, key=len)} {param.name.upper()}")
        words.append("[OPTIONS]")
        first = " ".join((command.help or "").split()).split(". ")[0].rstrip(".")
        rows.append(f"| `{' '.join(words)}` | {first.replace('|', '/')} |")
    return "\n".join(rows)


def with_readme_table(readme: str, table: str) -> str:
    """README text with the generated block replaced by `table`."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise ValueError("README.md has no generated command table (its two marker lines are missing)")
    return f"{head}{README_START}\n{table}\n{README_END}{tail}"
