"""Shared test helpers: where the specs live, and running the CLI as a user does (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = ROOT / "specs"


@pytest.fixture
def specs_dir() -> Path:
    """The repository's specs/ folder (every network shipped with cnnspec)."""
    return SPECS_DIR


PathLike = str | os.PathLike


def run_cli(*args: PathLike, cwd: PathLike | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run `python -m cnnspec ARGS` in a fresh interpreter; return (exit code, stdout, stderr).

    CNNSPEC_DEBUG is removed so a traceback can only appear if the CLI really leaks one.
    """
    env = {k: v for k, v in os.environ.items() if k != "CNNSPEC_DEBUG"}
    env["PYTHONIOENCODING"] = "utf-8"
    proc = subprocess.run(
        [sys.executable, "-m", "cnnspec", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_no_traceback(*outputs: str) -> None:
    """No output a user sees may contain a Python traceback."""
    for text in outputs:
        assert "Traceback" not in text, text


def default_sigint() -> None:
    """`preexec_fn` for a child that a test interrupts as Ctrl-C would: SIGINT at its default action.

    NOTE: a child inherits an ignored SIGINT (a test run started in the background by a non-interactive shell,
    or under nohup) and Python then leaves it ignored, so the child would sleep through the test's Ctrl-C: the
    paused writer of test_crash_safety then finished its rename and exited 0 instead of 130.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
