"""`cnnspec import` proven against Keras: random models and keras.applications, saved by Keras, imported by
cnnspec, run by onnxruntime, compared with model.predict on the same raw images.

Error measure: max |onnx - keras| / max |keras| over the batch (relative to the output's scale), ≤ 1e-4.
Parameter counts: the imported weights hold exactly model.count_params() numbers.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cnnspec.keras_import import import_to_files
from cnnspec.weights import read_weights

from .keras_helpers import functional_model, randomize, relative_error, run_onnx, sequential_model

TOLERANCE = 1e-4
SEEDS = range(20)


def check_model(model: keras.Model, tmp_path: Path, seed: int, suffix: str = ".keras") -> dict:
    rng = np.random.default_rng(seed)
    randomize(model, rng)
    keras_path = tmp_path / f"model{suffix}"
    model.save(keras_path)
    spec, onnx_path, weights = tmp_path / "spec.yaml", tmp_path / "model.onnx", tmp_path / "w.npz"
    import_to_files(keras_path, spec, onnx_path, weights)
    h, w, c = (int(d) for d in model.input_shape[1:])
    images = rng.uniform(0, 255, (3, h, w, c)).astype(np.float32)
    want = np.asarray(model.predict(images, verbose=0, batch_size=3))
    got = run_onnx(onnx_path, images)
    params, _ = read_weights(weights)
    error = relative_error(got, want)
    assert got.shape == want.shape
    assert error <= TOLERANCE, f"relative error {error:.2e}\n{spec.read_text()}"
    assert sum(v.size for v in params.values()) == model.count_params()
    return {"error": error, "spec": spec.read_text()}


@pytest.mark.parametrize("seed", SEEDS)
def test_random_sequential(seed, tmp_path):
    check_model(sequential_model(seed), tmp_path, seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_functional(seed, tmp_path):
    check_model(functional_model(100 + seed), tmp_path, 100 + seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_legacy_h5_files(seed, tmp_path):
    """The same models through the legacy HDF5 full-model format (Keras 2's file layout)."""
    check_model(functional_model(200 + seed), tmp_path, 200 + seed, suffix=".h5")


def test_nested_model_becomes_a_block(tmp_path):
    inner = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.BatchNormalization()], name="backbone")  # fmt: skip
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x), name="transfer")
    result = check_model(model, tmp_path, 7)
    assert "blocks:" in result["spec"] and "{block: backbone, name: backbone}" in result["spec"]
    params, _ = read_weights(tmp_path / "w.npz")
    assert "backbone.conv2d.weight" in params or any(k.startswith("backbone.") for k in params)


@pytest.mark.parametrize(
    "name, size",
    [("MobileNetV2", 32), ("ResNet50", 32), ("DenseNet121", 32)],
)
def test_applications(name, size, tmp_path):
    build = getattr(keras.applications, name)
    model = build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    result = check_model(model, tmp_path, 11)
    assert result["spec"].count("\n") > 50
