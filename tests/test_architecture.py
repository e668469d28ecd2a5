"""The pipeline's import rules (README "Architecture"): the spec side stays light, heavy runtimes load only
where things run, and typer only in the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cnnspec"


def imports_in(path: Path) -> set[str]:
    pattern = r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+([\w.]+))"
    found = re.findall(pattern, path.read_text(), flags=re.M)
    return {(a or b).split(".")[0] for a, b in found}


def modules_importing(top: str) -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if top in imports_in(p)}


def test_the_spec_side_imports_no_heavy_runtime():
    """validate must start fast: spec -> shapes -> analysis -> summary load none of these."""
    code = (
        "import sys, cnnspec.analysis, cnnspec.spec, cnnspec.summary, cnnspec.loader\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'PIL', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_onnxruntime_is_imported_only_where_models_run():
    allowed = {"sessions.py", "runtime.py", "training/runner.py", "training/ort_artifacts.py"}
    assert modules_importing("onnxruntime") <= allowed


def test_typer_lives_only_in_the_cli():
    assert modules_importing("typer") == {"cli.py"}


def test_errors_and_shapes_use_the_standard_library_only():
    for name in ("errors.py", "shapes.py"):
        assert imports_in(PACKAGE / name) <= {"__future__", "dataclasses", "math", "typing"}, name
