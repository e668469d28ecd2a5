"""The cross-check: one SGD step of the native backend and of onnxruntime-training, from the same weights on
the same batch, give the same weights (1e-5 relative) for every layer kind and option both support.

onnxruntime-training's gradients come from its own gradient builder, written independently of cnnspec's
backward rules, so agreement here is evidence for both. Its own side is pinned first against numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnspec.analysis import check
from cnnspec.compiler import initial_params
from cnnspec.spec import spec_from_data
from cnnspec.training import native, ort_backend

LEARNING_RATE = 0.5  # large, so that the update itself is far above float32 noise in the weights


def native_one_step(spec, params, x, y, learning_rate):
    return native.one_step(spec, params, x, y, learning_rate, optimizer="sgd")


def tiny_spec(layers: list[dict], last_activation: str | None = "softmax") -> dict:
    return {
        "name": "cross",
        "input": {"shape": [6, 6, 2]},
        "preprocess": {"scale": 1 / 255, "mean": [0.5, 0.4], "std": [0.25, 0.3]},
        "layers": [*layers, {"type": "Dense", "units": 3, "activation": last_activation}],
    }


def conv(**kw) -> dict:
    return {"type": "Conv2D", "filters": 4, "kernel_size": 3} | kw


FLAT = {"type": "Flatten"}
CASES = {
    "dense relu": [FLAT, {"type": "Dense", "units": 5, "activation": "relu"}],
    "dense no bias tanh": [FLAT, {"type": "Dense", "units": 5, "activation": "tanh", "use_bias": False}],
    "conv valid sigmoid": [conv(activation="sigmoid"), FLAT],
    "conv same stride 2 (asymmetric pads) leaky_relu": [conv(strides=2, padding="same", activation="leaky_relu"), FLAT],
    "conv dilation 2 same elu": [conv(kernel_size=2, dilation_rate=2, padding="same", activation="elu"), FLAT],
    "conv groups 2 gelu": [conv(kernel_size=2, groups=2, activation="gelu"), FLAT],
    "conv explicit padding silu, no bias": [conv(padding=[1, 0], activation="silu", use_bias=False), FLAT],
    "conv rectangular kernel stride": [conv(kernel_size=[3, 2], strides=[1, 2]), FLAT],
    "max pool valid": [conv(activation="relu"), {"type": "MaxPooling2D", "pool_size": 2}, FLAT],
    "max pool same stride 2": [conv(), {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"}, FLAT],
    "average pool valid": [conv(), {"type": "AveragePooling2D", "pool_size": 2, "strides": 1}, FLAT],
    "average pool same": [conv(), {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"}, FLAT],
    "global average pool": [conv(activation="tanh"), {"type": "GlobalAveragePooling2D"}],
    "global max pool": [conv(activation="tanh"), {"type": "GlobalMaxPooling2D"}],
    "zero padding": [{"type": "ZeroPadding2D", "padding": [[1, 0], [2, 1]]}, conv(), FLAT],
    "depthwise same stride 2 multiplier 2": [
        conv(),
        {
            "type": "DepthwiseConv2D",
            "kernel_size": 3,
            "strides": 2,
            "padding": "same",
            "depth_multiplier": 2,
            "activation": "relu",
        },
        FLAT,
    ],
    "depthwise first layer dilation no bias": [
        {"type": "DepthwiseConv2D", "kernel_size": 2, "dilation_rate": 2, "use_bias": False},
        FLAT,
    ],
    "separable same tanh": [
        conv(),
        {"type": "SeparableConv2D", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"},
        FLAT,
    ],
    "separable stride 2 multiplier 2 no bias": [
        conv(),
        {
            "type": "SeparableConv2D",
            "filters": 5,
            "kernel_size": [3, 2],
            "strides": 2,
            "depth_multiplier": 2,
            "use_bias": False,
        },
        FLAT,
    ],
    "transpose same stride 2 odd kernel": [
        conv(),
        {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"},
        FLAT,
    ],
    "transpose valid stride 3 output padding": [
        conv(),
        {
            "type": "Conv2DTranspose",
            "filters": 2,
            "kernel_size": 2,
            "strides": 3,
            "output_padding": 1,
            "activation": "tanh",
        },
        FLAT,
    ],
    "transpose first layer same even kernel": [
        {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 4, "strides": 2, "padding": "same"},
        FLAT,
    ],
    "layer normalization": [conv(activation="relu"), {"type": "LayerNormalization"}, FLAT],
    "layer normalization flat, no center": [FLAT, {"type": "LayerNormalization", "center": False, "epsilon": 0.01}],
    "group normalization": [conv(filters=6, padding="same"), {"type": "GroupNormalization", "groups": 3}, FLAT],
    "group normalization instance, no scale": [  # no conv bias: its gradient is 0 (the statistics remove it)
        conv(use_bias=False),
        {"type": "GroupNormalization", "groups": -1, "scale": False},
        FLAT,
    ],
    "group normalization flat": [FLAT, {"type": "Dense", "units": 8}, {"type": "GroupNormalization", "groups": 2}],
    "layer scale": [conv(activation="tanh"), {"type": "LayerScale", "init_values": 0.3, "projection_dim": 4}, FLAT],
    "activation layers": [
        FLAT,
        {"type": "Dense", "units": 6},
        {"type": "Activation", "activation": "elu"},
        {"type": "Activation", "activation": "softmax"},
    ],  # fmt: skip
    # issue 12: reshaping and activation layers, activation strings (lowered ones: docs/ort-training.md)
    "upsampling nearest": [conv(activation="tanh"), {"type": "UpSampling2D", "size": [2, 3]}, FLAT],
    "upsampling bilinear": [
        conv(activation="tanh"),
        {"type": "UpSampling2D", "interpolation": "bilinear"},
        conv(),
        FLAT,
    ],
    "cropping": [conv(padding="same"), {"type": "Cropping2D", "cropping": [[1, 0], [0, 2]]}, FLAT],
    "reshape through NHWC and to flat": [
        conv(),
        {"type": "Reshape", "target_shape": [2, 16, 2]},
        conv(kernel_size=2),
        {"type": "Reshape", "target_shape": [-1]},
    ],  # fmt: skip
    "reshape gate": [conv(), {"type": "GlobalAveragePooling2D"}, {"type": "Reshape", "target_shape": [1, 1, 4]}, FLAT],
    "identity rescaling": [conv(), {"type": "Identity"}, {"type": "Rescaling", "scale": 0.5, "offset": -1.0}, FLAT],
    "relu layers": [
        conv(),
        {"type": "ReLU", "max_value": 1.0, "negative_slope": 0.1, "threshold": 0.05},
        {"type": "LeakyReLU"},
        conv(kernel_size=1),
        {"type": "ReLU", "max_value": 6},
        {"type": "ReLU", "negative_slope": 0.2},
        FLAT,
    ],  # fmt: skip
    "prelu per value and per channel": [
        conv(),
        {"type": "PReLU", "alpha_initializer": {"type": "constant", "value": 0.25}},
        conv(kernel_size=1),
        {"type": "PReLU", "shared_axes": [1, 2], "alpha_initializer": "he_normal"},
        FLAT,
    ],  # fmt: skip
    "elu and softmax layers": [conv(), {"type": "ELU", "alpha": 0.5}, {"type": "Softmax", "axis": 1}, FLAT],
}
for _act in ["relu6", "hard_sigmoid", "hard_silu", "mish", "softplus", "softsign", "selu", "exponential"]:
    CASES[f"conv {_act}"] = [conv(activation=_act), FLAT]


GRAPH_CASES = {  # graph specs: merges, fan-out, broadcasting, a block with repeat
    "residual add": [conv(name="a", padding="same", activation="relu"), conv(name="b", padding="same"),
                     {"type": "Add", "name": "sum", "inputs": ["a", "b"]}, FLAT],
    "concat with a parameter-free branch": [
        conv(name="a", padding="same", activation="tanh"),
        {"type": "MaxPooling2D", "name": "p", "pool_size": 3, "strides": 1, "padding": "same", "inputs": "input"},
        {"type": "Concatenate", "name": "cat", "inputs": ["a", "p"]}, FLAT],
    "squeeze-excite multiply": [
        conv(name="a", padding="same", activation="relu"),
        {"type": "GlobalAveragePooling2D", "keepdims": True},
        {"type": "Conv2D", "name": "gate", "filters": 4, "kernel_size": 1, "activation": "sigmoid"},
        {"type": "Multiply", "inputs": ["a", "gate"]}, FLAT],
    "subtract average maximum minimum": [
        conv(name="a", padding="same"), conv(name="b", padding="same", activation="tanh"),
        {"type": "Subtract", "name": "d", "inputs": ["a", "b"]},
        {"type": "Average", "name": "m", "inputs": ["a", "b", "d"]},
        {"type": "Maximum", "name": "hi", "inputs": ["m", "b"]},
        {"type": "Minimum", "name": "lo", "inputs": ["hi", "a"]}, FLAT],
}  # fmt: skip
RES_LAYERS = [conv(name="c", filters=2, padding="same", activation="relu"), {"type": "Add", "inputs": ["in", "c"]}]
BLOCKS = {"res": {"layers": RES_LAYERS}}


@pytest.mark.parametrize("layers", GRAPH_CASES.values(), ids=GRAPH_CASES.keys())
def test_graph_nets_one_sgd_step_matches_the_native_backend(layers):
    data = tiny_spec(layers)
    data["layers"][0] = data["layers"][0] | {"inputs": "input"}
    spec = spec_from_data(data)
    params = initial_params(spec, check(spec), seed=7)
    rng = np.random.default_rng(12)
    x, y = rng.uniform(0, 255, (5, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, 5)
    ours = ort_backend.one_step(spec, params, x, y, LEARNING_RATE)
    assert_same_step(ours, native_one_step(spec, params, x, y, LEARNING_RATE), params)


def test_a_repeated_residual_block_matches_the_native_backend():
    stem = conv(name="stem", filters=2, padding="same")
    data = tiny_spec([stem, {"block": "res", "name": "layer1", "repeat": 2}, FLAT])
    spec = spec_from_data(data | {"blocks": BLOCKS})
    params = initial_params(spec, check(spec), seed=8)
    assert "layer1.1.c.weight" in params
    rng = np.random.default_rng(13)
    x, y = rng.uniform(0, 255, (5, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, 5)
    ours = ort_backend.one_step(spec, params, x, y, LEARNING_RATE)
    assert_same_step(ours, native_one_step(spec, params, x, y, LEARNING_RATE), params)


def assert_same_step(ours: dict, theirs: dict, before: dict) -> None:
    assert ours.keys() == theirs.keys() == before.keys()
    for name in before:
        scale = float(np.abs(theirs[name]).max())
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
        # and the update itself, so a wrong gradient cannot hide under a large weight
        update, reference = ours[name] - before[name], theirs[name] - before[name]
        assert np.linalg.norm(update - reference) <= 1e-4 * np.linalg.norm(reference) + 1e-7, name


@pytest.mark.parametrize("layers", CASES.values(), ids=CASES.keys())
def test_one_sgd_step_matches_the_native_backend(layers):
    spec = spec_from_data(tiny_spec(layers))
    params = initial_params(spec, check(spec), seed=7)
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 255, (5, 2, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    ours = ort_backend.one_step(spec, params, x, y, LEARNING_RATE)
    assert_same_step(ours, native_one_step(spec, params, x, y, LEARNING_RATE), params)


def test_last_layer_without_softmax_is_taken_as_logits_by_both():
    spec = spec_from_data(tiny_spec([FLAT], last_activation=None))
    params = initial_params(spec, check(spec), seed=1)
    x, y = np.random.default_rng(2).uniform(0, 255, (4, 2, 6, 6)).astype(np.float32), np.array([0, 1, 2, 1])
    assert_same_step(ort_backend.one_step(spec, params, x, y, 0.3), native_one_step(spec, params, x, y, 0.3), params)


def test_a_last_softmax_layer_is_the_fused_softmax_for_both():
    data = tiny_spec([FLAT, {"type": "Dense", "units": 5, "activation": "relu6"}], last_activation=None)
    spec = spec_from_data(data | {"layers": [*data["layers"], {"type": "Softmax"}]})
    params = initial_params(spec, check(spec), seed=2)
    x, y = np.random.default_rng(3).uniform(0, 255, (4, 2, 6, 6)).astype(np.float32), np.array([0, 1, 2, 1])
    ours = ort_backend.one_step(spec, params, x, y, LEARNING_RATE)
    assert_same_step(ours, native_one_step(spec, params, x, y, LEARNING_RATE), params)
    # and the same step as Dense(activation='softmax')
    fused = spec_from_data(tiny_spec([FLAT, {"type": "Dense", "units": 5, "activation": "relu6"}]))
    assert_same_step(native_one_step(fused, params, x, y, LEARNING_RATE), ours, params)


def test_ort_side_against_a_numpy_sgd_step_of_a_dense_net():
    """Flatten -> Dense(4, relu) -> Dense(3, softmax), cross-entropy on integer labels, w -= lr * dL/dw."""
    spec = spec_from_data(tiny_spec([FLAT, {"type": "Dense", "units": 4, "activation": "relu"}]) | {"preprocess": None})
    params = initial_params(spec, check(spec), seed=3)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, 6)
    w1, b1, w2, b2 = (
        params[k].astype(np.float64) for k in ("dense.weight", "dense.bias", "dense_1.weight", "dense_1.bias")
    )
    flat = x.reshape(len(x), -1).astype(np.float64)  # NCHW flatten, channel-major
    hidden = np.maximum(flat @ w1.T + b1, 0)
    logits = hidden @ w2.T + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = (p - np.eye(3)[y]) / len(y)  # d mean CE / d logits
    dh = (dz @ w2) * (hidden > 0)
    grads = {
        "dense_1.weight": dz.T @ hidden,
        "dense_1.bias": dz.sum(0),
        "dense.weight": dh.T @ flat,
        "dense.bias": dh.sum(0),
    }
    expected = {k: params[k] - LEARNING_RATE * grads[k] for k in params}
    assert_same_step(ort_backend.one_step(spec, params, x, y, LEARNING_RATE), expected, params)


def test_one_adam_step_matches_the_native_backend():
    """ORT's AdamWOptimizer (adam_mode=1) has Keras's epsilon placement and bias correction: with no weight decay
    the first step is the native one. (AdamW differs by lr·wd·Δw: ORT decays the already-updated weights.)"""
    layers = [conv(activation="relu"), {"type": "MaxPooling2D", "pool_size": 2}, FLAT]
    spec = spec_from_data(tiny_spec(layers) | {"training": {"optimizer": "adam", "beta_1": 0.8, "epsilon": 1e-6}})
    params = initial_params(spec, check(spec), seed=4)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 255, (5, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, 5)
    ours = ort_backend.one_step(spec, params, x, y, 0.01, optimizer="adam")
    assert_same_step(ours, native.one_step(spec, params, x, y, 0.01, optimizer="adam"), params)
