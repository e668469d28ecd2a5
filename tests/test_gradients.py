"""Every backward rule against central finite differences of the forward, in float64.

Each case is a small network around the layer under test: a first Conv2D (so that dL/dx of the
layer under test reaches a parameter), the layer, then a head. The float64 train-step graph (with
gradients as outputs) runs on onnx's reference evaluator; the directional derivative Σ grad·v along
a random direction v must equal (L(θ + hv) - L(θ - hv)) / 2h to 1e-6 of |grad|·|v|. The same graph in
float32 on onnxruntime must agree with the float64 gradients (ORT's MaxPool indices, ConvTranspose
pads and ScatterElements are what training really runs).
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops._op import OpRunUnaryNum
from onnx.reference.ops.op_conv_transpose import ConvTranspose as RefConvTranspose

from cnnspec.analysis import check
from cnnspec.compiler import initial_params
from cnnspec.spec import spec_from_data
from cnnspec.training.optimizers import Optimizer
from cnnspec.training.program import INPUT, LABELS, build_train_step

FIRST = {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "tanh"}
HEAD = [{"type": "Flatten"}, {"type": "Dense", "units": 3}]
GAP_HEAD = [{"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 3}]


class Erf(OpRunUnaryNum):
    """NOTE: onnx's reference Erf computes in float32 (np.vectorize(otypes="f")); this one keeps float64."""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class ConvTranspose(RefConvTranspose):
    """NOTE: onnx's reference ConvTranspose slices W wrongly when group > 1; run it per group."""

    def _run(self, X, W, B=None, group=None, **attrs):
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **attrs)
        xs, ws = np.split(X, group, axis=1), np.split(W, group, axis=0)
        parts = [super(ConvTranspose, self)._run(x, w, None, group=1, **attrs)[0] for x, w in zip(xs, ws, strict=True)]
        return (np.concatenate(parts, axis=1),)


