"""`cnnspec train` end to end: options, errors, outputs, Ctrl-C and kill -9 with resume, and the digits run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import default_sigint
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
name: sep
input: {shape: [8, 8, 1]}
labels: [left, right]
preprocess: {scale: 0.00392156862745098}
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3, padding: same, activation: relu}
  - {type: BatchNormalization}
  - {type: MaxPooling2D}
  - {type: Flatten}
  - {type: Dropout, rate: 0.25}
  - {type: Dense, units: 2, activation: softmax}
training: {optimizer: adam, learning_rate: 0.01, epochs: 3, batch_size: 16}
"""


def cnnspec(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnspec", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
        **kw,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    x = rng.integers(0, 80, (96, 8, 8)).astype(np.uint8)
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if "." in t.name}


def test_train_writes_contract_model_metrics_and_train_step(work: Path):
    out, metrics, step = work / "out.onnx", work / "m.json", work / "step.onnx"
    r = cnnspec("train", work / "spec.yaml", "--data", work / "data.npz", "-o", out, "--epochs", 2,
                "--metrics-json", metrics, "--export-train-step", step, "--checkpoint-dir", work / "ck")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "epoch 2/2" in r.stderr and "\x1b[" not in r.stderr  # per-epoch lines; no progress bar when piped
    rows = json.loads(metrics.read_text())
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
    assert rows[0]["val_loss"] is None  # no validation unless asked
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["cnnspec.labels"]) == ["left", "right"] and "cnnspec.spec" in meta
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    # the trained weights and running statistics are the last checkpoint's
    latest = (work / "ck" / "LATEST").read_text().split()[0]
    with np.load(work / "ck" / latest, allow_pickle=False) as ckpt:
        for name, value in weights(out).items():
            assert np.array_equal(value, ckpt[f"param/{name}"]), name
    assert not np.all(weights(out)["batch_normalization.running_var"] == 1.0)
    names = [i.name for i in onnx.load(str(step)).graph.input]
    assert {"input", "labels", "learning_rate", "step", "dropout.mask"} <= set(names)


def test_train_seed_starts_from_compile_seed_weights(work: Path, monkeypatch):
    from cnnspec.cli import main
    from cnnspec.training import loop

    assert cnnspec("compile", work / "spec.yaml", "-o", work / "c.onnx", "--seed", 5).returncode == 0
    # Stop the loop before the first update: the written model holds the starting weights.
    monkeypatch.setattr(loop.Loop, "run", lambda self: loop.Result(self.state.params, []))
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(work / "spec.yaml"), "--data", str(work / "data.npz"), "-o", str(work / "t.onnx"),
              "--seed", "5"])  # fmt: skip
    assert exit_.value.code == 0
    compiled, trained = weights(work / "c.onnx"), weights(work / "t.onnx")
    assert compiled.keys() == trained.keys()
    assert all(np.array_equal(compiled[k], trained[k]) for k in compiled)


def test_threads_reach_the_step_runner(work: Path, monkeypatch):
    from cnnspec.cli import main
    from cnnspec.training import trainer

    seen, real = [], trainer.step_runner

    def spy(spec, report, settings, device, threads):
        program, runner = real(spec, report, settings, device, threads)
        seen.append((threads, type(runner).__name__))
        return program, runner

    monkeypatch.setattr(trainer, "step_runner", spy)
    no_bn = (work / "spec.yaml").read_text().replace("  - {type: BatchNormalization}\n", "")
    (work / "no-bn.yaml").write_text(no_bn.replace("batch_size: 16", "batch_size: 32"))
    for threads in ("1", "2"):
        with pytest.raises(SystemExit) as exit_:
            main(["train", str(work / "no-bn.yaml"), "--data", str(work / "data.npz"), "-o", str(work / "t.onnx"),
                  "--epochs", "1", "--threads", threads])  # fmt: skip
        assert exit_.value.code == 0
    assert seen == [(1, "StepRunner"), (2, "ShardedStepRunner")]


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--val", "{data}", "--val-split", "0.2"], 2, "not both"),
        (["--resume"], 2, "--resume needs --checkpoint-dir"),
        (["--val-split", "1.5"], 2, "--val-split"),
        (["--backend", "tensorflow"], 2, "--backend"),
        (["--learning-rate", "0"], 2, "--learning-rate"),
        (["--epochs", "0"], 2, "--epochs"),
        (["--threads", "0"], 2, "--threads"),
    ],
)
def test_usage_errors(work: Path, extra, code, message):
    extra = [e.format(data=work / "data.npz") for e in extra]
    r = cnnspec("train", work / "spec.yaml", "--data", work / "data.npz", "-o", work / "o.onnx", *extra)
    assert r.returncode == code, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (work / "o.onnx").exists()


