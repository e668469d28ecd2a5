"""Issue 19, bug 6: Keras's binary head, Dense(units: 1, activation: sigmoid) with binary cross-entropy.

It validates as 2 classes, trains on a folder of two class subfolders, and run/evaluate score both classes.
The references are numpy formulas (binary cross-entropy and its gradient), not cnnspec.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnspec.analysis import analyze, check
from cnnspec.compiler import initial_params
from cnnspec.spec import spec_from_data
from cnnspec.training.native import one_step

BINARY = {
    "name": "binary",
    "input": {"shape": [4, 4, 1]},
    "labels": ["cat", "dog"],
    "preprocess": {"scale": 1 / 255},
    "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 1, "activation": "sigmoid"}],
    "training": {"optimizer": "sgd", "learning_rate": 0.5, "epochs": 15, "batch_size": 8},
}


def cnnspec(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnspec", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_validate_counts_two_classes_and_refuses_other_single_units():
    report = analyze(spec_from_data(BINARY))
    assert report.valid and report.binary and report.classes == 2
    no_sigmoid = {**BINARY, "labels": None, "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 1}]}
    report = analyze(spec_from_data(no_sigmoid))
    assert report.valid and report.classes == 1  # a one-class network compiles; validate warns with the fix
    assert "one output unit without a sigmoid is a single class" in report.warnings[0].message
    assert "set activation: sigmoid on the last layer, or use units: 2" in report.warnings[0].message
    with_labels = analyze(spec_from_data({**no_sigmoid, "labels": ["cat", "dog"]}))
    assert not with_labels.valid and "labels has 2 names but the last layer 'dense' outputs 1" in (
        with_labels.issues[0].message
    )
    three = {**BINARY, "labels": ["a", "b", "c"]}
    report = analyze(spec_from_data(three))
    assert not report.valid and "binary head (one sigmoid unit) tells 2 classes apart" in report.issues[0].message


def test_one_sgd_step_matches_numpy_binary_cross_entropy():
    spec = spec_from_data(BINARY)
    params = initial_params(spec, check(spec), seed=3)
    (w_name,) = [k for k in params if params[k].ndim == 2]
    (b_name,) = [k for k in params if params[k].ndim == 1]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0])
    new = one_step(spec, params, x, y, learning_rate=0.5, optimizer="sgd")
    # numpy: z = x/255 · W + b, p = σ(z); dL/dW = xᵀ(p - y)/N, dL/db = Σ(p - y)/N
    flat = x.reshape(6, -1).astype(np.float64) / 255
    w = params[w_name].astype(np.float64)
    w2 = w.reshape(16, 1) if w.shape == (16, 1) else w.T  # the Dense kernel as (in, 1)
    z = flat @ w2 + params[b_name].astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    err = (p - y[:, None]) / 6
    expected_w = w2 - 0.5 * flat.T @ err
    got_w = new[w_name].reshape(16, 1) if w.shape == (16, 1) else new[w_name].T
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new[b_name], params[b_name] - 0.5 * err.sum(0), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(1)
    for label, bright in (("cat", slice(0, 2)), ("dog", slice(2, 4))):
        (work / "data" / label).mkdir(parents=True)
        for i in range(16):
            img = rng.integers(0, 60, (4, 4)).astype(np.uint8)
            img[:, bright] += 180
            Image.fromarray(img).save(work / "data" / label / f"{i}.png")
    (work / "spec.yaml").write_text(yaml.safe_dump(BINARY))
    r = cnnspec("train", "spec.yaml", "--data", "data", "-o", "m.onnx", cwd=work)
    assert r.returncode == 0, r.stderr
    return work


def test_binary_head_trains_on_two_folders(trained: Path):
    r = cnnspec("evaluate", "m.onnx", "--data", "data", "--json", cwd=trained)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["labels"] == ["cat", "dog"] and [c["n"] for c in result["per_class"]] == [16, 16]
    assert result["accuracy"] >= 0.9


def test_run_and_evaluate_score_both_classes(trained: Path):
    r = cnnspec("run", "m.onnx", "data/dog/0.png", "data/cat/0.png", "--json", cwd=trained)
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    for entry, top in zip(entries, ["dog", "cat"], strict=True):
        scores = {p["label"]: p["score"] for p in entry["predictions"]}
        assert set(scores) == {"cat", "dog"} and abs(sum(scores.values()) - 1) < 1e-6
        assert entry["predictions"][0]["label"] == top
    # evaluate's loss is binary cross-entropy of the model's own sigmoid output (numpy, through onnxruntime)
    import onnxruntime as ort

    session = ort.InferenceSession(str(trained / "m.onnx"), providers=["CPUExecutionProvider"])
    xs, ys = [], []
    for y, label in enumerate(["cat", "dog"]):
        for i in range(16):
            xs.append(np.asarray(Image.open(trained / "data" / label / f"{i}.png"), np.float32)[None])
            ys.append(y)
    p = session.run(None, {session.get_inputs()[0].name: np.stack(xs)})[0][:, 0].astype(np.float64)
    y = np.array(ys)
    p = np.clip(np.where(y == 1, p, 1 - p), 1e-7, 1 - 1e-7)
    result = json.loads(cnnspec("evaluate", "m.onnx", "--data", "data", "--json", cwd=trained).stdout)
    assert result["loss"] == pytest.approx(float(-np.log(p).mean()), rel=1e-4)


def test_the_ort_training_backend_refuses_a_binary_head_with_the_fix():
    from cnnspec.training.ort_artifacts import unsupported

    (issue,) = unsupported(spec_from_data({**BINARY, "training": {"optimizer": "sgd"}}))
    assert "binary head" in issue.message and "--backend native" in issue.message
