"""`--backend ort-training` end to end: the digits spec reaches 97% on the held-out 20%, with the native
backend's outputs (inference model of the compile contract, metrics, checkpoints)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort

from cnnspec.spec import load_spec, spec_from_data
from cnnspec.training import ort_backend
from cnnspec.training.checkpoints import CheckpointDir
from cnnspec.training.trainer import resolve_settings

from .ort_helpers import ROOT, run_cli

METRIC_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}


def accuracy(model_path, data) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    probabilities = session.run(["output"], {"input": data.x})[0]
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)  # the contract's softmax output is back
    return float((probabilities.argmax(axis=1) == data.y).mean())


def test_digits_spec_trains_to_97_percent_through_the_cli(tmp_path, digits):
    train, test = digits
    np.savez(tmp_path / "train.npz", x=train.x[:, 0].astype(np.uint8), y=train.y)
    spec = load_spec(ROOT / "specs" / "digits.yaml")
    out, metrics_json, checkpoints = tmp_path / "digits.onnx", tmp_path / "metrics.json", tmp_path / "ckpt"
    done = run_cli("train", ROOT / "specs" / "digits.yaml", "--data", tmp_path / "train.npz", "-o", out,
                   "--backend", "ort-training", "--metrics-json", metrics_json, "--checkpoint-dir", checkpoints,
                   timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr

    assert accuracy(out, test) >= 0.97
    metrics = json.loads(metrics_json.read_text())
    assert [row["epoch"] for row in metrics] == list(range(1, spec.training.epochs + 1))
    assert all(set(row) == METRIC_KEYS and row["val_loss"] is None for row in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    # The native loop's checkpoint (LATEST committing a step-*.npz), holding ORT's own checkpoint as its state.
    with CheckpointDir(checkpoints) as folder:
        state = folder.load_latest()
    assert state.epoch == spec.training.epochs and state.batch == 0 and state.history == metrics
    assert set(state.opt) == {ort_backend.ORT_STATE} and state.opt[ort_backend.ORT_STATE].dtype == np.uint8
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["cnnspec.spec"])["name"] == spec.name


def test_train_refuses_batch_normalization_before_training(tmp_path):
    spec = tmp_path / "bn.json"
    spec.write_text(json.dumps({"name": "bn", "input": {"shape": [8, 8, 1]}, "layers": [
        {"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "BatchNormalization"}, {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"}]}))  # fmt: skip
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.arange(10))
    done = run_cli("train", spec, "--data", tmp_path / "d.npz", "-o", tmp_path / "m.onnx", "--backend", "ort-training")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "layers[1] BatchNormalization 'batch_normalization'" in done.stderr and "--backend native" in done.stderr
    assert not (tmp_path / "m.onnx").exists()


TINY = {
    "name": "tiny",
    "input": {"shape": [8, 8, 1]},
    "preprocess": {"scale": 0.0625},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    ],
    "training": {"optimizer": "adamw", "weight_decay": 0.01, "epochs": 3, "batch_size": 64, "seed": 3},
}


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, digits):
    train, test = digits
    spec = spec_from_data(TINY)
    whole = ort_backend.train(spec, train, tmp_path / "whole.onnx", val_data=test)
    ort_backend.train(spec, train, tmp_path / "part.onnx", checkpoint_dir=tmp_path / "ck", epochs=2)
    resumed = ort_backend.train(spec, train, tmp_path / "resumed.onnx", checkpoint_dir=tmp_path / "ck", resume=True,
                                val_data=test)  # fmt: skip

    weights = [{t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
               for p in (tmp_path / "whole.onnx", tmp_path / "resumed.onnx")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[2]["val_accuracy"] == whole[2]["val_accuracy"]


def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted_with_cosine_schedule_and_early_stopping(
    tmp_path, monkeypatch, digits
):
    """The native loop drives the ORT runner: its cosine learning rate, its validation and early-stopping state,
    its Ctrl-C save between two steps and its --resume (ORT's optimizer state inside the native checkpoint)."""
    import os
    import signal

    import pytest

    train, test = digits
    spec = spec_from_data(TINY)
    options = {"schedule": "cosine", "learning_rate": 0.01, "patience": 1, "epochs": 4, "val_data": test}
    whole = ort_backend.train(spec, train, tmp_path / "whole.onnx", **options)
    steps_per_epoch = -(-len(train.y) // TINY["training"]["batch_size"])
    calls, real_step = {"n": 0}, ort_backend.OrtStepRunner.step
    rates: list[float] = []

    def step(self, x, y, lr, *rest):
        calls["n"] += 1
        rates.append(lr)
        if calls["n"] == steps_per_epoch + 3:  # as if Ctrl-C arrived mid-epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, y, lr, *rest)

    monkeypatch.setattr(ort_backend.OrtStepRunner, "step", step)
    with pytest.raises(KeyboardInterrupt):
        ort_backend.train(spec, train, tmp_path / "never.onnx", checkpoint_dir=tmp_path / "ck", **options)
    assert calls["n"] == steps_per_epoch + 3 and not (tmp_path / "never.onnx").exists()
    resumed = ort_backend.train(spec, train, tmp_path / "resumed.onnx", checkpoint_dir=tmp_path / "ck", resume=True,
                                **options)  # fmt: skip

    settings = resolve_settings(spec, schedule="cosine", learning_rate=0.01, epochs=4)
    assert rates[: steps_per_epoch + 1] == [settings.lr_at(i // steps_per_epoch, i, steps_per_epoch)
                                            for i in range(steps_per_epoch + 1)]  # fmt: skip
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] for r in whole]
    weights = [{t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
               for p in (tmp_path / "whole.onnx", tmp_path / "resumed.onnx")]  # fmt: skip
    for name in weights[0]:
        np.testing.assert_array_equal(weights[1][name], weights[0][name], err_msg=name)
