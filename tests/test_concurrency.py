"""Concurrent compiles to one path: every writer succeeds, the result is one whole model (never a mix),
and no temp files are left. CNNSPEC_CONCURRENCY_REPS sets the repetitions (2 in CI to stay
within the time budget of 2 cores, 50 nightly)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnspec.files import stale_temps

REPS = int(os.environ.get("CNNSPEC_CONCURRENCY_REPS", "2"))

SPEC = """\
name: concurrent
input:
  shape: [16, 16, 3]
labels: [a, b, c]
layers:
  - {type: Conv2D, filters: 16, kernel_size: 3, activation: relu}
  - {type: MaxPooling2D, pool_size: 2}
  - {type: Flatten}
  - {type: Dense, units: 64, activation: relu}
  - {type: Dense, units: 3, activation: softmax}
"""


def start(spec: Path, out: Path, seed: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "cnnspec", "compile", str(spec), "-o", str(out), "--seed", str(seed)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 0, err
        assert "Traceback" not in err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def singles(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The spec and the sha256 of one lone compile per seed: the only allowed results."""
    folder = tmp_path_factory.mktemp("single")
    spec = folder / "spec.yaml"
    spec.write_text(SPEC)
    hashes = {}
    for seed in (1, 2):
        finish([start(spec, folder / f"seed{seed}.onnx", seed)])
        hashes[seed] = digest(folder / f"seed{seed}.onnx")
    assert hashes[1] != hashes[2]
    return {"spec": spec, **hashes}


@pytest.mark.parametrize("writers", [2, 8])
def test_concurrent_compiles_of_one_seed(singles: dict, tmp_path: Path, writers: int) -> None:
    out = tmp_path / "out.onnx"
    for _ in range(REPS):
        finish([start(singles["spec"], out, 1) for _ in range(writers)])
        assert digest(out) == singles[1]
        assert stale_temps(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_concurrent_compiles_of_two_seeds_never_mix(singles: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    seen = set()
    for rep in range(REPS):
        seeds = [1, 2] * 2 if rep % 2 else [2, 1] * 2
        finish([start(singles["spec"], out, seed) for seed in seeds])
        result = digest(out)
        assert result in (singles[1], singles[2]), "the output mixes two writers"
        seen.add(result)
        assert stale_temps(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_reader_never_sees_a_partial_model(singles: dict, tmp_path: Path) -> None:
    """A reader parsing the output in a loop while writers replace it: every read is a whole model."""
    import onnx

    out = tmp_path / "out.onnx"
    finish([start(singles["spec"], out, 1)])
    writers = [start(singles["spec"], out, seed) for seed in (2, 1, 2, 1)]
    reads = 0
    while any(p.poll() is None for p in writers) or reads == 0:
        data = out.read_bytes()
        assert hashlib.sha256(data).hexdigest() in (singles[1], singles[2])
        onnx.load_model_from_string(data)
        reads += 1
    finish(writers)
    assert stale_temps(out) == []


def test_run_while_a_writer_recompiles(singles: dict, tmp_path: Path) -> None:
    """`cnnspec run` on the output while writers replace it: every run succeeds, on the old or the new model.

    CNNSPEC_READER_RUNS sets the number of runs (5 in CI; the nightly profile uses 200 runs, 100 writes).
    """
    import json

    from PIL import Image

    runs = int(os.environ.get("CNNSPEC_READER_RUNS", "5"))
    out, image = tmp_path / "out.onnx", tmp_path / "img.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(image)
    finish([start(singles["spec"], out, 1)])
    writers: list[subprocess.Popen] = []
    for n in range(runs):
        if all(p.poll() is not None for p in writers):  # keep one writer busy replacing the file
            writers.append(start(singles["spec"], out, 1 + n % 2))
        args = [sys.executable, "-m", "cnnspec", "run", str(out), str(image), "--json"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)[0]["error"] is None
    finish(writers)
    assert stale_temps(out) == []
