"""Forward numerics: every layer kind and option, run by onnxruntime (float32), against the plain-numpy
reference in reference_numpy.py (float64, written from the layer definitions).

Tolerance: rtol 1e-5 plus an absolute floor of 1e-5 x the largest value the network computes (any
layer's reference output). Float32 cannot do better near zero: a sum of a few hundred terms of size
S carries an absolute error ~1e-7 S, and onnxruntime's own Sigmoid/Gelu/Elu kernels have absolute
errors up to ~5e-7 (relative 7e-5 in the tails), measured on onnxruntime 1.32 against float64.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import reference_numpy as ref
from hypothesis import HealthCheck, given, settings
from strategies import conv_variant_specs, feasible_specs

from cnnspec.analysis import check
from cnnspec.compiler import build_inference_model, model_bytes
from cnnspec.shapes import hwc_to_chw
from cnnspec.spec import normalized, spec_from_data

RTOL = 1e-5
ACTIVATIONS = [
    "relu", "tanh", "sigmoid", "softmax", "linear", "leaky_relu", "elu", "gelu", "silu", None, "relu6", "hard_sigmoid",
    "hard_silu", "hard_swish", "mish", "softplus", "softsign", "selu", "exponential",
]  # fmt: skip


def assert_close(actual: np.ndarray, expected: np.ndarray, scale: float | None = None) -> None:
    """rtol 1e-5, atol 1e-5 x `scale` (default: the largest expected magnitude)."""
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max(initial=0.0)) if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-5 * max(scale, 1e-6))


def run(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def compare(data: dict, *, low: float = -3.0, high: float = 3.0, batch: int = 2, opset: int = 17, seed: int = 0):
    """Compile `data` with random parameters, run it in ORT and in the reference; return the model."""
    spec = spec_from_data(data)
    report = check(spec)
    shapes = {f"{row.name}.{k}": s for row in report.layers for k, s in row.param_shapes.items()}
    params = ref.random_params(shapes, seed)
    model = build_inference_model(spec, report, params, opset)
    rng = np.random.default_rng(seed + 1)
    x = rng.uniform(low, high, (batch, *hwc_to_chw(spec.input_shape))).astype(np.float32)
    actual = run(model, x)
    expected, layers = ref.forward(normalized(spec), params, x)
    assert_close(
        actual, expected, max(float(np.abs(y).max()) for y in [ref.preprocess(x, data.get("preprocess")), *layers])
    )
    return model


def net(shape: list[int], *layers: dict, **extra: Any) -> dict:
    """A spec of `layers` on an input of `shape`, flattened at the end when it still is an image."""
    layers = list(layers)
    if len(shape) == 3 and not any(k["type"] in ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D")
                                   for k in layers):  # fmt: skip
        layers.append({"type": "Flatten"})
    return {"name": "numerics", "input": {"shape": shape}, "layers": layers, **extra}


# ---- Conv2D -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same", 1, [2, 0]])
@pytest.mark.parametrize("strides", [1, 2, [2, 1]])
@pytest.mark.parametrize("kernel", [2, 3, [3, 2]])
def test_conv_padding_modes_on_odd_sizes(padding, strides, kernel) -> None:
    conv = {"type": "Conv2D", "filters": 3, "kernel_size": kernel, "strides": strides, "padding": padding}
    compare(net([7, 9, 2], conv))


@pytest.mark.parametrize("size", [[5, 5], [6, 6], [8, 7], [1, 1], [2, 3]])
def test_conv_same_puts_the_odd_pad_at_bottom_right(size) -> None:
    # even kernels and stride 2 make the total pad odd on some axes
    for kernel, strides in ((2, 2), (4, 2), (3, 2), (2, 1)):
        conv = {"type": "Conv2D", "filters": 2, "kernel_size": kernel, "strides": strides, "padding": "same"}
        compare(net([*size, 1], conv))


@pytest.mark.parametrize("dilation", [2, [1, 3], [2, 2]])
@pytest.mark.parametrize("padding", ["valid", "same", 2])
def test_conv_dilation(dilation, padding) -> None:
    conv = {"type": "Conv2D", "filters": 2, "kernel_size": 3, "dilation_rate": dilation, "padding": padding}
    compare(net([11, 10, 2], conv))


def test_conv_dilation_with_stride() -> None:
    conv = {"type": "Conv2D", "filters": 3, "kernel_size": [3, 2], "dilation_rate": 2, "strides": 2, "padding": "same"}
    compare(net([9, 8, 1], conv))


@pytest.mark.parametrize(("channels", "groups", "filters"), [(4, 2, 6), (4, 4, 4), (4, 4, 8), (3, 3, 3), (6, 3, 3)])
def test_conv_groups(channels, groups, filters) -> None:
    conv = {"type": "Conv2D", "filters": filters, "kernel_size": 3, "groups": groups, "padding": "same", "strides": 2}
    compare(net([7, 5, channels], conv))


def test_conv_explicit_padding_wider_than_the_kernel() -> None:
    compare(net([4, 5, 2], {"type": "Conv2D", "filters": 2, "kernel_size": 1, "padding": [3, 2]}))


def test_conv_without_bias() -> None:
    compare(net([6, 6, 3], {"type": "Conv2D", "filters": 4, "kernel_size": 3, "use_bias": False}))


# ---- DepthwiseConv2D, SeparableConv2D, Conv2DTranspose ----------------------------------------------


@pytest.mark.parametrize("multiplier", [1, 3])
@pytest.mark.parametrize(
    ("kernel", "strides", "padding", "dilation"),
    [(3, 1, "valid", 1), (3, 2, "same", 1), ([3, 2], [2, 1], "same", 1), (2, 2, "same", 1), (3, 1, "same", 2)],
)
def test_depthwise_conv(multiplier, kernel, strides, padding, dilation) -> None:
    layer = {"type": "DepthwiseConv2D", "kernel_size": kernel, "strides": strides, "padding": padding,
             "dilation_rate": dilation, "depth_multiplier": multiplier, "activation": "relu"}  # fmt: skip
    compare(net([7, 8, 3], layer))


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize(("kernel", "strides", "padding", "multiplier"), [(3, 1, "same", 1), ([3, 2], 2, "same", 2),
                                                                         (3, 2, "valid", 1)])  # fmt: skip
def test_separable_conv(use_bias, kernel, strides, padding, multiplier) -> None:
    layer = {"type": "SeparableConv2D", "filters": 5, "kernel_size": kernel, "strides": strides, "padding": padding,
             "depth_multiplier": multiplier, "use_bias": use_bias, "activation": "tanh"}  # fmt: skip
    compare(net([7, 6, 3], layer))


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    ("kernel", "strides", "output_padding", "dilation"),
    [(3, 2, None, 1), (3, 2, 1, 1), (2, 2, None, 1), (4, 2, None, 1), (4, 2, 0, 1), (2, 3, None, 1), (2, 3, [2, 1], 1),
     (1, 2, None, 1), ([3, 2], [1, 2], None, 1), (3, 1, None, 2), (5, 3, 1, 1)],
)  # fmt: skip
def test_conv_transpose(padding, kernel, strides, output_padding, dilation) -> None:
    layer = {"type": "Conv2DTranspose", "filters": 3, "kernel_size": kernel, "strides": strides, "padding": padding,
             "dilation_rate": dilation, "activation": "linear"} | ({"output_padding": output_padding}
                                                                 if output_padding is not None else {})  # fmt: skip
    compare(net([4, 5, 2], layer))


def test_conv_transpose_without_bias_after_a_conv() -> None:
    compare(net([6, 6, 2], {"type": "Conv2D", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
                {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
                 "use_bias": False}))  # fmt: skip


# ---- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(("pool", "strides"), [(2, None), (3, None), (3, 2), ([3, 2], [1, 2]), (2, 1), (1, 2)])
def test_pooling(kind, padding, pool, strides) -> None:
    layer = {"type": kind, "pool_size": pool, "padding": padding} | ({"strides": strides} if strides else {})
    compare(net([7, 9, 2], layer))


def test_average_pooling_same_excludes_padding_from_the_divisor() -> None:
    # constant input: every window mean is exactly the constant, also at the padded border
    data = net([5, 5, 1], {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"})
    spec = spec_from_data(data)
    model = build_inference_model(spec, check(spec), {})
    out = run(model, np.full((1, 1, 5, 5), 7.0, np.float32))
    np.testing.assert_allclose(out, 7.0, rtol=1e-6)
    compare(data)


@pytest.mark.parametrize("kind", ["GlobalAveragePooling2D", "GlobalMaxPooling2D"])
def test_global_pooling(kind) -> None:
    compare(net([5, 7, 3], {"type": kind}))
    compare(net([1, 1, 2], {"type": kind}))


# ---- Dense, Flatten, Dropout, BatchNormalization, ZeroPadding2D ------------------------------------


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense(use_bias) -> None:
    compare(net([3, 4, 2], {"type": "Flatten"}, {"type": "Dense", "units": 7, "use_bias": use_bias}))


def test_flatten_is_channel_major() -> None:
    # values 0..23 in NCHW order come out of Flatten in the same order (PyTorch's, not Keras's HWC)
    spec = spec_from_data(net([2, 3, 4], {"type": "Flatten"}))
    model = build_inference_model(spec, check(spec), {})
    x = np.arange(24, dtype=np.float32).reshape(1, 4, 2, 3)
    out = run(model, x)
    np.testing.assert_array_equal(out, np.arange(24, dtype=np.float32)[None])
    compare(net([3, 5, 2], {"type": "Flatten"}, {"type": "Flatten"}))


def test_dropout_is_identity_at_inference() -> None:
    compare(net([4, 4, 2], {"type": "Dropout", "rate": 0.9}, {"type": "Flatten"}, {"type": "Dropout", "rate": 0.5}))


@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("epsilon", [1e-3, 0.5])
def test_batch_normalization(center, scale, epsilon) -> None:
    bn = {"type": "BatchNormalization", "center": center, "scale": scale, "epsilon": epsilon}
    compare(net([5, 3, 3], bn))  # over the channels of an image
    compare(net([2, 2, 2], {"type": "Flatten"}, bn))  # over the units of a flat tensor


@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("epsilon", [1e-3, 0.5])
def test_layer_normalization_over_the_channels_of_each_pixel(center, scale, epsilon) -> None:
    ln = {"type": "LayerNormalization", "center": center, "scale": scale, "epsilon": epsilon}
    compare(net([5, 3, 4], ln))  # per pixel over its 4 channels (Keras), not over C, H, W (PyTorch)
    compare(net([2, 2, 3], {"type": "Flatten"}, ln))  # over the units of a flat tensor


@pytest.mark.parametrize(("channels", "groups"), [(8, 4), (8, 1), (8, 8), (6, -1), (6, 3), (32, 32)])
@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, False)])
def test_group_normalization(channels, groups, center, scale) -> None:
    gn = {"type": "GroupNormalization", "groups": groups, "center": center, "scale": scale}
    compare(net([4, 3, channels], gn))
    compare(net([1, 1, channels], {"type": "Flatten"}, gn | {"epsilon": 0.01}))  # flat: groups of units


def test_group_normalization_default_groups_on_64_channels() -> None:
    compare(net([3, 3, 2], {"type": "Conv2D", "filters": 64, "kernel_size": 1}, {"type": "GroupNormalization"}))


def test_layer_scale_multiplies_each_channel() -> None:
    compare(net([3, 4, 5], {"type": "LayerScale", "init_values": 1e-6, "projection_dim": 5}))
    compare(net([2, 2, 3], {"type": "Flatten"}, {"type": "LayerScale", "init_values": 0.5, "projection_dim": 12}))


def test_training_only_drops_are_identity_at_inference() -> None:
    drops = [
        {"type": "SpatialDropout2D", "rate": 0.5},
        {"type": "StochasticDepth", "drop_path_rate": 0.3},
        {"type": "Dropout", "rate": 0.4, "noise_shape": [None, 1, 1, 1]},
    ]
    compare(net([4, 4, 3], *drops))


@pytest.mark.parametrize("padding", [0, 2, [1, 3], [[0, 2], [3, 1]], [[2, 0], [0, 1]]])
def test_zero_padding(padding) -> None:
    compare(net([3, 4, 2], {"type": "ZeroPadding2D", "padding": padding}))


@pytest.mark.parametrize("pool", ["MaxPooling2D", "AveragePooling2D"])
def test_zero_padding_before_pooling_pads_with_real_zeros(pool) -> None:
    # all-negative input: the zero border wins every max and counts in every mean (a pool's own padding would not)
    layers = ({"type": "ZeroPadding2D", "padding": [[1, 2], [2, 1]]}, {"type": pool, "pool_size": 2, "padding": "same"})
    compare(net([5, 4, 2], *layers), low=-2.0, high=-1.0)


# ---- activations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_on_dense_conv_and_activation_layer(activation) -> None:
    wide = {"low": -6.0, "high": 6.0}  # covers the tails of elu, gelu, sigmoid
    compare(net([2, 3, 2], {"type": "Flatten"}, {"type": "Dense", "units": 5, "activation": activation}), **wide)
    conv = {"type": "Conv2D", "filters": 3, "kernel_size": 1, "activation": activation}  # softmax over channels
    compare(net([3, 2, 2], conv), **wide)
    compare(net([3, 2, 2], {"type": "Activation", "activation": activation}), **wide)


@pytest.mark.parametrize("opset", [13, 17, 19, 20, 21])
def test_gelu_is_exact_below_and_from_opset_20(opset) -> None:
    model = compare(net([4, 4, 2], {"type": "Activation", "activation": "gelu"}), low=-8.0, high=8.0, opset=opset)
    ops = {node.op_type for node in model.graph.node}
    assert ("Gelu" in ops) == (opset >= 20)
    assert ("Erf" in ops) == (opset < 20)
    for node in model.graph.node:
        if node.op_type == "Gelu":
            assert {a.name: a.s for a in node.attribute} == {"approximate": b"none"}


@pytest.mark.parametrize(
    ("activation", "x", "expected"),
    [  # Keras 3's values, by hand
        ("hard_sigmoid", [-4.0, -3.0, 0.0, 1.5, 3.0], [0.0, 0.0, 0.5, 0.75, 1.0]),  # clip(x/6 + 1/2, 0, 1), not 0.2x
        ("hard_silu", [-4.0, -1.5, 1.5, 4.0], [0.0, -0.375, 1.125, 4.0]),
        ("relu6", [-1.0, 3.0, 7.0], [0.0, 3.0, 6.0]),
        ("softsign", [-3.0, 1.0], [-0.75, 0.5]),
        ("selu", [1.0, -1.0], [1.0507009873554805, -1.1113307378125625]),  # scale · alpha (e^-1 - 1)
    ],
)
def test_activation_values_are_keras_3s(activation, x, expected) -> None:
    data = net([1, 1, len(x)], {"type": "Activation", "activation": activation})
    spec = spec_from_data(data)
    out = run(build_inference_model(spec, check(spec), {}), np.asarray(x, np.float32).reshape(1, -1, 1, 1))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-7)


# ---- UpSampling2D, Cropping2D, Reshape, Identity, Rescaling ---------------------------------------------


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [2, [1, 3], [3, 2], 1])
def test_upsampling(interpolation, size) -> None:
    compare(net([3, 4, 2], {"type": "UpSampling2D", "size": size, "interpolation": interpolation}))
    compare(net([1, 1, 2], {"type": "UpSampling2D", "size": size, "interpolation": interpolation}))


def test_upsampling_values_are_keras_resize() -> None:
    # tf.image.resize([[1, 2]], [2, 4], 'bilinear') (half-pixel centres): rows 1, 1.25, 1.75, 2; nearest repeats
    for interpolation, expected in (("bilinear", [1.0, 1.25, 1.75, 2.0]), ("nearest", [1.0, 1.0, 2.0, 2.0])):
        spec = spec_from_data(net([1, 2, 1], {"type": "UpSampling2D", "interpolation": interpolation}))
        out = run(build_inference_model(spec, check(spec), {}), np.array([[[[1.0, 2.0]]]], np.float32))
        np.testing.assert_allclose(out.reshape(2, 4), [expected, expected], rtol=1e-7)


@pytest.mark.parametrize("cropping", [0, 1, [1, 0], [[0, 2], [1, 1]], [[2, 0], [0, 3]]])
def test_cropping(cropping) -> None:
    compare(net([5, 6, 2], {"type": "Cropping2D", "cropping": cropping}))


@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ([3, 4, 2], [-1]),  # image -> flat: Keras's HWC order (a Transpose first)
        ([3, 4, 2], [6, 2, 2]),  # only H, W change: a plain Reshape in NCHW
        ([3, 4, 2], [4, 3, 2]),
        ([3, 4, 2], [2, 3, 4]),  # the channels change: through NHWC
        ([3, 4, 1], [2, 6, 1]),
        ([1, 1, 6], [6]),
        ([1, 1, 6], [2, 3, 1]),
    ],
)
def test_reshape_keeps_keras_order(shape, target) -> None:
    compare(net(shape, {"type": "Reshape", "target_shape": target}, {"type": "Flatten"}))


@pytest.mark.parametrize("target", [[1, 1, 6], [2, 3, 1], [1, 2, 3], [-1, 3, 2], [6]])
def test_reshape_from_flat(target) -> None:
    flat = {"type": "Dense", "units": 6}
    compare(net([2, 2, 1], {"type": "Flatten"}, flat, {"type": "Reshape", "target_shape": target}, {"type": "Flatten"}))


def test_reshape_to_flat_is_hwc_order_unlike_flatten() -> None:
    spec = spec_from_data(net([2, 3, 4], {"type": "Reshape", "target_shape": [-1]}))
    x = np.arange(24, dtype=np.float32).reshape(1, 4, 2, 3)
    out = run(build_inference_model(spec, check(spec), {}), x)
    np.testing.assert_array_equal(out, x.transpose(0, 2, 3, 1).reshape(1, -1))


def test_identity_and_rescaling() -> None:
    compare(net([3, 3, 2], {"type": "Identity"}, {"type": "Rescaling", "scale": 1 / 127.5, "offset": -1}),
            low=0.0, high=255.0)  # fmt: skip
    compare(net([3, 3, 2], {"type": "Rescaling", "scale": -2.0}))


# ---- activation layers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relu",
    [
        {},
        {"max_value": 6},
        {"max_value": 1.5},
        {"negative_slope": 0.1},
        {"threshold": 0.5},
        {"max_value": 2.0, "negative_slope": 0.2, "threshold": 0.5},
        {"negative_slope": 0.3, "threshold": 1.0},
        {"max_value": 0.5, "threshold": 1.0},  # max_value below the threshold
        {"max_value": 6.0, "negative_slope": 0.25},
    ],
)
def test_relu_layer(relu) -> None:
    compare(net([4, 3, 2], {"type": "ReLU", **relu}), low=-4.0, high=8.0)


@pytest.mark.parametrize("slope", [None, 0.01, 0.0, 1.5])
def test_leaky_relu_layer(slope) -> None:
    layer = {"type": "LeakyReLU"} | ({"negative_slope": slope} if slope is not None else {})
    compare(net([4, 3, 2], layer))


@pytest.mark.parametrize("shared_axes", [None, [1, 2], [1], 3, [1, 2, 3]])
def test_prelu_layer(shared_axes) -> None:
    layer = {"type": "PReLU", "alpha_initializer": "he_normal"} | ({"shared_axes": shared_axes} if shared_axes else {})
    compare(net([4, 3, 2], layer))
    compare(net([2, 2, 2], {"type": "Flatten"}, {"type": "PReLU"} | ({"shared_axes": [1]} if shared_axes else {})))


@pytest.mark.parametrize("alpha", [1.0, 0.3, -0.5])
def test_elu_layer(alpha) -> None:
    compare(net([4, 3, 2], {"type": "ELU", "alpha": alpha}), low=-6.0, high=6.0)


@pytest.mark.parametrize("axis", [-1, 3, 1, 2, -2, -3])
def test_softmax_layer(axis) -> None:
    compare(net([4, 3, 2], {"type": "Softmax", "axis": axis}), low=-6.0, high=6.0)


def test_softmax_layer_on_units() -> None:
    compare(net([2, 2, 1], {"type": "Flatten"}, {"type": "Dense", "units": 4}, {"type": "Softmax"}))


# ---- preprocessing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prep",
    [
        None,
        {"scale": 1 / 255},
        {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"mean": 127.5, "std": 127.5},
        {"scale": 2.0, "mean": [1.0, -2.0, 0.5]},
    ],
)
def test_preprocess_is_the_first_computation(prep) -> None:
    extra = {"preprocess": prep} if prep else {}
    compare(net([3, 3, 3], {"type": "Conv2D", "filters": 2, "kernel_size": 2}, **extra), low=0.0, high=255.0)


# ---- whole random networks -------------------------------------------------------------------------

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


@settings(
    max_examples=2000 if LONG else 300,
    derandomize=not LONG,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(feasible_specs())
def test_random_networks_match_the_reference(data: dict) -> None:
    compare(data, low=0.0, high=255.0 if "preprocess" in data else 1.0, batch=3)


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(conv_variant_specs())
def test_random_conv_variant_stacks_match_the_reference(data: dict) -> None:
    compare(data, batch=2)
