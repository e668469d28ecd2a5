"""Shape arithmetic against Keras's formulas, written out here independently of cnnspec.shapes.

Keras (keras/src/ops/operation_utils.py, compute_conv_output_shape / compute_pooling_output_shape):
    valid:  out = floor((in - (k-1)*d - 1) / s) + 1
    same:   out = ceil(in / s); total pad = max((out-1)*s + (k-1)*d + 1 - in, 0), the odd pixel at the
            bottom/right (TensorFlow's rule, which Keras follows)
    explicit p (PyTorch's meaning, on both sides): out = floor((in + 2p - (k-1)*d - 1) / s) + 1
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnspec.analysis import analyze
from cnnspec.layers import (
    AveragePooling2D,
    Conv2D,
    Cropping2D,
    Dropout,
    GroupNormalization,
    LayerNormalization,
    LayerScale,
    MaxPooling2D,
    PReLU,
    Reshape,
    ShapeError,
    Softmax,
    SpatialDropout2D,
    StochasticDepth,
    UpSampling2D,
    ZeroPadding2D,
)
from cnnspec.shapes import Window, effective_kernel, hwc_to_chw, numel, window, window_formula
from cnnspec.spec import spec_from_data


def keras_out(size: int, k: int, s: int, d: int, padding) -> int:
    extent = (k - 1) * d + 1
    if padding == "valid":
        return (size - extent) // s + 1
    if padding == "same":
        return -(-size // s)  # ceil without floats
    return (size + 2 * padding - extent) // s + 1


def keras_same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


# ---- worked tables (computed by hand; the comment shows the arithmetic) ------------------------------

VALID = [  # (in, k, s, d, out)
    (28, 5, 1, 1, 24),  # 28-5+1
    (28, 3, 2, 1, 13),  # floor(25/2)+1
    (14, 5, 1, 1, 10),
    (6, 5, 1, 1, 2),
    (5, 2, 2, 1, 2),  # floor(3/2)+1: the last row is dropped
    (7, 3, 2, 2, 2),  # extent 5: floor(2/2)+1
    (9, 3, 1, 4, 1),  # extent 9 fills the input exactly
    (4, 7, 1, 1, -2),  # the 7x7-on-4x4 case: floor(-3/1)+1
    (8, 9, 1, 1, 0),
]

SAME = [  # (in, k, s, d, out, pad_before, pad_after)
    (28, 5, 1, 1, 28, 2, 2),
    (5, 2, 2, 1, 3, 0, 1),  # total 2*2+2-5 = 1: the odd pixel goes to the bottom/right
    (28, 2, 2, 1, 14, 0, 0),  # 13*2+2-28 = 0
    (32, 3, 2, 1, 16, 0, 1),  # 15*2+3-32 = 1
    (8, 4, 1, 1, 8, 1, 2),  # 7+4-8 = 3 -> 1 before, 2 after
    (7, 3, 1, 2, 7, 2, 2),  # dilation: extent 5, 6+5-7 = 4
    (7, 3, 2, 3, 4, 3, 3),  # stride and dilation: extent 7, 3*2+7-7 = 6
    (10, 3, 3, 2, 4, 2, 2),  # extent 5, 3*3+5-10 = 4
    (1, 5, 1, 1, 1, 2, 2),  # a 5x5 kernel on a single pixel: 'same' never fails
    (3, 1, 2, 1, 2, 0, 0),  # 1*2+1-3 = 0
]

EXPLICIT = [  # (in, k, s, d, p, out)
    (28, 3, 1, 1, 1, 28),
    (28, 5, 2, 1, 2, 14),  # floor((28+4-5)/2)+1
    (9, 3, 2, 2, 1, 4),  # floor((9+2-5)/2)+1
    (4, 7, 1, 1, 1, 0),  # floor((4+2-7)/1)+1
    (1, 3, 1, 1, 0, -1),
]


@pytest.mark.parametrize(("size", "k", "s", "d", "out"), VALID)
def test_valid_table(size: int, k: int, s: int, d: int, out: int) -> None:
    assert keras_out(size, k, s, d, "valid") == out  # the table agrees with the formula...
    assert window(size, k, s, d, "valid") == Window(out, 0, 0)  # ...and cnnspec with both


@pytest.mark.parametrize(("size", "k", "s", "d", "out", "before", "after"), SAME)
def test_same_table_odd_pad_at_bottom_right(size: int, k: int, s: int, d: int, out: int, before: int, after: int):
    assert (keras_out(size, k, s, d, "same"), *keras_same_pads(size, k, s, d)) == (out, before, after)
    win = window(size, k, s, d, "same")
    assert (win.out, win.pad_before, win.pad_after) == (out, before, after)


@pytest.mark.parametrize(("size", "k", "s", "d", "p", "out"), EXPLICIT)
def test_explicit_padding_table(size: int, k: int, s: int, d: int, p: int, out: int) -> None:
    assert keras_out(size, k, s, d, p) == out
    assert window(size, k, s, d, p) == Window(out, p, p)


def test_effective_kernel() -> None:
    assert [effective_kernel(3, d) for d in (1, 2, 3)] == [3, 5, 7]


def test_window_formula_writes_the_received_values() -> None:
    assert window_formula(4, 7, 1, 1, "valid") == "out = floor((4-7)/1)+1 = -2"
    assert window_formula(8, 3, 1, 4, "valid") == "out = floor((8-((3-1)*4+1))/1)+1 = 0"
    assert window_formula(4, 7, 1, 1, 1) == "out = floor((4+2*1-7)/1)+1 = 0"
    assert window_formula(5, 2, 2, 1, "same") == "out = ceil(5/2) = 3"


def test_layout_helpers() -> None:
    assert hwc_to_chw((28, 27, 3)) == (3, 28, 27)
    assert hwc_to_chw((10,)) == (10,)
    assert numel((2, 3, 4)) == 24


# ---- the layers apply the arithmetic per axis --------------------------------------------------------


def conv(**kw) -> Conv2D:
    return Conv2D(type="Conv2D", filters=kw.pop("filters", 8), **kw)


LAYER_CASES = [  # (layer, input HWC, output HWC, padding applied 't,b,l,r')
    (conv(kernel_size=5, padding="same"), (28, 28, 1), (28, 28, 8), "2,2,2,2"),
    (conv(kernel_size=[3, 5], strides=[1, 2]), (10, 11, 3), (8, 4, 8), ""),  # h: 10-3+1, w: floor(6/2)+1
    (conv(kernel_size=2, strides=2, padding="same"), (5, 7, 1), (3, 4, 8), "0,1,0,1"),  # w: 3*2+2-7 = 1
    (conv(kernel_size=3, padding=[1, 0]), (6, 6, 1), (6, 4, 8), "1,1,0,0"),  # [ph, pw]
    (conv(kernel_size=3, padding=2, dilation_rate=2), (6, 6, 1), (6, 6, 8), "2,2,2,2"),
    (conv(kernel_size=3, strides=2, dilation_rate=2), (9, 9, 4), (3, 3, 8), ""),  # floor((9-5)/2)+1
    (conv(kernel_size=3, padding="same", strides=2, dilation_rate=2), (9, 9, 4), (5, 5, 8), "2,2,2,2"),
    (MaxPooling2D(type="MaxPooling2D"), (7, 7, 3), (3, 3, 3), ""),  # strides default to pool_size
    (MaxPooling2D(type="MaxPooling2D", pool_size=3, strides=1), (7, 7, 3), (5, 5, 3), ""),
    (AveragePooling2D(type="AveragePooling2D", padding="same"), (5, 5, 2), (3, 3, 2), "0,1,0,1"),
    (ZeroPadding2D(type="ZeroPadding2D", padding=[[1, 2], [0, 3]]), (4, 4, 1), (7, 7, 1), "1,2,0,3"),
    (ZeroPadding2D(type="ZeroPadding2D"), (4, 4, 1), (6, 6, 1), "1,1,1,1"),  # Keras's default (1, 1)
]


@pytest.mark.parametrize(("layer", "shape", "out", "pads"), LAYER_CASES)
def test_layer_output_shape_and_padding(layer, shape, out, pads) -> None:
    assert layer.output_shape(shape) == out
    assert layer.padding_applied(shape) == pads


# ---- normalization, masks and LayerScale: the shape is kept; parameters and masks per Keras --------------

SAME_SHAPE_CASES = [  # (layer, input, parameter shapes (PyTorch names), per-sample NCHW mask in training)
    (LayerNormalization(type="LayerNormalization"), (5, 4, 6), {"weight": (6,), "bias": (6,)}, None),  # gamma, beta [C]
    (LayerNormalization(type="LayerNormalization", center=False), (10,), {"weight": (10,)}, None),
    (GroupNormalization(type="GroupNormalization"), (3, 3, 64), {"weight": (64,), "bias": (64,)}, None),  # 32 | 64
    (GroupNormalization(type="GroupNormalization", groups=-1, scale=False), (2, 2, 5), {"bias": (5,)}, None),
    (GroupNormalization(type="GroupNormalization", groups=3), (12,), {"weight": (12,), "bias": (12,)}, None),
    (LayerScale(type="LayerScale", init_values=1e-6, projection_dim=96), (7, 7, 96), {"weight": (96,)}, None),
    (Dropout(type="Dropout", rate=0.5), (4, 5, 3), {}, (3, 4, 5)),  # HWC -> CHW, every value
    (Dropout(type="Dropout", rate=0.5, noise_shape=[None, 1, 1, 1]), (4, 5, 3), {}, (1, 1, 1)),  # per sample
    (Dropout(type="Dropout", rate=0.5, noise_shape=[None, 1, 1, None]), (4, 5, 3), {}, (3, 1, 1)),  # per channel
    (Dropout(type="Dropout", rate=0.5, noise_shape=[None, 4, 1, 3]), (4, 5, 3), {}, (3, 4, 1)),  # sizes as written
    (Dropout(type="Dropout", rate=0.5, noise_shape=[None, 1]), (10,), {}, (1,)),
    (SpatialDropout2D(type="SpatialDropout2D", rate=0.2), (4, 5, 3), {}, (3, 1, 1)),  # Keras: (N, 1, 1, C)
    (StochasticDepth(type="StochasticDepth", drop_path_rate=0.1), (4, 5, 3), {}, (1, 1, 1)),  # Keras: (N, 1, 1, 1)
    (StochasticDepth(type="StochasticDepth", drop_path_rate=0.1), (10,), {}, (1,)),
]


@pytest.mark.parametrize(("layer", "shape", "params", "mask"), SAME_SHAPE_CASES)
def test_shape_keeping_layers(layer, shape, params, mask) -> None:
    assert layer.output_shape(shape) == shape
    assert layer.param_shapes(shape) == params
    if mask is not None:
        before = [{"type": "Flatten"}, {"type": "Dense", "units": 10}] if len(shape) == 1 else []
        after = [{"type": "Flatten"}, {"type": "Dense", "units": 2}]
        layers = [*before, layer.model_dump(mode="json", exclude_none=True), *after]
        spec = spec_from_data({"name": "m", "input": {"shape": [4, 5, 3]}, "layers": layers})
        from cnnspec.analysis import check
        from cnnspec.training.optimizers import Optimizer
        from cnnspec.training.program import build_train_step

        program = build_train_step(spec, check(spec), Optimizer())
        assert list(program.masks.values()) == [mask]


GN = GroupNormalization(type="GroupNormalization")
SHAPE_FAILURES = [  # (layer, input, field, words in the message)
    (GN, (4, 4, 48), "groups", "groups=32 must divide the input channels (48)"),
    (GroupNormalization(type="GroupNormalization", groups=5), (10, 10, 8), "groups", "8 / 5 is not whole"),
    (GroupNormalization(type="GroupNormalization", groups=4), (6,), "groups", "the input units (6)"),
    (LayerScale(type="LayerScale", init_values=0, projection_dim=8), (4, 4, 6), "projection_dim", "input channels (6)"),
    (Dropout(type="Dropout", rate=0.1, noise_shape=[1, 1, 1]), (4, 4, 6), "noise_shape", "has 3 entries"),
    (Dropout(type="Dropout", rate=0.1, noise_shape=[1, 1, 1, 1]), (4, 4, 6), "noise_shape", "batch entry must be null"),
    (Dropout(type="Dropout", rate=0.1, noise_shape=[None, 2, 1, 1]), (4, 4, 6), "noise_shape", "has size 4"),
    (SpatialDropout2D(type="SpatialDropout2D", rate=0.1), (16,), None, "needs an image input"),
]


@pytest.mark.parametrize(("layer", "shape", "field", "words"), SHAPE_FAILURES)
def test_shape_failures_name_the_field(layer, shape, field, words) -> None:
    with pytest.raises(ShapeError) as info:
        layer.output_shape(shape)
    assert info.value.field == field and words in info.value.message and info.value.hint


def test_group_normalization_hint_lists_the_divisors() -> None:
    with pytest.raises(ShapeError) as info:
        GroupNormalization(type="GroupNormalization").output_shape((4, 4, 48))
    assert "one of the divisors of 48 (1, 2, 3, 4, 6, 8, 12, 16, 24, 48)" in info.value.hint


def test_the_failing_axis_is_named() -> None:
    with pytest.raises(ShapeError) as info:
        conv(kernel_size=[1, 5]).output_shape((8, 4, 1))
    assert info.value.field == "kernel_size"
    assert "output width would be out = floor((4-5)/1)+1 = 0" in info.value.message


# ---- UpSampling2D, Cropping2D, Reshape, PReLU, Softmax (Keras's compute_output_shape) --------------------
# UpSampling2D: (H·size_h, W·size_w, C); Cropping2D: (H - top - bottom, W - left - right, C), an error when
# nothing is left; Reshape: target_shape with its one -1 = (number of values) / (product of the others).

RESHAPE_CASES = [  # (layer, input, output)
    (UpSampling2D(type="UpSampling2D"), (3, 5, 2), (6, 10, 2)),  # Keras's default size 2
    (UpSampling2D(type="UpSampling2D", size=[1, 3], interpolation="bilinear"), (3, 5, 2), (3, 15, 2)),
    (UpSampling2D(type="UpSampling2D", size=4), (1, 1, 7), (4, 4, 7)),
    (Cropping2D(type="Cropping2D"), (4, 4, 1), (4, 4, 1)),  # Keras's default ((0, 0), (0, 0))
    (Cropping2D(type="Cropping2D", cropping=1), (4, 5, 3), (2, 3, 3)),  # 4-1-1, 5-1-1
    (Cropping2D(type="Cropping2D", cropping=[2, 0]), (5, 5, 1), (1, 5, 1)),  # symmetric (h, w)
    (Cropping2D(type="Cropping2D", cropping=[[0, 3], [1, 2]]), (4, 5, 1), (1, 2, 1)),  # 4-0-3, 5-1-2
    (Reshape(type="Reshape", target_shape=[1, 1, 32]), (32,), (1, 1, 32)),  # EfficientNet's SE gate
    (Reshape(type="Reshape", target_shape=[-1]), (1, 1, 32), (32,)),
    (Reshape(type="Reshape", target_shape=[-1, 4, 2]), (4, 4, 3), (6, 4, 2)),  # 48 / (4·2)
    (Reshape(type="Reshape", target_shape=[2, -1, 3]), (4, 4, 3), (2, 8, 3)),
    (PReLU(type="PReLU", shared_axes=[1, 2]), (4, 4, 3), (4, 4, 3)),
    (Softmax(type="Softmax", axis=1), (4, 4, 3), (4, 4, 3)),
]


@pytest.mark.parametrize(("layer", "shape", "out"), RESHAPE_CASES)
def test_reshaping_output_shapes(layer, shape, out) -> None:
    assert layer.output_shape(shape) == out


def _crop(c) -> Cropping2D:
    return Cropping2D(type="Cropping2D", cropping=c)


def _reshape(target) -> Reshape:
    return Reshape(type="Reshape", target_shape=target)


@pytest.mark.parametrize(
    ("layer", "shape", "field", "message"),
    [
        (_crop([[2, 2], [0, 0]]), (4, 4, 1), "cropping", "output height would be 4-2-2 = 0"),
        (_crop([[0, 0], [3, 4]]), (4, 6, 1), "cropping", "output width would be 6-3-4 = -1"),
        (_reshape([5, 5, 1]), (4, 4, 1), "target_shape", "holds 5*5*1 = 25 values but the input 4x4x1 holds 16"),
        (_reshape([-1, 5]), (4, 4, 1), "target_shape", "has 2 dimensions"),
        (_reshape([-1, 3, 3]), (4, 4, 1), "target_shape", "16 is not a multiple of 9"),
        (_reshape([2, 2, 2, 2]), (16,), "target_shape", "has 4 dimensions"),
        (PReLU(type="PReLU", shared_axes=[2]), (16,), "shared_axes", "names axis 2"),
        (Softmax(type="Softmax", axis=2), (16,), "axis", "axis 2 is not an axis of the flat input"),
        (UpSampling2D(type="UpSampling2D"), (16,), None, "needs an image input"),
    ],
)
def test_reshaping_shape_errors(layer, shape, field, message) -> None:
    with pytest.raises(ShapeError) as info:
        layer.output_shape(shape)
    assert info.value.field == field
    assert message in info.value.message


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 8), st.integers(0, 40), st.integers(0, 40))
def test_cropping_matches_keras(h: int, w: int, c: int, top: int, left: int) -> None:
    layer = Cropping2D(type="Cropping2D", cropping=[[top, 1], [left, 0]])
    if h - top - 1 >= 1 and w - left >= 1:
        assert layer.output_shape((h, w, c)) == (h - top - 1, w - left, c)
    else:
        with pytest.raises(ShapeError):
            layer.output_shape((h, w, c))


# ---- properties: cnnspec.shapes.window == the formulas above, for any arguments --------------------

sizes, kernels, strides, dilations = st.integers(1, 300), st.integers(1, 15), st.integers(1, 6), st.integers(1, 5)
paddings = st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 10))


@settings(max_examples=400, derandomize=True, deadline=None)
@given(sizes, kernels, strides, dilations, paddings)
def test_window_matches_keras_formulas(size: int, k: int, s: int, d: int, padding) -> None:
    win = window(size, k, s, d, padding)
    assert win.out == keras_out(size, k, s, d, padding)
    if padding == "same":
        assert (win.pad_before, win.pad_after) == keras_same_pads(size, k, s, d)
    elif padding == "valid":
        assert (win.pad_before, win.pad_after) == (0, 0)
    else:
        assert (win.pad_before, win.pad_after) == (padding, padding)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(sizes, kernels, strides, dilations)
def test_same_padding_is_minimal_and_gives_ceil(size: int, k: int, s: int, d: int) -> None:
    win = window(size, k, s, d, "same")
    extent = (k - 1) * d + 1
    padded = size + win.pad_before + win.pad_after
    assert (padded - extent) // s + 1 == win.out == -(-size // s)  # the pads reproduce the output size
    assert 0 <= win.pad_after - win.pad_before <= 1  # the odd pixel is after
    if win.pad_before + win.pad_after > 0:  # one pixel less padding would lose an output
        assert (padded - 1 - extent) // s + 1 < win.out


@settings(max_examples=300, derandomize=True, deadline=None)
@given(sizes, kernels, strides, dilations)
def test_valid_output_windows_stay_inside_the_input(size: int, k: int, s: int, d: int) -> None:
    out = window(size, k, s, d, "valid").out
    extent = (k - 1) * d + 1
    if out >= 1:  # the last window ends inside; one more would not
        assert (out - 1) * s + extent <= size < out * s + extent
    else:
        assert extent > size


# ---- receptive field: rf += (k-1)*d*jump, jump *= s ------------------------------------------------


def rf_of(shape: list[int], layers: list[dict]) -> list[tuple[int, int]]:
    spec = spec_from_data({"name": "rf", "input": {"shape": shape}, "layers": [*layers, {"type": "Flatten"}]})
    return [r.receptive_field for r in analyze(spec).layers[:-1]]


def c(k, **kw) -> dict:
    return {"type": "Conv2D", "filters": 2, "kernel_size": k, **kw}


RF_CASES = [
    ([c(3), c(3)], [3, 5]),  # two 3x3 convs see 5x5 (VGG's argument)
    ([c(3), c(3), c(3)], [3, 5, 7]),
    ([c(3, dilation_rate=2), c(3)], [5, 7]),  # dilation 2 widens 3 to 5
    ([c(3, strides=2), c(3)], [3, 7]),  # after a stride of 2 each step covers 2 pixels: 3 + 2*2
    ([c(3, strides=2, dilation_rate=2), c(3)], [5, 9]),  # 1 + 2*2 = 5; jump 2: 5 + 2*2 = 9
    ([{"type": "MaxPooling2D"}, c(3)], [2, 6]),  # 2; jump 2: 2 + 2*2
    ([c([1, 3])], [(1, 3)]),
    ([c(5, padding="same"), {"type": "ZeroPadding2D"}, c(5)], [5, 5, 9]),  # padding keeps the field
]


@pytest.mark.parametrize(("layers", "expected"), RF_CASES)
def test_receptive_field_worked_cases(layers: list[dict], expected: list) -> None:
    expected = [e if isinstance(e, tuple) else (e, e) for e in expected]
    assert rf_of([32, 32, 1], layers) == expected


def test_receptive_field_of_the_seed_network(specs_dir) -> None:
    from cnnspec.spec import load_spec

    rfs = [r.receptive_field[0] for r in analyze(load_spec(specs_dir / "seed.yaml")).layers]
    # conv5: 5; pool2: 5+1 = 6, jump 2; conv5: 6+4*2 = 14; 22; 30; pool2: 30+1*2 = 32, jump 4; then flat.
    assert rfs == [5, 6, 14, 22, 30, 32, 32, 32, 32, 32]


@pytest.mark.parametrize(
    ("shared_axes", "shape", "weight"),
    [  # Keras's alpha shape (input shape, shared axes set to 1) in NCHW order
        (None, (4, 5, 3), (3, 4, 5)),  # Keras's default: one slope per value
        ([1, 2], (4, 5, 3), (3, 1, 1)),  # one per channel (PyTorch's per-channel PReLU, as [C, 1, 1])
        ([1], (4, 5, 3), (3, 1, 5)),
        ([3], (4, 5, 3), (1, 4, 5)),
        (None, (16,), (16,)),
        ([1], (16,), (1,)),
    ],
)
def test_prelu_weight_shape(shared_axes, shape, weight) -> None:
    layer = PReLU(type="PReLU", shared_axes=shared_axes)
    assert layer.param_shapes(shape) == {"weight": weight}


def test_prelu_initializer_uses_keras_fans() -> None:
    import numpy as np

    # alpha (1, 1, 64) in Keras: compute_fans -> receptive field 1, fan_in 1, fan_out 64; he_uniform's limit
    # sqrt(6 / fan_in) = 2.449 (a PyTorch-style fan_in of 64 would give 0.306)
    layer = PReLU(type="PReLU", shared_axes=[1, 2], alpha_initializer="he_uniform")
    alpha = layer.init_params((8, 8, 64), np.random.default_rng(0))["weight"]
    assert alpha.shape == (64, 1, 1) and np.abs(alpha).max() > 1.0 and np.abs(alpha).max() <= np.sqrt(6.0)
    assert not PReLU(type="PReLU").init_params((2, 2, 3), np.random.default_rng(0))["weight"].any()  # zeros


# ---- DepthwiseConv2D, SeparableConv2D, Conv2DTranspose ----------------------------------------------
# Conv2DTranspose (keras/src/utils/conv_utils... ops/operation_utils.compute_conv_transpose_output_shape ->
# deconv_output_length), with K = (k-1)*d + 1:
#   output_padding None: valid: in*s + max(K - s, 0); same: in*s
#   output_padding p:    (in-1)*s + K - 2*pad + p, pad = K//2 for same, 0 for valid


def keras_deconv_out(size: int, k: int, s: int, d: int, padding: str, output_padding: int | None) -> int:
    extent = (k - 1) * d + 1
    if output_padding is None:
        return size * s + max(extent - s, 0) if padding == "valid" else size * s
    pad = extent // 2 if padding == "same" else 0
    return (size - 1) * s + extent - 2 * pad + output_padding


def variant(kind: str, **kw):
    from cnnspec.layers import LAYERS_BY_TYPE

    return LAYERS_BY_TYPE[kind](type=kind, **kw)


VARIANT_CASES = [  # (layer, input HWC, output HWC, padding applied 't,b,l,r', parameter count)
    (variant("DepthwiseConv2D", kernel_size=3), (8, 8, 4), (6, 6, 4), "", 9 * 4 + 4),
    (variant("DepthwiseConv2D", kernel_size=3, strides=2, padding="same", depth_multiplier=2), (7, 8, 3),
     (4, 4, 6), "1,1,0,1", 9 * 3 * 2 + 6),  # h: 3*2+3-7 = 2 -> 1,1; w: 3*2+3-8 = 1 -> 0,1
    (variant("DepthwiseConv2D", kernel_size=[3, 1], use_bias=False), (5, 5, 2), (3, 5, 2), "", 3 * 2),
    # Keras: kh*kw*C*m + C*m*filters + filters
    (variant("SeparableConv2D", filters=16, kernel_size=3, padding="same"), (10, 10, 8), (10, 10, 16), "1,1,1,1",
     9 * 8 + 8 * 16 + 16),
    (variant("SeparableConv2D", filters=5, kernel_size=3, strides=2, depth_multiplier=3, use_bias=False), (9, 9, 2),
     (4, 4, 5), "", 9 * 2 * 3 + 6 * 5),
    # ONNX pads crop the full (in-1)*s + K: 'same' s2 k3 on 4: full 9, out 8 -> crop 0 top, 1 bottom
    (variant("Conv2DTranspose", filters=3, kernel_size=3, strides=2, padding="same"), (4, 5, 2), (8, 10, 3), "0,1,0,1",
     2 * 3 * 9 + 3),
    (variant("Conv2DTranspose", filters=3, kernel_size=3, strides=2), (4, 4, 2), (9, 9, 3), "", 2 * 3 * 9 + 3),
    (variant("Conv2DTranspose", filters=1, kernel_size=4, strides=2, padding="same"), (4, 4, 1), (8, 8, 1), "1,1,1,1",
     17),  # full 10, crop 1 each side
    (variant("Conv2DTranspose", filters=1, kernel_size=2, strides=3), (3, 3, 1), (9, 9, 1), "", 5),  # 3*3+max(-1,0)
    (variant("Conv2DTranspose", filters=1, kernel_size=3, strides=2, padding="same", output_padding=0), (4, 4, 1),
     (7, 7, 1), "1,1,1,1", 10),  # (4-1)*2+3-2+0
]  # fmt: skip


@pytest.mark.parametrize(("layer", "shape", "out", "pads", "count"), VARIANT_CASES)
def test_conv_variant_shapes_padding_and_parameter_counts(layer, shape, out, pads, count) -> None:
    assert layer.output_shape(shape) == out
    assert layer.padding_applied(shape) == pads
    assert sum(numel(s) for s in layer.param_shapes(shape).values()) == count


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.integers(1, 60), st.integers(1, 9), st.integers(1, 5), st.integers(1, 3), st.sampled_from(["valid", "same"]),
       st.one_of(st.none(), st.integers(0, 4)))  # fmt: skip
def test_conv_transpose_matches_keras_deconv_output_length(size, k, s, d, padding, output_padding) -> None:
    layer = variant("Conv2DTranspose", filters=2, kernel_size=k, strides=s, dilation_rate=d, padding=padding,
                    output_padding=output_padding)  # fmt: skip
    expected = keras_deconv_out(size, k, s, d, padding, output_padding)
    if output_padding is not None and output_padding >= s:
        with pytest.raises(ShapeError) as info:
            layer.output_shape((size, size, 1))
        assert info.value.field == "output_padding"
    elif expected < 1:
        with pytest.raises(ShapeError) as info:
            layer.output_shape((size, size, 1))
        assert info.value.field == "kernel_size"
    else:
        assert layer.output_shape((size, size, 1)) == (expected, expected, 2)
        top, left, bottom, right = layer.pads((size, size, 1))
        extra = layer.onnx_output_padding((size, size, 1))
        extent = (k - 1) * d + 1
        # ONNX ConvTranspose: out = s*(in-1) + output_padding + K - begin - end, pads ≥ 0, output_padding < s
        assert s * (size - 1) + extra[0] + extent - top - bottom == expected
        assert min(top, bottom, left, right) >= 0 and 0 <= extra[0] < s
