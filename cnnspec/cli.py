"""The command line: thin commands over the library, and the one place errors become exit codes.

Exit codes: 0 success, 1 an error in the input (spec, image, model, data), 2 usage, 130 Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import CnnspecError, SpecError

app = typer.Typer(
    name="cnnspec",
    help="Describe a CNN in YAML/JSON; validate it, compile it to ONNX, train it and run it on images.",
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SpecPath = Annotated[Path, typer.Argument(help="Spec file (.yaml, .yml or .json).", show_default=False)]
ModelPath = Annotated[Path, typer.Argument(help="An .onnx model file.", show_default=False)]


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output gets a wide, fixed width so tables are not squeezed to 80 columns.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _print_issues(issues, prefix: str = "error") -> None:
    for issue in issues:
        print(f"{prefix}: {issue.message}", file=sys.stderr)


@app.command()
def validate(
    spec: SpecPath,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Check a spec (fields, then shapes) and summarize every layer."""
    from .analysis import analyze
    from .spec import load_spec
    from .summary import render_report, report_json

    try:
        report = analyze(load_spec(spec))
    except SpecError as err:
        if not as_json:
            raise
        print(json.dumps(report_json(None, err.issues, name=None)))
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report_json(report)))
    else:
        if report.layers:
            render_report(report, _console())
        _print_issues(report.warnings, "warning")
        _print_issues(report.issues)
    raise typer.Exit(0 if report.valid else 1)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec (for editors and other tools)."""
    from .spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


@app.command("compile")
def compile_cmd(
    spec: SpecPath,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .onnx model.")],
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the initial weights.")] = 0,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default 17).")] = None,
) -> None:
    """Lower a spec to an ONNX model with initialized weights."""
    from .compiler import DEFAULT_OPSET, compile_spec, model_bytes
    from .files import atomic_write, check_output_path
    from .spec import load_spec

    check_output_path(output, not_same_as=[spec])
    model = compile_spec(load_spec(spec), seed=seed, opset=opset or DEFAULT_OPSET)
    atomic_write(output, model_bytes(model))
    print(f"wrote {output} ({output.stat().st_size:,} bytes)", file=sys.stderr)


@app.command()
def inspect(model: ModelPath) -> None:
    """Summarize a model: the spec embedded in it, or its inputs, outputs and operators."""
    from .inspection import inspect_model

    inspect_model(model, _console())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with the error boundary; never shows a traceback unless CNNSPEC_DEBUG=1."""
    import click

    debug = os.environ.get("CNNSPEC_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="cnnspec", standalone_mode=False)
        code = 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except SpecError as exc:
        _print_issues(exc.issues)
        code = exc.exit_code
    except CnnspecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    except Exception as exc:  # noqa: BLE001 - the boundary: anything unexpected is a bug, said plainly
        if debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set CNNSPEC_DEBUG=1 for a traceback)", file=sys.stderr)
        code = 1
    _flush_quietly()
    sys.exit(code)


def _quiet_broken_pipe() -> int:
    # The reader went away (`cnnspec run ... | head`): silence the final flush, exit like SIGPIPE.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
