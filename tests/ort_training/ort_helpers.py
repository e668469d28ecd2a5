"""Helpers of the ort-training tests (a module of its own: `conftest` is a name every test folder uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str | os.PathLike, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m cnnspec ARGS` with this environment's interpreter, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "CNNSPEC_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "cnnspec", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
