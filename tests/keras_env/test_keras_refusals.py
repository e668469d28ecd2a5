"""Files a Keras user might hand over that cnnspec cannot import: each gives one clear error naming the layer
and the reason, exit code 1, no traceback and no output file."""

from __future__ import annotations

import subprocess
import sys

import keras
import pytest
from keras import layers as L


@keras.saving.register_keras_serializable(package="my_pkg")
class Twice(L.Layer):
    def call(self, x):
        return x * 2


def lambda_model():
    inp = keras.Input((8, 8, 1))
    return keras.Model(inp, L.Dense(2)(L.Flatten()(L.Lambda(lambda t: t + 1, name="plus_one")(inp))))


def custom_model():
    inp = keras.Input((8, 8, 1))
    return keras.Model(inp, L.Dense(2)(L.Flatten()(Twice(name="twice")(inp))))


def rnn_model():
    inp = keras.Input((8, 8))
    return keras.Model(inp, L.Dense(2)(L.LSTM(4, name="lstm")(inp)))


def two_inputs():
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    return keras.Model([a, b], L.Dense(2)(L.Flatten()(L.Add()([a, b]))))


def two_outputs():
    inp = keras.Input((8, 8, 1))
    x = L.Flatten()(inp)
    return keras.Model(inp, [L.Dense(2)(x), L.Dense(3)(x)])


def channels_first():
    inp = keras.Input((1, 8, 8))
    x = L.Conv2D(2, 3, data_format="channels_first", name="conv_cf")(inp)
    return keras.Model(inp, L.Dense(2)(L.Flatten()(x)))


CASES = [
    (lambda_model, ["'plus_one' (Lambda)", "Python code"]),
    (custom_model, ["'twice'", "custom class 'my_pkg>Twice'"]),
    (rnn_model, ["'lstm' (LSTM)", "recurrent"]),
    (two_inputs, ["2 inputs"]),
    (two_outputs, ["2 outputs"]),
    (channels_first, ["'conv_cf' (Conv2D)", "data_format='channels_first'"]),
]


@pytest.mark.parametrize("build, needles", CASES, ids=[c[0].__name__ for c in CASES])
def test_refused_with_one_clear_error(build, needles, tmp_path):
    path = tmp_path / "model.keras"
    build().save(path)
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "import", str(path), "-o", str(tmp_path / "s.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot import") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not (tmp_path / "s.yaml").exists()
