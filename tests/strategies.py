"""Hypothesis strategies: random specs that always validate (shape-feasible by construction).

`feasible_specs()` draws a spec dict: an input of at most 32x32x4, an image phase (Conv2D, pooling,
ZeroPadding2D, BatchNormalization, Activation, Dropout), one flattening layer (Flatten or a global
pooling), then a flat phase (Dense, Dropout, Activation, BatchNormalization, Flatten). Every argument
form is drawn: int or [h, w] kernels, 'same' / 'valid' / p / [ph, pw] padding, dilation, groups,
strides, initializers by name or with parameters, explicit names, labels and preprocessing.

Feasibility is kept with this module's own window arithmetic (the Keras formulas), so the strategy
does not lean on cnnspec.shapes; `test_compile_properties` checks that every draw validates.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

ACTIVATIONS = [None, "relu", "tanh", "sigmoid", "softmax", "linear", "leaky_relu", "elu", "gelu", "silu"]
INIT_NAMES = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
              "zeros", "ones", "random_normal", "random_uniform"]  # fmt: skip
MAX_SIDE, MAX_CHANNELS, MAX_WIDTH, MAX_LAYERS = 32, 4, 32, 8
MAX_IMAGE_SIDE = 40  # ZeroPadding2D may grow the map a little beyond the input


def out_size(size: int, kernel: int, stride: int, dilation: int, padding: Any) -> int:
    """Keras's output size along one axis ('valid', 'same' or symmetric explicit p)."""
    extent = (kernel - 1) * dilation + 1
    if padding == "same":
        return -(-size // stride)
    p = 0 if padding == "valid" else padding
    return (size + 2 * p - extent) // stride + 1


@st.composite
def pair_arg(draw, values: tuple[int, int]) -> Any:
    """n when both axes agree (sometimes still as a list), else [h, w]."""
    if values[0] == values[1] and draw(st.booleans()):
        return values[0]
    return list(values)


@st.composite
def initializer(draw) -> Any:
    kind = draw(st.sampled_from(INIT_NAMES + ["dict_normal", "dict_uniform", "dict_constant"]))
    if kind == "dict_normal":
        return {"type": "random_normal", "mean": draw(st.floats(-0.1, 0.1)), "stddev": draw(st.floats(0.01, 0.2))}
    if kind == "dict_uniform":
        low = draw(st.floats(-0.2, 0.0))
        return {"type": "random_uniform", "minval": low, "maxval": low + draw(st.floats(0.01, 0.3))}
    if kind == "dict_constant":
        return {"type": "constant", "value": draw(st.floats(-0.5, 0.5))}
    return kind


@st.composite
def _window_axis(draw, size: int, padding: Any, max_kernel: int, dilate: bool) -> tuple[int, int, int]:
    """(kernel, stride, dilation) along one axis that gives an output of at least 1."""
    kernel = draw(st.integers(1, max_kernel))
    dilation = draw(st.integers(1, 3)) if dilate else 1
    stride = draw(st.integers(1, 3))
    while out_size(size, kernel, stride, dilation, padding) < 1:  # shrink until it fits
        if dilation > 1:
            dilation -= 1
        else:
            kernel -= 1
    return kernel, stride, dilation


@st.composite
def conv2d(draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    h, w, c = shape
    mode = draw(st.sampled_from(["same", "valid", "int", "pair"]))
    pads = {"same": ("same", "same"), "valid": ("valid", "valid")}.get(mode)
    if pads is None:
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        pads = (ph, ph) if mode == "int" else (ph, pw)
    padding = pads[0] if mode in ("same", "valid", "int") else list(pads)
    dilate = draw(st.booleans())
    kh, sh, dh = draw(_window_axis(h, pads[0], 5, dilate))
    kw, sw, dw = draw(_window_axis(w, pads[1], 5, dilate))
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    filters = groups * draw(st.integers(1, MAX_WIDTH // groups))
    layer: dict[str, Any] = {"type": "Conv2D", "filters": filters, "kernel_size": draw(pair_arg((kh, kw)))}
    if (sh, sw) != (1, 1) or draw(st.booleans()):
        layer["strides"] = draw(pair_arg((sh, sw)))
    if padding != "valid" or draw(st.booleans()):
        layer["padding"] = padding
    if (dh, dw) != (1, 1):
        layer["dilation_rate"] = draw(pair_arg((dh, dw)))
    if groups > 1:
        layer["groups"] = groups
    _common(draw, layer)
    out = (out_size(h, kh, sh, dh, pads[0]), out_size(w, kw, sw, dw, pads[1]), filters)
    return layer, out


def _common(draw, layer: dict) -> None:
    """activation, use_bias and initializers shared by Conv2D and Dense."""
    if draw(st.booleans()):
        layer["activation"] = draw(st.sampled_from(ACTIVATIONS))
    if draw(st.integers(0, 4)) == 0:
        layer["use_bias"] = False
    if draw(st.integers(0, 2)) == 0:
        layer["kernel_initializer"] = draw(initializer())
    if layer.get("use_bias", True) and draw(st.integers(0, 3)) == 0:
        layer["bias_initializer"] = draw(initializer())


@st.composite
def pooling(draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    h, w, c = shape
    kind = draw(st.sampled_from(["MaxPooling2D", "AveragePooling2D"]))
    padding = draw(st.sampled_from(["valid", "same"]))
    ph, sh, _ = draw(_window_axis(h, padding, 3, False))
    pw, sw, _ = draw(_window_axis(w, padding, 3, False))
    layer: dict[str, Any] = {"type": kind, "pool_size": draw(pair_arg((ph, pw)))}
    strides = (ph, pw)  # Keras's default: strides = pool_size
    if draw(st.booleans()):
        strides = (sh, sw)
        layer["strides"] = draw(pair_arg(strides))
    if padding == "same" or draw(st.booleans()):
        layer["padding"] = padding
    out = (out_size(h, ph, strides[0], 1, padding), out_size(w, pw, strides[1], 1, padding), c)
    return layer, out


@st.composite
def zero_padding(draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    h, w, c = shape
    room = max(0, min(2, (MAX_IMAGE_SIDE - max(h, w)) // 2))
    t, b, left, r = (draw(st.integers(0, room)) for _ in range(4))
    form = draw(st.sampled_from(["int", "pair", "full"]))
    if form == "int":
        padding: Any = t
        t = b = left = r = padding
    elif form == "pair":
        padding, b, r = [t, left], t, left
    else:
        padding = [[t, b], [left, r]]
    layer: dict[str, Any] = {"type": "ZeroPadding2D"}
    if padding != [[1, 1], [1, 1]] or draw(st.booleans()):
        layer["padding"] = padding
    return layer, (h + t + b, w + left + r, c)


@st.composite
def keeping_shape(draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    """BatchNormalization, Activation or Dropout: the shape is unchanged."""
    kind = draw(st.sampled_from(["BatchNormalization", "Activation", "Dropout"]))
    if kind == "Activation":
        return {"type": kind, "activation": draw(st.sampled_from(ACTIVATIONS))}, shape
    if kind == "Dropout":
        return {"type": kind, "rate": draw(st.floats(0.0, 0.9))}, shape
    layer: dict[str, Any] = {"type": kind}
    for key, values in (("momentum", st.floats(0.0, 1.0)), ("epsilon", st.floats(1e-5, 0.1))):
        if draw(st.booleans()):
            layer[key] = draw(values)
    for key in ("center", "scale"):
        if draw(st.integers(0, 3)) == 0:
            layer[key] = False
    return layer, shape


@st.composite
def dense(draw, shape: tuple[int, ...], units: int | None = None) -> tuple[dict, tuple[int, ...]]:
    units = units if units is not None else draw(st.integers(1, MAX_WIDTH))
    layer: dict[str, Any] = {"type": "Dense", "units": units}
    _common(draw, layer)
    return layer, (units,)


@st.composite
def flattening(draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    kind = draw(st.sampled_from(["Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D"]))
    return {"type": kind}, ((shape[0] * shape[1] * shape[2],) if kind == "Flatten" else (shape[2],))


@st.composite
def preprocess(draw, channels: int) -> dict:
    prep: dict[str, Any] = {}
    if draw(st.booleans()):
        prep["scale"] = draw(st.sampled_from([1 / 255, 1 / 127.5, 0.5, 2.0]))
    for key, low in (("mean", -1.0), ("std", 0.1)):
        if draw(st.booleans()):
            n = draw(st.sampled_from(sorted({1, channels})))
            values = draw(st.lists(st.floats(low, 2.0), min_size=n, max_size=n))
            prep[key] = values[0] if n == 1 and draw(st.booleans()) else values
    return prep


@st.composite
def feasible_specs(draw, max_layers: int = MAX_LAYERS) -> dict:
    """A spec dict that validates: random stacks of the 11 layer kinds, input <= 32x32x4."""
    shape: tuple[int, ...] = (draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE)),
                              draw(st.integers(1, MAX_CHANNELS)))  # fmt: skip
    spec: dict[str, Any] = {
        "name": draw(st.sampled_from(["net", "random spec", "ünï"])),
        "input": {"shape": list(shape)},
    }
    n_image = draw(st.integers(0, max_layers - 1))
    n_flat = draw(st.integers(0, max_layers - 1 - n_image))
    layers = []
    image_layers = st.sampled_from([conv2d, conv2d, pooling, zero_padding, keeping_shape])
    for _ in range(n_image):
        layer, shape = draw(draw(image_layers)(shape))
        layers.append(layer)
    layer, shape = draw(flattening(shape))
    layers.append(layer)
    flat_layers = st.sampled_from([dense, dense, keeping_shape, lambda s: st.just(({"type": "Flatten"}, s))])
    for _ in range(n_flat):
        layer, shape = draw(draw(flat_layers)(shape))
        layers.append(layer)
    _name_some(draw, layers)
    spec["layers"] = layers
    if draw(st.booleans()):
        spec["labels"] = [f"class {i}" for i in range(shape[0])]
    if draw(st.booleans()):
        spec["preprocess"] = draw(preprocess(spec["input"]["shape"][2]))
    return spec


def _name_some(draw, layers: list[dict]) -> None:
    """Give a few layers explicit names (unique; default names skip them)."""
    for index, layer in enumerate(layers):
        if draw(st.integers(0, 4)) == 0:
            layer["name"] = draw(st.sampled_from(["L", "block-1", "conv2d_7", "x_9"])) + f"_{index}"


@st.composite
def conv_variant(draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    """A DepthwiseConv2D, SeparableConv2D or Conv2DTranspose that fits `shape` (Keras's arithmetic)."""
    h, w, c = shape
    kind = draw(st.sampled_from(["DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"]))
    padding = draw(st.sampled_from(["valid", "same"]))
    dilate = draw(st.booleans())
    layer: dict[str, Any] = {"type": kind, "padding": padding}
    if kind == "Conv2DTranspose":
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilate else (1, 1)
        extra = [draw(st.integers(0, s - 1)) for s in (sh, sw)] if draw(st.booleans()) else None

        def size(n, k, s, d, p):
            ext = (k - 1) * d + 1
            if p is None:
                return n * s + max(ext - s, 0) if padding == "valid" else n * s
            return (n - 1) * s + ext - 2 * (ext // 2 if padding == "same" else 0) + p

        out = (size(h, kh, sh, dh, extra and extra[0]), size(w, kw, sw, dw, extra and extra[1]))
        if min(out) < 1 or max(out) > MAX_IMAGE_SIDE:
            return draw(conv_variant(shape))
        filters = draw(st.integers(1, 6))
        layer |= {"filters": filters, "kernel_size": [kh, kw], "strides": [sh, sw], "dilation_rate": [dh, dw]}
        if extra is not None:
            layer["output_padding"] = extra
        return layer, (*out, filters)
    kh, sh, dh = draw(_window_axis(h, padding, 4, dilate))
    kw, sw, dw = draw(_window_axis(w, padding, 4, dilate))
    m = draw(st.integers(1, 3))
    layer |= {"kernel_size": [kh, kw], "strides": [sh, sw], "dilation_rate": [dh, dw], "depth_multiplier": m}
    if draw(st.integers(0, 3)) == 0:
        layer["use_bias"] = False
    if draw(st.booleans()):
        layer["activation"] = draw(st.sampled_from(ACTIVATIONS))
    hw = (out_size(h, kh, sh, dh, padding), out_size(w, kw, sw, dw, padding))
    if kind == "SeparableConv2D":
        layer["filters"] = draw(st.integers(1, 6))
        return layer, (*hw, layer["filters"])
    return layer, (*hw, c * m)


@st.composite
def conv_variant_specs(draw) -> dict:
    """An input of at most 12x12x3, one to three conv variants (perhaps after a Conv2D), then Flatten."""
    shape: tuple[int, ...] = (draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 3)))
    spec: dict[str, Any] = {"name": "variants", "input": {"shape": list(shape)}}
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        layer, shape = draw(conv_variant(shape))
        layers.append(layer)
    spec["layers"] = [*layers, {"type": "Flatten"}]
    return spec
