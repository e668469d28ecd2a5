"""A plain-numpy forward pass of every layer kind, written from the layers' definitions (Keras semantics).

Independent of the emitted ONNX graph and of cnnspec's own shape arithmetic: the padding, window and
output sizes are recomputed here from their definitions, in float64. Tensors are NCHW (the model's
layout) or [N, units] once flat. The entry point is `forward(spec, params, x)` on a *normalized* spec
dict (every default filled in and every layer named: `cnnspec.spec.normalized(spec)`).

Graphs: a layer with `inputs` (a name or a list of names) reads those tensors, `input` being the model
input (after `preprocess`, the graph's first computation); a layer without it reads the previous layer's
output. The merge layers follow Keras (keras/src/layers/merging): Add, Subtract (x0 - x1), Multiply,
Average (the sum over n), Maximum, Minimum broadcast like numpy over dims that are equal or 1 (a Keras
(1, 1, C) map is [N, C, 1, 1] here, so the rule carries over axis by axis); Concatenate joins along its
Keras axis, which counts the batch: on (N, H, W, C) -1/3 is C, -2/2 is W, -3/1 is H, i.e. NCHW axis
1, 3, 2; on flat (N, units) -1/1 is the units axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Pads = tuple[int, int, int, int]
"""(top, bottom, left, right)."""

_erf = np.vectorize(math.erf, otypes=[np.float64])


# ---- padding -------------------------------------------------------------------------------------


def same_pads_1d(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'SAME': out = ceil(size / stride) and the total pad needed to reach it.

    Keras puts the odd pixel at the end (bottom/right): before = total // 2.
    """
    out = -(-size // stride)
    extent = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def conv_pads(padding: Any, hw: tuple[int, int], kernel, strides, dilation) -> Pads:
    """'valid' -> no padding; 'same' -> Keras's split; p or [ph, pw] -> symmetric explicit padding."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        top, bottom = same_pads_1d(hw[0], kernel[0], strides[0], dilation[0])
        left, right = same_pads_1d(hw[1], kernel[1], strides[1], dilation[1])
        return (top, bottom, left, right)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (ph, ph, pw, pw)


def pad_nchw(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    top, bottom, left, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def windows(x: np.ndarray, kernel, strides, dilation):
    """Yield (u, v, view) for each kernel tap: view[n, c, i, j] = x[n, c, i*sh + u*dh, j*sw + v*dw].

    x is already padded; the output size is the number of whole windows that fit.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    oh = (x.shape[2] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (x.shape[3] - ((kw - 1) * dw + 1)) // sw + 1
    assert oh >= 1 and ow >= 1, "window larger than the padded input"
    for u in range(kh):
        for v in range(kw):
            rows = slice(u * dh, u * dh + (oh - 1) * sh + 1, sh)
            cols = slice(v * dw, v * dw + (ow - 1) * sw + 1, sw)
            yield u, v, x[:, :, rows, cols]


# ---- layers --------------------------------------------------------------------------------------


def conv2d(x, weight, bias, strides=(1, 1), dilation=(1, 1), pads: Pads = (0, 0, 0, 0), groups: int = 1):
    """y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * xpad[n, g(o)*Cg + c, i*sh + u*dh, j*sw + v*dw]."""
    x = pad_nchw(np.asarray(x, np.float64), pads)
    weight = np.asarray(weight, np.float64)
    out_ch, cg, kh, kw = weight.shape
    og = out_ch // groups  # output channels per group
    y = None
    for u, v, view in windows(x, (kh, kw), strides, dilation):
        parts = [
            np.einsum("nchw,oc->nohw", view[:, g * cg : (g + 1) * cg], weight[g * og : (g + 1) * og, :, u, v])
            for g in range(groups)
        ]
        tap = np.concatenate(parts, axis=1)
        y = tap if y is None else y + tap
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :, None, None]
    return y


def depthwise_conv2d(x, weight, bias, strides, dilation, pads: Pads):
    """Keras's depthwise kernel K (kh, kw, C, m): y[n, c*m + j] = b + sum_{u,v} K[u, v, c, j] * xpad[n, c, ...].
    cnnspec stores it as [C*m, 1, kh, kw], i.e. K[u, v, c, j] = weight[c*m + j, 0, u, v]."""
    x = pad_nchw(np.asarray(x, np.float64), pads)
    c = x.shape[1]
    kernel = np.asarray(weight, np.float64).reshape(c, -1, *weight.shape[2:]).transpose(2, 3, 0, 1)  # (kh, kw, C, m)
    y = 0.0
    for u, v, view in windows(x, kernel.shape[:2], strides, dilation):
        y = y + np.einsum("nchw,cm->ncmhw", view, kernel[u, v]).reshape(view.shape[0], -1, *view.shape[2:])
    return y if bias is None else y + np.asarray(bias, np.float64)[None, :, None, None]


def deconv_output_length(size: int, kernel: int, padding: str, output_padding, stride: int, dilation: int) -> int:
    """Keras's conv_utils.deconv_output_length (the output size of Conv2DTranspose)."""
    kernel = kernel + (kernel - 1) * (dilation - 1)
    if output_padding is None:
        return size * stride + max(kernel - stride, 0) if padding == "valid" else size * stride
    pad = kernel // 2 if padding == "same" else 0
    return (size - 1) * stride + kernel - 2 * pad + output_padding


def conv2d_transpose(x, weight, bias, kernel, strides, dilation, padding: str, output_padding):
    """TensorFlow's conv2d_transpose (Keras's TF backend): the gradient of a conv2d whose input has Keras's
    output size, with TF's pads for that conv ('SAME': total max((in-1)*s + K - out, 0), the odd one at the
    end): y[n, f, i*s + u*d - top, j*s + v*d - left] += x[n, c, i, j] * weight[c, f, u, v] ([C_in, filters, kh, kw])."""
    x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    n, _, h, w = x.shape
    ops = (None, None) if output_padding is None else _pair(output_padding)
    axes = zip((h, w), kernel, ops, strides, dilation, strict=True)
    sizes = [deconv_output_length(s_, k, padding, op, st, d) for s_, k, op, st, d in axes]
    befores = []
    for size, out, k, st, d in zip((h, w), sizes, kernel, strides, dilation, strict=True):
        extent = (k - 1) * d + 1
        befores.append(max((size - 1) * st + extent - out, 0) // 2 if padding == "same" else 0)
    y = np.zeros((n, weight.shape[1], *sizes))
    for i in range(h):
        for j in range(w):
            for u in range(kernel[0]):
                for v in range(kernel[1]):
                    p, q = i * strides[0] + u * dilation[0] - befores[0], j * strides[1] + v * dilation[1] - befores[1]
                    if 0 <= p < sizes[0] and 0 <= q < sizes[1]:
                        y[:, :, p, q] += x[:, :, i, j] @ weight[:, :, u, v]
    return y if bias is None else y + np.asarray(bias, np.float64)[None, :, None, None]


def max_pool(x, pool, strides, pads: Pads):
    """Maximum over each window; padded cells never win (they are -inf)."""
    x = pad_nchw(np.asarray(x, np.float64), pads, -np.inf)
    return np.max([view for _, _, view in windows(x, pool, strides, (1, 1))], axis=0)


def avg_pool(x, pool, strides, pads: Pads):
    """Mean over the real cells of each window: Keras divides by the unpadded count."""
    x = np.asarray(x, np.float64)
    ones = np.ones((1, 1) + x.shape[2:])
    total = sum(view for _, _, view in windows(pad_nchw(x, pads), pool, strides, (1, 1)))
    count = sum(view for _, _, view in windows(pad_nchw(ones, pads), pool, strides, (1, 1)))
    return total / count


def dense(x, weight, bias):
    """y = x W^T + b with W stored [out, in] (PyTorch's layout)."""
    y = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    return y if bias is None else y + np.asarray(bias, np.float64)


def flatten(x):
    """Channel-major (NCHW) order, as PyTorch; Keras would flatten HWC."""
    return np.asarray(x).reshape(x.shape[0], -1)


def batchnorm(x, gamma, beta, mean, var, epsilon):
    """Inference: gamma * (x - mean) / sqrt(var + epsilon) + beta per channel (axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    r = lambda a: np.asarray(a, np.float64).reshape(shape)  # noqa: E731
    return r(gamma) * (np.asarray(x, np.float64) - r(mean)) / np.sqrt(r(var) + epsilon) + r(beta)


def layer_norm(x, gamma, beta, epsilon):
    """Keras's LayerNormalization(axis=-1): each pixel (or flat sample) over its own channels (axis 1 here)."""
    x = np.asarray(x, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * np.reshape(gamma, shape) + np.reshape(beta, shape)


def group_norm(x, gamma, beta, groups: int, epsilon):
    """Keras's GroupNormalization: channels c*C/G .. (c+1)*C/G - 1 form group c; statistics over the group's
    channels and all pixels of one sample. groups = -1: one group per channel."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    groups = c if groups == -1 else groups
    out = np.empty_like(x)
    size = c // groups
    for k in range(groups):
        part = x[:, k * size : (k + 1) * size]
        axes = tuple(range(1, x.ndim))
        mean = part.mean(axis=axes, keepdims=True)
        var = part.var(axis=axes, keepdims=True)
        out[:, k * size : (k + 1) * size] = (part - mean) / np.sqrt(var + epsilon)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return out * np.reshape(gamma, shape) + np.reshape(beta, shape)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)) without overflow


def softmax(x, axis: int = 1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def hard_sigmoid(x):
    return np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0


def keras_relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """keras.activations.relu (keras/src/activations/activations.py, ReLU.static_call), step by step."""
    x = np.asarray(x, np.float64)
    if negative_slope != 0.0:
        if max_value is None and threshold == 0:
            return np.where(x >= 0, x, negative_slope * x)
        negative_part = np.maximum(-x + threshold, 0.0)
    else:
        negative_part = 1.0
    clip_max = max_value is not None
    if threshold != 0:
        x = x * (x > threshold)
    else:
        x = np.maximum(x, 0.0)
    if clip_max:
        x = np.clip(x, 0.0, max_value)
    if negative_slope != 0.0:
        x = x - negative_slope * negative_part
    return x


def bilinear_upsample(x, sh: int, sw: int):
    """tf.image.resize(bilinear, half-pixel centres, no antialias) by integer factors: each output pixel i
    samples the input at (i + 0.5) / s - 0.5, linearly between neighbours, clamped at the edges (np.interp)."""

    def along(x, axis: int, s: int):
        size = x.shape[axis]
        src = (np.arange(size * s) + 0.5) / s - 0.5
        return np.apply_along_axis(lambda v: np.interp(src, np.arange(size), v), axis, x)

    return along(along(np.asarray(x, np.float64), 2, sh), 3, sw)


def keras_reshape(x, target):
    """Keras's Reshape on the channels-last data: NCHW -> NHWC, reshape, back to NCHW (flat stays flat)."""
    x = np.asarray(x, np.float64)
    hwc = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    y = hwc.reshape(x.shape[0], *target)
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def activation(x, name: str | None):
    x = np.asarray(x, np.float64)
    table = {
        None: lambda: x,
        "linear": lambda: x,
        "relu": lambda: np.maximum(x, 0.0),
        "tanh": lambda: np.tanh(x),
        "sigmoid": lambda: sigmoid(x),
        "softmax": lambda: softmax(x, axis=1),  # channels (NCHW) or units
        "leaky_relu": lambda: np.where(x >= 0, x, 0.2 * x),  # Keras's slope, not ONNX's 0.01
        "elu": lambda: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
        "gelu": lambda: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),  # exact (approximate=False)
        "silu": lambda: x * sigmoid(x),
        "relu6": lambda: np.minimum(np.maximum(x, 0.0), 6.0),
        "hard_sigmoid": lambda: hard_sigmoid(x),  # Keras 3: relu6(x + 3) / 6
        "hard_silu": lambda: x * hard_sigmoid(x),
        "hard_swish": lambda: x * hard_sigmoid(x),
        "mish": lambda: x * np.tanh(np.logaddexp(0.0, x)),
        "softplus": lambda: np.logaddexp(0.0, x),  # log(1 + e^x) without overflow
        "softsign": lambda: x / (1.0 + np.abs(x)),
        "selu": lambda: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
        "exponential": lambda: np.exp(x),
    }
    return table[name]()


def preprocess(x, prep: dict | None):
    """(x * scale - mean) / std per channel (axis 1)."""
    x = np.asarray(x, np.float64)
    if not prep:
        return x
    channels = x.shape[1]
    mean = np.broadcast_to(np.asarray(prep.get("mean", [0.0]), np.float64), (channels,)).reshape(1, -1, 1, 1)
    std = np.broadcast_to(np.asarray(prep.get("std", [1.0]), np.float64), (channels,)).reshape(1, -1, 1, 1)
    return (x * prep.get("scale", 1.0) - mean) / std


# ---- one layer of a normalized spec ----------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def layer_forward(layer: dict, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Apply one normalized layer dict; `params` holds its tensors by short name (weight, bias, ...)."""
    kind = layer["type"]
    if kind == "Conv2D":
        k, s, d = _pair(layer["kernel_size"]), _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
        pads = conv_pads(layer.get("padding", "valid"), x.shape[2:], k, s, d)
        z = conv2d(x, params["weight"], params.get("bias"), s, d, pads, layer.get("groups", 1))
        return activation(z, layer.get("activation"))
    if kind in ("DepthwiseConv2D", "SeparableConv2D"):
        k, s, d = _pair(layer["kernel_size"]), _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
        pads = conv_pads(layer.get("padding", "valid"), x.shape[2:], k, s, d)
        if kind == "DepthwiseConv2D":
            y = depthwise_conv2d(x, params["weight"], params.get("bias"), s, d, pads)
            return activation(y, layer.get("activation"))
        mid = depthwise_conv2d(x, params["depthwise.weight"], None, s, d, pads)
        return activation(conv2d(mid, params["pointwise.weight"], params.get("bias")), layer.get("activation"))
    if kind == "Conv2DTranspose":
        k, s, d = _pair(layer["kernel_size"]), _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
        z = conv2d_transpose(
            x, params["weight"], params.get("bias"), k, s, d, layer.get("padding", "valid"), layer.get("output_padding")
        )
        return activation(z, layer.get("activation"))
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        pool = _pair(layer.get("pool_size", 2))
        strides = _pair(layer.get("strides") or pool)
        pads = conv_pads(layer.get("padding", "valid"), x.shape[2:], pool, strides, (1, 1))
        return (max_pool if kind == "MaxPooling2D" else avg_pool)(x, pool, strides, pads)
    if kind == "GlobalAveragePooling2D":
        return np.mean(x, axis=(2, 3), keepdims=bool(layer.get("keepdims", False)))  # keepdims: [N, C, 1, 1]
    if kind == "GlobalMaxPooling2D":
        return np.max(x, axis=(2, 3), keepdims=bool(layer.get("keepdims", False)))
    if kind == "Flatten":
        return flatten(x)
    if kind == "Dense":
        return activation(dense(x, params["weight"], params.get("bias")), layer.get("activation"))
    if kind in ("Dropout", "SpatialDropout2D", "StochasticDepth"):
        return x  # inference
    if kind == "LayerScale":
        return np.asarray(x, np.float64) * np.reshape(params["weight"], (1, -1) + (1,) * (x.ndim - 2))
    if kind in ("LayerNormalization", "GroupNormalization"):
        c = x.shape[1]
        gamma, beta = params.get("weight", np.ones(c)), params.get("bias", np.zeros(c))
        if kind == "LayerNormalization":
            return layer_norm(x, gamma, beta, layer.get("epsilon", 1e-3))
        return group_norm(x, gamma, beta, layer.get("groups", 32), layer.get("epsilon", 1e-3))
    if kind == "Activation":
        return activation(x, layer.get("activation"))
    if kind == "BatchNormalization":
        c = x.shape[1]
        gamma, beta = params.get("weight", np.ones(c)), params.get("bias", np.zeros(c))
        return batchnorm(x, gamma, beta, params["running_mean"], params["running_var"], layer.get("epsilon", 1e-3))
    if kind == "ZeroPadding2D":
        p = layer["padding"]
        (top, bottom), (left, right) = ((p, p), (p, p)) if isinstance(p, int) else p
        return pad_nchw(np.asarray(x, np.float64), (top, bottom, left, right))
    if kind == "UpSampling2D":
        sh, sw = _pair(layer.get("size", 2))
        if layer.get("interpolation", "nearest") == "nearest":
            return np.repeat(np.repeat(np.asarray(x, np.float64), sh, axis=2), sw, axis=3)
        return bilinear_upsample(x, sh, sw)
    if kind == "Cropping2D":
        c = layer.get("cropping", 0)
        (top, bottom), (left, right) = (
            ((c, c), (c, c)) if isinstance(c, int) else (((c[0], c[0]), (c[1], c[1])) if isinstance(c[0], int) else c)
        )
        return np.asarray(x, np.float64)[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]
    if kind == "Reshape":
        return keras_reshape(x, layer["target_shape"])
    if kind == "Identity":
        return np.asarray(x, np.float64)
    if kind == "Rescaling":
        return np.asarray(x, np.float64) * layer["scale"] + layer.get("offset", 0.0)
    if kind == "ReLU":
        return keras_relu(x, layer.get("negative_slope", 0.0), layer.get("max_value"), layer.get("threshold", 0.0))
    if kind == "LeakyReLU":
        x = np.asarray(x, np.float64)
        return np.where(x >= 0, x, layer.get("negative_slope", 0.3) * x)
    if kind == "PReLU":  # keras: relu(x) - alpha * relu(-x), alpha broadcast per value (NCHW order)
        x = np.asarray(x, np.float64)
        alpha = np.asarray(params["weight"], np.float64)
        return np.maximum(x, 0.0) - alpha[None] * np.maximum(-x, 0.0)
    if kind == "ELU":
        x = np.asarray(x, np.float64)
        return np.where(x > 0, x, layer.get("alpha", 1.0) * np.expm1(np.minimum(x, 0.0)))
    if kind == "Softmax":
        x = np.asarray(x, np.float64)
        return softmax(x, axis=keras_axis_to_nchw(layer.get("axis", -1), x.ndim))
    raise ValueError(f"no reference for layer kind {kind!r}")


# ---- merge layers (Keras's merging layers) -----------------------------------------------------------

MERGE_KINDS = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")


def keras_axis_to_nchw(axis: int, rank: int) -> int:
    """Keras's Concatenate axis (the batch counted) on a channels-last tensor of `rank` (batch included)
    -> the axis of the same data in the model's layout (NCHW for rank 4, [N, units] for rank 2)."""
    a = axis + rank if axis < 0 else axis
    assert 1 <= a < rank, f"axis {axis} is the batch axis or out of range for rank {rank}"
    if rank == 2:
        return 1
    assert rank == 4
    return {1: 2, 2: 3, 3: 1}[a]  # H, W, C (NHWC) -> NCHW positions


def merge(kind: str, xs: list[np.ndarray], axis: int = -1) -> np.ndarray:
    """Keras's merge of `xs` (model layout); elementwise kinds broadcast over dims of 1."""
    xs = [np.asarray(x, np.float64) for x in xs]
    assert len(xs) >= 2, f"{kind} needs at least 2 inputs"
    assert len({x.ndim for x in xs}) == 1, "merged tensors must have the same rank"
    if kind == "Subtract":
        assert len(xs) == 2, "Subtract takes exactly 2 inputs"
        return xs[0] - xs[1]
    if kind == "Concatenate":
        return np.concatenate(xs, axis=keras_axis_to_nchw(axis, xs[0].ndim))
    reduce = {"Add": np.add, "Multiply": np.multiply, "Average": np.add, "Maximum": np.maximum,
              "Minimum": np.minimum}[kind]  # fmt: skip
    y = xs[0]
    for x in xs[1:]:
        y = reduce(y, x)  # numpy broadcasting == Keras's (each dim equal or 1)
    return y / len(xs) if kind == "Average" else y


def layer_inputs(layer: dict, previous: str) -> list[str]:
    """The producer names a layer reads: its `inputs` (a name or a list), else the previous item."""
    names = layer.get("inputs")
    if names is None:
        return [previous]
    return [names] if isinstance(names, str) else list(names)


def forward(spec: dict, params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run a normalized spec on raw NCHW pixels; returns (output, every layer's output in spec order)."""
    named = {"input": preprocess(x, spec.get("preprocess"))}
    previous = "input"
    outputs = []
    for index, layer in enumerate(spec["layers"]):
        xs = [named[name] for name in layer_inputs(layer, previous)]
        if layer["type"] in MERGE_KINDS:
            y = merge(layer["type"], xs, layer.get("axis", -1))
        else:
            assert len(xs) == 1, f"{layer['type']} takes one input"
            prefix = layer["name"] + "."
            own = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            y = layer_forward(layer, own, xs[0])
        previous = layer.get("name") or f"#{index}"
        named[previous] = y
        outputs.append(y)
    return outputs[-1], outputs


def random_params(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """float32 parameters that exercise every term (non-trivial BN statistics, non-zero biases).

    Weights are scaled by 1/sqrt(fan-in) so activations stay O(1) through a deep stack.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in shapes.items():
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("weight") and len(shape) > 1:
            value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
        else:
            value = rng.normal(0.0, 0.5, shape)
        params[name] = value.astype(np.float32)
    return params
