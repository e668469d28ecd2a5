"""Golden files: the sha256 of three reference specs compiled with seed 0 (the seed network; BN + dropout + groups;
'same' padding on odd sizes). A change in the bytes is either a bug or a deliberate format change.

Protobuf and numpy make no cross-version promise about bytes, so the hashes are keyed by the versions that
produced them; on other versions the test skips (the property tests still check behaviour). Regenerate with

    python tests/test_golden_hashes.py --regenerate

and commit tests/golden/hashes.json in the same change that alters the compiled bytes or bumps a dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
HASHES = GOLDEN / "hashes.json"
SPECS = ("seed", "bn_dropout_groups", "same_odd")
SEED = 0


def versions() -> dict[str, str]:
    """What the bytes depend on: the serializer (protobuf, onnx), the RNG (numpy) and cnnspec itself."""
    import google.protobuf
    import numpy
    import onnx

    import cnnspec

    return {"cnnspec": cnnspec.__version__, "onnx": onnx.__version__, "numpy": numpy.__version__,
            "protobuf": google.protobuf.__version__}  # fmt: skip


def compiled(name: str) -> bytes:
    from cnnspec.compiler import compile_spec, model_bytes
    from cnnspec.spec import load_spec

    return model_bytes(compile_spec(load_spec(GOLDEN / "specs" / f"{name}.yaml"), seed=SEED))


def current_hashes() -> dict[str, str]:
    return {name: hashlib.sha256(compiled(name)).hexdigest() for name in SPECS}


@pytest.fixture(scope="module")
def golden() -> dict:
    stored = json.loads(HASHES.read_text())
    if stored["versions"] != versions():
        pytest.skip(f"golden hashes were made with {stored['versions']}, this is {versions()}: "
                    "run `python tests/test_golden_hashes.py --regenerate` and review the diff")  # fmt: skip
    return stored


@pytest.mark.parametrize("name", SPECS)
def test_compiled_bytes_match_the_golden_hash(golden: dict, name: str) -> None:
    assert hashlib.sha256(compiled(name)).hexdigest() == golden["sha256"][name], (
        f"the compiled bytes of {name}.yaml changed; if that is intended, regenerate the hashes (module docstring)"
    )


def test_the_cli_writes_the_same_bytes(golden: dict, tmp_path: Path) -> None:
    """A fresh interpreter (another PYTHONHASHSEED) through `cnnspec compile` gives the golden bytes too."""
    out = tmp_path / "m.onnx"
    spec = GOLDEN / "specs" / "same_odd.yaml"
    args = [sys.executable, "-m", "cnnspec", "compile", str(spec), "-o", str(out), "--seed", str(SEED)]
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == golden["sha256"]["same_odd"]


def regenerate() -> None:
    from cnnspec.files import atomic_write

    data = {"versions": versions(), "seed": SEED, "sha256": current_hashes()}
    atomic_write(HASHES, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    print(json.dumps(data, indent=2, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden_hashes.py --regenerate")
    regenerate()
