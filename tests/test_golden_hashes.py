"""Golden files: the sha256 of three reference specs compiled with seed 0 (the seed network; BN + dropout + groups;
'same' padding on odd sizes), of their train-step programs (fused, gradients-only serial shards, CUDA) and of
`validate --json` for every shipped spec. A change in the bytes is either a bug or a deliberate format change.

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
PROGRAMS = {  # name -> build_train_step keyword arguments
    "fused": {},
    "shard": {"gradients_only": True, "serial": True},
    "cuda": {"device": "cuda"},
}
SHIPPED = ("bn_gap", "digits", "lenet5", "seed", "vgg32")  # the sequential specs shipped before graph specs


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


def train_step(name: str, program: str) -> bytes:
    from cnnspec.analysis import check
    from cnnspec.compiler import model_bytes
    from cnnspec.spec import load_spec
    from cnnspec.training.optimizers import Optimizer

    spec = load_spec(GOLDEN / "specs" / f"{name}.yaml")
    from cnnspec.training.program import build_train_step

    built = build_train_step(spec, check(spec), Optimizer("adam"), 0.1, **PROGRAMS[program])
    return model_bytes(built.model)


def validate_json(name: str) -> bytes:
    from cnnspec.analysis import analyze
    from cnnspec.spec import load_spec
    from cnnspec.summary import report_json

    report = analyze(load_spec(GOLDEN.parents[1] / "specs" / f"{name}.yaml"))
    return json.dumps(report_json(report), sort_keys=True).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def current_hashes() -> dict[str, dict[str, str]]:
    return {
        "sha256": {name: sha(compiled(name)) for name in SPECS},
        "train_step": {f"{n}/{p}": sha(train_step(n, p)) for n in ("seed", "bn_dropout_groups") for p in PROGRAMS},
        "validate_json": {name: sha(validate_json(name)) for name in SHIPPED},
    }


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


@pytest.mark.parametrize("name", ["seed", "bn_dropout_groups"])
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_train_step_programs_match_the_golden_hash(golden: dict, name: str, program: str) -> None:
    assert sha(train_step(name, program)) == golden["train_step"][f"{name}/{program}"], (
        f"the {program} train-step program of {name}.yaml changed; if intended, regenerate the hashes"
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_validate_json_of_shipped_specs_matches_the_golden_hash(golden: dict, name: str) -> None:
    assert sha(validate_json(name)) == golden["validate_json"][name], f"validate --json of {name}.yaml changed"


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

    data = {"versions": versions(), "seed": SEED, **current_hashes()}
    atomic_write(HASHES, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    print(json.dumps(data, indent=2, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden_hashes.py --regenerate")
    regenerate()