class MaxPool(OpRun):
    """NOTE: onnx's reference MaxPool leaves out the n·C + c offset of flat indices for some windows
    (e.g. 2x3, stride 1); onnxruntime and the ONNX spec include it. A plain 2-D version here."""

    def _run(self, x, kernel_shape=None, strides=None, pads=None, **_):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (top, left, bottom, right) = kernel_shape, strides or (1, 1), pads or (0,) * 4
        ho, wo = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
        y, index = np.empty((n, c, ho, wo), x.dtype), np.empty((n, c, ho, wo), np.int64)
        plane = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * h * w
        for i in range(ho):
            for j in range(wo):
                h0, w0 = max(i * sh - top, 0), max(j * sw - left, 0)
                h1, w1 = min(i * sh - top + kh, h), min(j * sw - left + kw, w)
                window = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
                at = window.argmax(-1)
                y[:, :, i, j] = window.max(-1)
                index[:, :, i, j] = plane + (h0 + at // (w1 - w0)) * w + w0 + at % (w1 - w0)
        return (y, index)


def conv(**kw):
    return {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "tanh", **kw}


def dense_head(activation):
    return [{"type": "Flatten"}, {"type": "Dense", "units": 5, "activation": activation}, {"type": "Dense", "units": 3}]


CASES = {
    "conv-valid": [FIRST, conv(), *HEAD],
    "conv-same-stride2-odd": [FIRST, conv(strides=2, padding="same"), *HEAD],
    "conv-dilation2-stride2": [FIRST, conv(dilation_rate=2, strides=2), *HEAD],
    "conv-stride3-leftover": [FIRST, conv(kernel_size=[2, 3], strides=3), *HEAD],
    "conv-groups2-explicit-pads": [FIRST, conv(groups=2, padding=[1, 2], kernel_size=[3, 2]), *HEAD],
    "conv-depthwise-stride21": [FIRST, conv(groups=4, strides=[2, 1], padding="same", use_bias=False), *HEAD],
    "conv-2x5-same-stride2-swapped-conv": [FIRST, conv(kernel_size=[2, 5], strides=2, padding="same"), *HEAD],
    "conv-first-layer": [conv(padding="same", strides=2), *HEAD],
    "depthwise-valid": [FIRST, {"type": "DepthwiseConv2D", "kernel_size": 3, "activation": "tanh"}, *HEAD],
    "depthwise-same-stride2-multiplier2": [
        FIRST,
        {"type": "DepthwiseConv2D", "kernel_size": [3, 2], "strides": 2, "padding": "same", "depth_multiplier": 2},
        *HEAD,
    ],  # fmt: skip
    "depthwise-dilation2-no-bias": [
        FIRST,
        {"type": "DepthwiseConv2D", "kernel_size": 2, "dilation_rate": 2, "use_bias": False},
        *HEAD,
    ],  # fmt: skip
    "depthwise-first-layer": [{"type": "DepthwiseConv2D", "kernel_size": 3, "padding": "same"}, *HEAD],
    "separable-same": [
        FIRST,
        {"type": "SeparableConv2D", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"},
        *HEAD,
    ],  # fmt: skip
    "separable-stride2-multiplier2-no-bias": [
        FIRST,
        {
            "type": "SeparableConv2D",
            "filters": 5,
            "kernel_size": [2, 3],
            "strides": 2,
            "depth_multiplier": 2,
            "use_bias": False,
        },
        *HEAD,
    ],  # fmt: skip
    "separable-first-layer-softmax-last": [
        {"type": "SeparableConv2D", "filters": 3, "kernel_size": 7, "padding": "same"},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Activation", "activation": "softmax"},
    ],  # fmt: skip
    "transpose-valid": [
        FIRST,
        {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "activation": "tanh"},
        *HEAD,
    ],  # fmt: skip
    "transpose-same-stride2-odd": [
        FIRST,
        {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same"},
        *HEAD,
    ],  # fmt: skip
    "transpose-stride3-gaps": [
        FIRST,
        {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 2, "strides": 3, "use_bias": False},
        *HEAD,
    ],  # fmt: skip
    "transpose-output-padding": [
        FIRST,
        {
            "type": "Conv2DTranspose",
            "filters": 2,
            "kernel_size": [3, 2],
            "strides": [2, 3],
            "padding": "same",
            "output_padding": [1, 2],
        },
        *HEAD,
    ],  # fmt: skip
    "transpose-dilated-5x5": [
        FIRST,
        {"type": "Conv2DTranspose", "filters": 2, "kernel_size": [5, 3], "dilation_rate": 2, "padding": "same"},
        *HEAD,
    ],  # fmt: skip
    "transpose-first-layer": [
        {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 4, "strides": 2, "padding": "same"},
        *GAP_HEAD,
    ],  # fmt: skip
    "maxpool-valid": [FIRST, {"type": "MaxPooling2D"}, *HEAD],
    "maxpool-same-overlap": [FIRST, {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"}, *HEAD],
    "maxpool-stride1": [FIRST, {"type": "MaxPooling2D", "pool_size": [2, 3], "strides": 1}, *HEAD],
    "maxpool-tiled": [FIRST, {"type": "ZeroPadding2D", "padding": [[0, 1], [0, 0]]}, {"type": "MaxPooling2D"}, *HEAD],
    "maxpool-tiled-2x3": [
        FIRST,
        {"type": "ZeroPadding2D", "padding": [[0, 1], [0, 0]]},
        {"type": "MaxPooling2D", "pool_size": [2, 3]},
        *HEAD,
    ],
    "avgpool-valid": [FIRST, {"type": "AveragePooling2D"}, *HEAD],
    "avgpool-same-overlap": [
        FIRST,
        {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        *HEAD,
    ],
    "avgpool-rect-same": [
        FIRST,
        {"type": "AveragePooling2D", "pool_size": [2, 3], "strides": [1, 2], "padding": "same"},
        *HEAD,
    ],
    "global-average": [FIRST, {"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 3}],
    "global-max": [FIRST, {"type": "GlobalMaxPooling2D"}, {"type": "Dense", "units": 3}],
    "zero-padding": [FIRST, {"type": "ZeroPadding2D", "padding": [[1, 2], [0, 3]]}, conv(), *GAP_HEAD],
    "dropout": [FIRST, {"type": "Dropout", "rate": 0.4}, *HEAD],
    "batchnorm-image": [FIRST, {"type": "BatchNormalization", "momentum": 0.9}, *HEAD],
    "batchnorm-flat": [FIRST, {"type": "Flatten"}, {"type": "BatchNormalization"}, {"type": "Dense", "units": 3}],
    "batchnorm-no-scale-center": [FIRST, {"type": "BatchNormalization", "scale": False, "center": False}, *HEAD],
    # trainable: false (Keras's frozen layers): no gradients of their own; a frozen BatchNormalization runs in
    # inference mode (running statistics), so dL/dx passes through its fixed per-channel scale
    "batchnorm-frozen": [FIRST, {"type": "BatchNormalization", "momentum": 0.9, "trainable": False}, *HEAD],
    "batchnorm-flat-frozen": [
        FIRST,
        {"type": "Flatten"},
        {"type": "BatchNormalization", "trainable": False},
        {"type": "Dense", "units": 3},
    ],  # fmt: skip
    "conv-frozen-between": [FIRST, conv(trainable=False), *HEAD],
    "layernorm-image": [FIRST, {"type": "LayerNormalization"}, *HEAD],
    "layernorm-flat": [
        FIRST,
        {"type": "Flatten"},
        {"type": "LayerNormalization", "epsilon": 0.1},
        {"type": "Dense", "units": 3},
    ],
    "layernorm-no-scale-center": [FIRST, {"type": "LayerNormalization", "scale": False, "center": False}, *HEAD],
    "groupnorm-2": [FIRST, {"type": "GroupNormalization", "groups": 2}, *HEAD],
    "groupnorm-instance-no-scale": [FIRST, {"type": "GroupNormalization", "groups": -1, "scale": False}, *HEAD],
    "groupnorm-flat": [
        FIRST,
        {"type": "Flatten"},
        {"type": "GroupNormalization", "groups": 4},
        {"type": "Dense", "units": 3},
    ],
    "layerscale-image": [FIRST, {"type": "LayerScale", "init_values": 0.5, "projection_dim": 4}, *HEAD],
    "layerscale-flat": [FIRST, *HEAD[:1], {"type": "LayerScale", "init_values": 0.1, "projection_dim": 168}, HEAD[1]],
    "spatial-dropout": [FIRST, {"type": "SpatialDropout2D", "rate": 0.4}, *HEAD],
    "dropout-noise-shape-per-sample": [FIRST, {"type": "Dropout", "rate": 0.4, "noise_shape": [None, 1, 1, 1]}, *HEAD],
    "dropout-noise-shape-rows": [FIRST, {"type": "Dropout", "rate": 0.3, "noise_shape": [None, None, 1, None]}, *HEAD],
    "stochastic-depth-residual": [
        FIRST | {"name": "a"},
        conv(name="b", padding="same"),
        {"type": "LayerScale", "init_values": 0.3, "projection_dim": 4},
        {"type": "StochasticDepth", "drop_path_rate": 0.5, "name": "sd"},
        {"type": "Add", "inputs": ["a", "sd"]},
        *HEAD,
    ],
    "activation-layer-softmax": [FIRST, {"type": "Activation", "activation": "softmax"}, *HEAD],
    "softmax-last-fused": [FIRST, {"type": "Flatten"}, {"type": "Dense", "units": 3, "activation": "softmax"}],
    "softmax-activation-last": [FIRST, *HEAD, {"type": "Activation", "activation": "softmax"}],
}
CASES |= {  # reshaping layers and the activation layers (issue 12)
    "upsampling-nearest": [FIRST, {"type": "UpSampling2D", "size": [2, 3]}, *HEAD],
    "upsampling-bilinear": [FIRST, {"type": "UpSampling2D", "size": [3, 2], "interpolation": "bilinear"}, *HEAD],
    "upsampling-bilinear-2": [FIRST, {"type": "UpSampling2D", "interpolation": "bilinear"}, conv(strides=2), *HEAD],
    "cropping": [FIRST, {"type": "Cropping2D", "cropping": [[1, 2], [0, 3]]}, *HEAD],
    "cropping-symmetric": [FIRST, {"type": "Cropping2D", "cropping": [2, 1]}, conv(kernel_size=2), *HEAD],
    "reshape-keeps-channels": [FIRST, {"type": "Reshape", "target_shape": [14, 3, 4]}, conv(), *HEAD],
    "reshape-changes-channels": [FIRST, {"type": "Reshape", "target_shape": [7, 12, 2]}, conv(), *HEAD],
    "reshape-image-to-flat-hwc": [FIRST, {"type": "Reshape", "target_shape": [-1]}, {"type": "Dense", "units": 3}],
    "reshape-flat-to-image": [
        FIRST,
        *dense_head("tanh")[:2],
        {"type": "Reshape", "target_shape": [1, 5, 1]},
        conv(kernel_size=[1, 2]),
        *HEAD,
    ],  # fmt: skip
    "reshape-gate": [
        FIRST,
        {"type": "GlobalAveragePooling2D"},
        {"type": "Reshape", "target_shape": [1, 1, 4]},
        {"type": "Conv2D", "filters": 3, "kernel_size": 1},
        {"type": "Reshape", "target_shape": [3]},
    ],  # fmt: skip
    "identity": [FIRST, {"type": "Identity"}, *HEAD],
    "rescaling": [FIRST, {"type": "Rescaling", "scale": -1.5, "offset": 0.3}, *HEAD],
    "relu-layer": [FIRST, {"type": "ReLU"}, *HEAD],
    "relu-layer-leaky": [FIRST, {"type": "ReLU", "negative_slope": 0.15}, *HEAD],
    "relu-layer-max6": [FIRST, {"type": "Rescaling", "scale": 8.0}, {"type": "ReLU", "max_value": 6}, *HEAD],
    "relu-layer-all": [FIRST, {"type": "ReLU", "max_value": 0.5, "negative_slope": 0.2, "threshold": 0.1}, *HEAD],
    "relu-layer-threshold": [FIRST, {"type": "ReLU", "threshold": 0.2}, *HEAD],
    "leaky-relu-layer": [FIRST, {"type": "LeakyReLU"}, *HEAD],
    "prelu-per-value": [FIRST, {"type": "PReLU"}, *HEAD],
    "prelu-per-channel": [FIRST, {"type": "PReLU", "shared_axes": [1, 2]}, *HEAD],
    "prelu-shared-width": [FIRST, {"type": "PReLU", "shared_axes": 2, "alpha_initializer": "ones"}, *HEAD],
    "prelu-flat-shared": [
        FIRST,
        {"type": "Flatten"},
        {"type": "PReLU", "shared_axes": [1]},
        {"type": "Dense", "units": 3},
    ],
    "elu-layer": [FIRST, {"type": "ELU", "alpha": 0.7}, *HEAD],
    "elu-layer-negative-alpha": [FIRST, {"type": "ELU", "alpha": -0.5}, *HEAD],
    "softmax-layer-channels": [FIRST, {"type": "Softmax"}, *HEAD],
    "softmax-layer-height": [FIRST, {"type": "Softmax", "axis": 1}, *HEAD],
    "softmax-layer-width": [FIRST, {"type": "Softmax", "axis": -2}, *HEAD],
    "softmax-layer-flat-middle": [FIRST, *dense_head(None)[:2], {"type": "Softmax"}, {"type": "Dense", "units": 3}],
    "softmax-last-layer-fused": [FIRST, *HEAD, {"type": "Softmax"}],
}
NEW_ACTIVATIONS = ["relu6", "hard_sigmoid", "hard_silu", "hard_swish", "mish", "softplus", "softsign", "selu",
                   "exponential"]  # fmt: skip
for act in ["relu", "tanh", "sigmoid", "softmax", "linear", "leaky_relu", "elu", "gelu", "silu", *NEW_ACTIVATIONS]:
    CASES[f"dense-{act}"] = [FIRST, *dense_head(act)]
    CASES[f"conv-{act}"] = [FIRST, conv(activation=act, padding="same"), *HEAD]


CONV_KINDS = ("conv", "depthwise", "separable", "transpose")


def make_case(name: str, smoothing: float = 0.0, preprocess=None):
    data = {"name": name, "input": {"shape": [7, 6, 2]}, "layers": CASES[name]}
    if preprocess:
        data["preprocess"] = preprocess
    spec = spec_from_data(data)
    return spec, check(spec)


def feeds_for(program, params, rng, batch=3):
    c, h, w = 2, 7, 6
    feeds = {k: v.astype(np.float64) for k, v in params.items()}
    feeds[INPUT] = rng.normal(size=(batch, c, h, w))
    feeds[LABELS] = rng.integers(0, 3, batch).astype(np.int64)
    for mask, shape in program.masks.items():
        rate = program.rates[mask]
        feeds[mask] = (rng.uniform(size=(batch, *shape)) >= rate) / (1 - rate)
    return feeds


def perturbed_params(spec, report, rng):
    # Nonzero biases, non-unit BN scales and running stats: no gradient hides behind a special value.
    params = initial_params(spec, report, seed=1)
    return {k: v + 0.3 * rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}


def run_ref(session, feeds):
    names = [o.name for o in session.proto_.graph.output] if hasattr(session, "proto_") else None
    out = session.run(None, feeds)
    return dict(zip(names, out, strict=True)) if names else out


@pytest.mark.parametrize("name", sorted(c for c in CASES if c.startswith(CONV_KINDS)))
def test_backward_without_im2col_matches_finite_differences(name, monkeypatch):
    """The same checks with the training forward as a Conv (the path for large outputs): dW by one GEMM
    per kernel offset (kernels up to 3x3) or by the batch-as-channels Conv (larger kernels, groups)."""
    import cnnspec.layers.conv as conv

    monkeypatch.setattr(conv, "IM2COL_MAX_PIXELS", 0)
    test_backward_matches_finite_differences(name)


@pytest.mark.parametrize("name", sorted(c for c in CASES if c.startswith(CONV_KINDS)))
def test_serial_backward_matches_finite_differences(name):
    """The same checks for the formulations of serial programs (one intra-op thread: the runners'
    shards), e.g. an im2col layer's dL/dx as ONE ScatterND(add) instead of Col2Im or ConvTranspose."""
    test_backward_matches_finite_differences(name, serial=True)
    spec, report = make_case(name)
    program = build_train_step(spec, report, Optimizer(), gradients_only=True, serial=True)
    scatters = any(node.op_type == "ScatterND" for node in program.model.graph.node)
    # An im2col Conv2D whose dL/dx is needed scatters; grouped/depthwise and transposed convolutions do not
    # (a SeparableConv2D's 1x1 pointwise part always needs dL/dx: its depthwise part lies below).
    no_scatter = ("groups", "depthwise", "transpose")
    assert scatters == (name != "conv-first-layer" and not any(w in name for w in no_scatter))


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_matches_finite_differences(name, serial=False):
    rng = np.random.default_rng(sum(map(ord, name)))
    smoothing = 0.1 if "softmax-last" in name else 0.0
    preprocess = {"scale": 0.5, "mean": [0.1, -0.2], "std": [2.0, 0.5]} if name == "conv-valid" else None
    spec, report = make_case(name, smoothing, preprocess)
    program = build_train_step(
        spec, report, Optimizer(), smoothing, gradients_only=True, dtype=np.float64, serial=serial
    )
    ref = ReferenceEvaluator(program.model, new_ops=[Erf, ConvTranspose, MaxPool])
    outputs = [o.name for o in program.model.graph.output]
    feeds = feeds_for(program, perturbed_params(spec, report, rng), rng)

    def loss(shift: dict[str, np.ndarray], h: float) -> float:
        return float(ref.run(["loss"], feeds | {k: feeds[k] + h * v for k, v in shift.items()})[0])

    got = dict(zip(outputs, ref.run(None, feeds), strict=True))
    grads = {k[len("grad.") :]: v for k, v in got.items() if k.startswith("grad.")}
    assert set(grads) == set(program.trainable) and grads
    for _ in range(2):
        v = {k: rng.normal(size=g.shape) for k, g in grads.items()}
        analytic = sum(float(np.sum(grads[k] * v[k])) for k in grads)
        h = 1e-5
        numeric = (loss(v, h) - loss(v, -h)) / (2 * h)
        scale = np.sqrt(sum(np.sum(g**2) for g in grads.values())) * np.sqrt(sum(np.sum(d**2) for d in v.values()))
        assert abs(analytic - numeric) <= 1e-6 * scale, (name, analytic, numeric, scale)
    check_onnxruntime_agrees(program, spec, report, feeds, got, serial)


def check_onnxruntime_agrees(program64, spec, report, feeds, expected, serial=False):
    smoothing = 0.1 if "softmax-last" in spec.name else 0.0
    program = build_train_step(spec, report, Optimizer(), smoothing, gradients_only=True, serial=serial)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if serial else 0
    session = ort.InferenceSession(program.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    f32 = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in feeds.items()}
    names = [o.name for o in session.get_outputs()]
    for name, value in zip(names, session.run(None, f32), strict=True):
        want = expected[name]
        tol = 2e-4 * (np.abs(want).max() + 1e-3)
        np.testing.assert_allclose(value, want, atol=tol, rtol=1e-3, err_msg=name)


def test_missing_backward_rule_fails_loudly(monkeypatch):
    from cnnspec.layers import Flatten

    spec, report = make_case("dense-relu")
    monkeypatch.delattr(Flatten, "backward")
    with pytest.raises(NotImplementedError, match="no backward rule for Flatten"):
        build_train_step(spec, report, Optimizer())


def test_max_pool_ties_are_not_double_counted():
    spec = spec_from_data(
        {
            "name": "ties",
            "input": {"shape": [4, 4, 1]},
            "layers": [
                {"type": "Conv2D", "filters": 1, "kernel_size": 1, "use_bias": False},
                {"type": "MaxPooling2D"},
                {"type": "Flatten"},
                {"type": "Dense", "units": 2},
            ],
        }
    )
    report = check(spec)
    program = build_train_step(spec, report, Optimizer(), gradients_only=True, dtype=np.float64)
    params = {k: v.astype(np.float64) for k, v in initial_params(spec, report).items()}
    params["conv2d.weight"][:] = 1.0
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0, 0] = 2.0  # one window with a single maximum, three windows of four ties
    got = ReferenceEvaluator(program.model, new_ops=[MaxPool]).run(None, params | {INPUT: x, LABELS: np.array([1])})
    grads = dict(zip([o.name for o in program.model.graph.output], got, strict=True))
    # dL/dW = Σ dx·x over the input: each tied window passes its dy once (to one pixel of value 1),
    # the first passes dy to its pixel of value 2: Σ = 2 dy0 + dy1 + dy2 + dy3 (dy = dL/d(pooled)).
    dense_w = params["dense.weight"]
    dlogits = _softmax(np.array([[2.0, 1.0, 1.0, 1.0]]) @ dense_w.T) - np.eye(2)[[1]]
    dy = (dlogits @ dense_w)[0]
    np.testing.assert_allclose(grads["grad.conv2d.weight"].ravel(), [2 * dy[0] + dy[1] + dy[2] + dy[3]], rtol=1e-12)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
