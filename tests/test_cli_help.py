"""The command line as click/Typer users expect it: --version, help text (arguments in capitals, flags as flags,
option groups, examples that work, plain text off a terminal or with NO_COLOR), bare `cnnspec`, shell completion
through Typer's own mechanism, the README's generated command table, and what --version/validate import."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import pty
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import ROOT, SPECS_DIR, run_cli

from cnnspec.cli import app
from cnnspec.cli_help import EXAMPLES, readme_table, with_readme_table

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)
BOX = set("╭╮╰╯│─┃━")


@pytest.fixture(autouse=True)
def _no_colour_forced(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def main_output(args: list[str], capsys) -> tuple[int, str, str]:
    from cnnspec import cli

    with pytest.raises(SystemExit) as done:
        cli.main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_version(capsys):
    expected = f"cnnspec {metadata.version('cnnspec')}\n"
    assert main_output(["--version"], capsys) == (0, expected, "")
    assert main_output(["-V"], capsys) == (0, expected, "")


def test_bare_cnnspec_prints_the_help_and_exits_2_without_an_error_line():
    """click >= 8.2 (and the copy Typer 0.26+ carries) exits 2 for no_args_is_help: the call was incomplete."""
    code, stdout, stderr = run_cli()
    assert code == 2
    assert "Usage: cnnspec [OPTIONS] COMMAND [ARGS]..." in stdout + stderr
    assert "error:" not in stdout + stderr
    assert "Commands:" in stdout + stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_help_of_every_command(name, capsys):
    code, text, err = main_output([name, "--help"], capsys)
    assert code == 0 and err == ""
    assert "<bool>" not in text and "{" not in text.splitlines()[0]  # flags as flags; no Typer {spec}
    assert "\x1b[" not in text and not BOX & set(text)  # captured output is no terminal: plain text
    command = GROUP.commands[name]
    usage = text.splitlines()[0]
    for param in command.params:
        if param.param_type_name == "argument":
            assert param.metavar.isupper() and param.metavar.rstrip(".") in usage, (param.name, usage)
        elif getattr(param, "is_flag", False):
            flag_line = next(line for line in text.splitlines() if line.strip().startswith(param.opts[0]))
            assert flag_line.split()[1] not in ("<bool>", "BOOLEAN"), flag_line
    examples = text.split("Examples:\n", 1)[1].splitlines()
    assert 1 <= len(examples) <= 2 and all(line.startswith(f"  $ cnnspec {name}") for line in examples), text


def test_usage_lines_read_like_click():
    lines = {name: typer_usage(name) for name in ("train", "run", "validate", "inspect")}
    assert lines == {
        "train": "Usage: cnnspec train [OPTIONS] SPEC",
        "run": "Usage: cnnspec run [OPTIONS] MODEL INPUT...",
        "validate": "Usage: cnnspec validate [OPTIONS] SPEC",
        "inspect": "Usage: cnnspec inspect [OPTIONS] MODEL",
    }


def typer_usage(name: str) -> str:
    command = GROUP.commands[name]
    ctx = command.make_context(name, ["--help"], parent=GROUP.make_context("cnnspec", ["x"]), resilient_parsing=True)
    return command.get_usage(ctx)


def test_train_options_are_grouped(capsys):
    _, text, _ = main_output(["train", "--help"], capsys)
    sections = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
        elif current and line.startswith("  -"):
            sections.setdefault(current, []).append(line.split()[0].rstrip(","))
    assert {"Data", "Optimization", "Outputs and checkpoints", "Devices"} <= sections.keys()
    assert {"--data", "--val-split"} <= set(sections["Data"])
    assert {"--epochs", "--learning-rate"} <= set(sections["Optimization"])
    assert {"--resume", "--checkpoint-dir", "-o"} <= set(sections["Outputs and checkpoints"])
    assert {"--device", "--threads"} <= set(sections["Devices"])


def test_examples_use_real_commands_options_and_files():
    for name, lines in EXAMPLES.items():
        for line in lines:
            words = shlex.split(line.split(">")[0])
            assert words[0] == "cnnspec" and (name == "cnnspec" or words[1] == name), line
            command = GROUP.commands[words[1]]
            options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            for word in words[2:]:
                if word.startswith("-"):
                    assert word in options, (line, word)
                elif word.startswith("specs/"):
                    assert (ROOT / word).is_file(), line


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as in an interactive shell."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnspec", *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env,
        cwd=ROOT,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_no_color_on_a_terminal_gives_plain_help():
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    base.update(TERM="xterm-256color", COLUMNS="100")
    rich = run_on_a_terminal(["train", "--help"], base)
    assert BOX & set(rich) and "\x1b[" in rich  # a terminal gets rich's panels and colours
    plain = run_on_a_terminal(["train", "--help"], {**base, "NO_COLOR": "1"})
    assert not BOX & set(plain) and "\x1b[" not in plain
    assert "Usage: cnnspec train [OPTIONS] SPEC" in plain and "Optimization:" in plain


# ---- shell completion (Typer's mechanism: the _CNNSPEC_COMPLETE variable) --------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("complete")
    for name in ("net.yaml", "net2.yml", "spec.json", "model.onnx", "notes.txt", "image.png", ".hidden.yaml"):
        (folder / name).write_text("x")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.onnx").write_text("x")
    return folder


def complete(shell: str, line: str, cwd: Path) -> list[str]:
    env = {**os.environ, "_CNNSPEC_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        words = shlex.split(line) + ([""] if line.endswith(" ") else [])
        env.update(COMP_WORDS=" ".join(words), COMP_CWORD=str(len(words) - 1))
    else:
        env.update(_TYPER_COMPLETE_ARGS=line, _TYPER_COMPLETE_FISH_ACTION="get-args")
    done = subprocess.run(
        [sys.executable, "-m", "cnnspec"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_bash_completes_specs_models_and_folders_by_extension(files):
    assert complete("bash", "cnnspec validate ", files) == ["net.yaml", "net2.yml", "spec.json", "sub/"]
    assert complete("bash", "cnnspec train n", files) == ["net.yaml", "net2.yml"]
    assert complete("bash", "cnnspec inspect ", files) == ["model.onnx", "sub/"]
    assert complete("bash", "cnnspec run sub/", files) == ["sub/deep.onnx"]
    assert complete("bash", "cnnspec tr", files) == ["train"]


def test_zsh_and_fish_complete_the_same_files(files):
    zsh = complete("zsh", "cnnspec compile ", files)
    assert "\n".join(zsh).startswith("_arguments") and all(f'"{n}"' in "\n".join(zsh) for n in ("net.yaml", "sub/"))
    assert '"model.onnx"' not in "\n".join(zsh)
    assert complete("fish", "cnnspec inspect ", files) == ["model.onnx", "sub/"]


def test_show_and_install_completion(tmp_path):
    code, script, err = run_cli("--show-completion", "bash")
    assert code == 0, err
    assert "_CNNSPEC_COMPLETE=complete_bash" in script and "complete -o default -F" in script
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    done = subprocess.run([sys.executable, "-m", "cnnspec", "--install-completion", "bash"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cnnspec" in (tmp_path / ".bashrc").read_text()


# ---- the README's table, start-up ------------------------------------------------------------------------------


def test_readme_command_table_is_up_to_date():
    # Regenerate with: python tools/readme_commands.py
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert with_readme_table(readme, readme_table(app)) == readme
    for name in COMMANDS:
        assert f"| `cnnspec {name} " in readme


STARTUP = """
import json, sys
from cnnspec.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("onnxruntime", "onnx", "numpy", "PIL")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "allowed"), [(["--version"], set()), (["validate", str(SPECS_DIR / "seed.yaml")], set())]
)
def test_version_and_validate_import_no_runtime(args, allowed):
    done = subprocess.run([sys.executable, "-c", STARTUP, *args], capture_output=True, text=True, timeout=60)
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert loaded <= allowed, loaded