def test_data_errors(work: Path):
    r = cnnspec("train", work / "spec.yaml", "--data", work / "missing.npz", "-o", work / "o.onnx")
    assert r.returncode == 2 and "does not exist" in r.stderr
    np.savez(work / "five.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 4, 1]))
    r = cnnspec("train", work / "spec.yaml", "--data", work / "five.npz", "-o", work / "o.onnx")
    assert r.returncode == 1 and "label 4" in r.stderr and "Traceback" not in r.stderr


def test_second_trainer_on_same_folder_is_refused(work: Path):
    from cnnspec.training.checkpoints import CheckpointDir

    with CheckpointDir(work / "ck"):
        r = cnnspec("train", work / "spec.yaml", "--data", work / "data.npz", "-o", work / "o.onnx",
                    "--checkpoint-dir", work / "ck")  # fmt: skip
    assert r.returncode == 1 and f"locked by PID {os.getpid()}" in r.stderr


def run_args(work: Path, out: str, *extra) -> list:
    return ["train", work / "spec.yaml", "--data", work / "data.npz", "-o", work / out, "--epochs", 40, *extra]


def test_ctrl_c_saves_and_resume_equals_uninterrupted(work: Path):
    straight = cnnspec(*run_args(work, "straight.onnx"))
    assert straight.returncode == 0, straight.stderr
    args = [sys.executable, "-m", "cnnspec", *map(str, run_args(work, "r.onnx", "--checkpoint-dir", work / "ck"))]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "interrupted: saved" in rest and not (work / "r.onnx").exists()
    resumed = cnnspec(*run_args(work, "r.onnx", "--checkpoint-dir", work / "ck", "--resume"))
    assert resumed.returncode == 0 and "resuming at epoch" in resumed.stderr, resumed.stderr
    a, b = weights(work / "straight.onnx"), weights(work / "r.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_kill_9_between_checkpoint_and_latest_then_resume(work: Path):
    assert cnnspec(*run_args(work, "straight.onnx")).returncode == 0
    ck = work / "ck"
    killed = cnnspec(
        *run_args(work, "k.onnx", "--checkpoint-dir", ck), env={"CNNSPEC_TEST_HOOK": "checkpoint_after_npz_kill"}
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (ck / "LATEST").exists() and list(ck.glob("step-*.npz"))  # the commit point was never reached
    resumed = cnnspec(*run_args(work, "k.onnx", "--checkpoint-dir", ck, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(work / "straight.onnx"), weights(work / "k.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_ort_training_backend_dispatch_fails_cleanly_or_runs(work: Path):
    r = cnnspec(
        "train", work / "spec.yaml", "--data", work / "data.npz", "-o", work / "o.onnx", "--backend", "ort-training"
    )
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_digits_reach_97_percent(tmp_path: Path):
    """The README's main job: sklearn's digits, fixed 80/20 split, specs/digits.yaml."""
    sys.path.insert(0, str(ROOT / "examples"))
    from digits_data import digits_split

    x_train, y_train, x_test, y_test = digits_split()
    np.savez(tmp_path / "train.npz", x=x_train, y=y_train)
    r = cnnspec("train", ROOT / "specs" / "digits.yaml", "--data", tmp_path / "train.npz", "-o", tmp_path / "d.onnx")
    assert r.returncode == 0, r.stderr
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"input": x_test[:, None].astype(np.float32)})[0]
    accuracy = float((scores.argmax(1) == y_test).mean())
    assert accuracy >= 0.97, accuracy


@pytest.mark.parametrize("trial", range(2))
def test_kill_9_at_random_time_then_resume(work: Path, trial: int):
    import random
    import time

    assert cnnspec(*run_args(work, "straight.onnx")).returncode == 0
    ck = work / "ck"
    args = [sys.executable, "-m", "cnnspec", *map(str, run_args(work, "k.onnx", "--checkpoint-dir", ck, "--resume"))]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(trial).uniform(0.5, 2.5))
    proc.kill()
    proc.wait()
    if (ck / "LATEST").exists():  # every committed checkpoint is complete and matches its sha256
        from cnnspec.training.checkpoints import CheckpointDir

        with CheckpointDir(ck) as folder:
            assert folder.load_latest() is not None
    resumed = cnnspec(*args[3:])
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(work / "straight.onnx"), weights(work / "k.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_device_cuda_without_onnxruntime_gpu_is_a_clear_error(work: Path):
    r = cnnspec("train", work / "spec.yaml", "--data", work / "data.npz", "-o", work / "o.onnx", "--device", "cuda")
    assert r.returncode == 1 and "CUDA" in r.stderr and "Traceback" not in r.stderr
    assert not (work / "o.onnx").exists()


def test_a_corrupt_image_in_a_folder_data_set_is_named_or_skipped(tmp_path):
    """RELIABILITY row 39: the error lists the bad file; --skip-bad-images trains without it."""
    from PIL import Image

    (tmp_path / "spec.yaml").write_text(SPEC)
    rng = np.random.default_rng(0)
    for label in ("left", "right"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    (tmp_path / "data" / "left" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    args = [tmp_path / "spec.yaml", "--data", tmp_path / "data", "-o", tmp_path / "m.onnx", "--epochs", "1"]
    refused = cnnspec("train", *args)
    assert refused.returncode == 1 and "broken.png" in refused.stderr and "--skip-bad-images" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "m.onnx").exists()
    trained = cnnspec("train", *args, "--skip-bad-images")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "m.onnx").exists()
