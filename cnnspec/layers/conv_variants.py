"""DepthwiseConv2D, SeparableConv2D and Conv2DTranspose (Keras 3's arguments, defaults and fans).

The depthwise convolutions are grouped Conv2Ds (group = C) and reuse Conv2D's lowering and backward rules.
NOTE: measured on onnxruntime 1.32 CPU, 2 threads, batch 64, 3x3 depthwise (ms for C=32 at 32x32 / C=96 at
16x16 stride 2 / C=144 at 8x8): forward grouped Conv 14 / 13 / 20, kh·kw strided Slices · w summed 84 / 61 / 59,
a Gather im2col 582 (32x32 only); dL/dx by ConvTranspose(group=C) 16 / 8 / 13, Col2Im of dz·w 45 / 17 / 19;
dL/dW by Conv2D's batch-as-channels grouped Conv 83 / 26 / 25, per-offset Mul + ReduceSum 101 / 44 / 25,
per-offset batched MatMul 233 / 76 / 66. The grouped Conv machinery was fastest in every piece, so depthwise
layers use it. A whole Adam step of conv3x3(32) -> depthwise 3x3 -> conv1x1(64) -> GAP -> Dense at 32x32, batch
64: 213 ms, against 92 ms without the depthwise layer (2 busy cores, load ~8); dL/dW is most of the difference.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from .activations import activation_grad, lower_activation
from .base import (
    MAX_WINDOW,
    Activation,
    Initializer,
    Int,
    Layer,
    Lowering,
    Pair,
    ShapeError,
    StrictBool,
    initializer_arg,
    pads_text,
    require_image,
    spatial_windows,
)
from .conv import Conv2D

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape

KerasPadding = Literal["valid", "same"]


def _conv(**fields: Any) -> Conv2D:
    return Conv2D(type="Conv2D", **fields)


def _sub_context(ctx: Lowering, part: str, in_shape: Shape, out_shape: Shape, params: dict[str, str]) -> Lowering:
    """The Lowering of one part of a composite layer; its scratch lives in the parent's `saved` under
    `part.` so the backward pass can rebuild it."""
    saved = {k[len(part) + 1 :]: v for k, v in ctx.saved.items() if k.startswith(part + ".")}
    return Lowering(
        f"{ctx.name}/{part}", (in_shape,), out_shape, params, ctx.training, ctx.input_tensors, ctx.needs_dx,
        saved=saved,
    )  # fmt: skip


def _keep(ctx: Lowering, part: str, sub: Lowering) -> None:
    ctx.saved.update({f"{part}.{k}": v for k, v in sub.saved.items()})


class _DepthwiseBase(Layer):
    kernel_size: Pair
    strides: Pair = (1, 1)
    padding: KerasPadding = "valid"
    depth_multiplier: Int(ge=1, le=MAX_WINDOW) = 1
    dilation_rate: Pair = (1, 1)
    activation: Activation | None = None
    use_bias: StrictBool = True
    depthwise_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    def _windows(self, shape: Shape):
        return spatial_windows("kernel", shape, self.kernel_size, self.strides, self.dilation_rate, self.padding)

    def _depthwise_out(self, shape: Shape) -> Shape:
        require_image(self.type, shape, f"{self.type} layers go before Flatten; move it up or remove the Flatten")
        h, w = self._windows(shape)
        return (h.out, w.out, shape[2] * self.depth_multiplier)

    def _depthwise(self, channels: int, **fields: Any) -> Conv2D:
        """The same operation as a grouped Conv2D: group = C, C·m filters, weight [C·m, 1, kh, kw]."""
        base = dict(filters=channels * self.depth_multiplier, kernel_size=self.kernel_size, strides=self.strides,
                    padding=self.padding, dilation_rate=self.dilation_rate, groups=channels)  # fmt: skip
        return _conv(**(base | fields))

    def _depthwise_kernel(self, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        """Keras's kernel is (kh, kw, C, m), so its fans are fan_in = C·kh·kw, fan_out = m·kh·kw (PyTorch's,
        from [C·m, 1, kh, kw], would be kh·kw and C·m·kh·kw)."""
        from ..initializers import initialize

        receptive = self.kernel_size[0] * self.kernel_size[1]
        fan_in, fan_out = shape[2] * receptive, self.depth_multiplier * receptive
        kh, kw = self.kernel_size
        return initialize(
            initializer_arg(self.depthwise_initializer), (shape[2] * self.depth_multiplier, 1, kh, kw), fan_in, fan_out,
            rng,
        )  # fmt: skip

    def padding_applied(self, shape: Shape) -> str:
        h, w = self._windows(shape)
        return pads_text(h.pad_before, h.pad_after, w.pad_before, w.pad_after)

    def window(self, shape: Shape):
        return self.kernel_size, self.strides, self.dilation_rate


class DepthwiseConv2D(_DepthwiseBase):
    """Keras's DepthwiseConv2D: each input channel convolved with its own depth_multiplier kernels;
    output channel c·m + j is channel c's j-th kernel. ONNX Conv with group = C, weight [C·m, 1, kh, kw]."""

    type: Literal["DepthwiseConv2D"]

    keras_name: ClassVar[str] = "depthwise_conv2d"

    def output_shape(self, shape: Shape) -> Shape:
        return self._depthwise_out(shape)

    def _as_conv(self, shape: Shape) -> Conv2D:
        return self._depthwise(shape[2], activation=self.activation, use_bias=self.use_bias)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return self._as_conv(shape).param_shapes(shape)

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        params = {"weight": self._depthwise_kernel(shape, rng)}
        if self.use_bias:
            n = shape[2] * self.depth_multiplier
            params["bias"] = initialize(initializer_arg(self.bias_initializer), (n,), n, n, rng)
        return params

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * out[0] * out[1] * out[2] * self.kernel_size[0] * self.kernel_size[1]

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return self._as_conv(ctx.in_shape).lower(g, x, ctx)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Conv2D's rule with groups = C (see Conv2D.backward): dW by the batch-as-channels grouped Conv,
        dL/dx by ConvTranspose with group = C."""
        return self._as_conv(ctx.in_shape).backward(g, dy, ctx)


class SeparableConv2D(_DepthwiseBase):
    """Keras's SeparableConv2D: a depthwise convolution (no bias) then a 1x1 convolution to `filters`,
    then the bias and the activation. Weights `depthwise.weight` [C·m, 1, kh, kw], `pointwise.weight`
    [filters, C·m, 1, 1], `bias` [filters]: kh·kw·C·m + C·m·filters + filters parameters, as Keras."""

    type: Literal["SeparableConv2D"]
    filters: Int(ge=1, le=MAX_WINDOW)
    pointwise_initializer: Initializer = "glorot_uniform"

    keras_name: ClassVar[str] = "separable_conv2d"

    def output_shape(self, shape: Shape) -> Shape:
        h, w, _ = self._depthwise_out(shape)
        return (h, w, self.filters)

    def _pointwise(self) -> Conv2D:
        return _conv(filters=self.filters, kernel_size=1, activation=self.activation, use_bias=self.use_bias)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        mid = shape[2] * self.depth_multiplier
        kh, kw = self.kernel_size
        shapes: dict[str, Shape] = {"depthwise.weight": (mid, 1, kh, kw), "pointwise.weight": (self.filters, mid, 1, 1)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        mid = shape[2] * self.depth_multiplier
        # Keras's pointwise kernel is (1, 1, C·m, filters): fan_in = C·m, fan_out = filters.
        params = {
            "depthwise.weight": self._depthwise_kernel(shape, rng),
            "pointwise.weight": initialize(
                initializer_arg(self.pointwise_initializer), (self.filters, mid, 1, 1), mid, self.filters, rng
            ),
        }
        if self.use_bias:
            params["bias"] = initialize(initializer_arg(self.bias_initializer), (self.filters,), mid, self.filters, rng)
        return params

    def flops(self, shape: Shape, out: Shape) -> int:
        mid = shape[2] * self.depth_multiplier
        return 2 * out[0] * out[1] * mid * (self.kernel_size[0] * self.kernel_size[1] + self.filters)

    def _parts(self, ctx: Lowering) -> tuple[Lowering, Lowering]:
        mid_shape = self._depthwise_out(ctx.in_shape)
        p = ctx.params
        pw = {"weight": p["pointwise.weight"]} | ({"bias": p["bias"]} if self.use_bias else {})
        depthwise = _sub_context(ctx, "depthwise", ctx.in_shape, mid_shape, {"weight": p["depthwise.weight"]})
        pointwise = _sub_context(ctx, "pointwise", mid_shape, ctx.out_shape, pw)
        pointwise.dy_is_dz, pointwise.needs_dx = ctx.dy_is_dz, (True,)
        return depthwise, pointwise

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        depthwise, pointwise = self._parts(ctx)
        mid = self._depthwise(ctx.in_shape[2], use_bias=False).lower(g, x, depthwise)
        y = self._pointwise().lower(g, mid, pointwise)
        _keep(ctx, "depthwise", depthwise)
        _keep(ctx, "pointwise", pointwise)
        ctx.pre_activation = pointwise.pre_activation
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """The chain rule through the two convolutions, each by Conv2D's rule: the 1x1 one gives
        dL/db, dL/dW_pointwise and dL/d(depthwise output); the depthwise one (no bias) dL/dW_depthwise and,
        when needed, dL/dx."""
        depthwise, pointwise = self._parts(ctx)
        dmid, pw_grads = self._pointwise().backward(g, dy, pointwise)
        dx, dw_grads = self._depthwise(ctx.in_shape[2], use_bias=False).backward(g, dmid, depthwise)
        grads = {"depthwise.weight": dw_grads["weight"], "pointwise.weight": pw_grads["weight"]}
        if self.use_bias:
            grads["bias"] = pw_grads["bias"]
        return dx, grads


def _output_padding_check(value: Any) -> Any:
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WINDOW for v in items):
        return (items[0], items[1])
    raise PydanticCustomError(
        "cnnspec_pair", "must be null, an integer ≥ 0 or a list [h, w] of two, got {got}", {"got": repr(value)}
    )


def transpose_pads(length: int, kernel: int, stride: int, dilation: int, padding: str, out_pad: int | None):
    """Keras's transposed-convolution arithmetic for one axis -> (output length, ONNX pads begin/end,
    ONNX output_padding).

    Keras (keras/src/backend/common/backend_utils.py) pads the stride-dilated input by (left, right) and
    runs a stride-1 convolution with the effective kernel K = (k-1)·d + 1:
      'valid': left = K-1, right = K-1 + output_padding (None -> max(K, s) - K)
      'same':  pad_len = s + K - 2 (output_padding None) or K + K mod 2 - 2 + output_padding,
               left = min(ceil(pad_len / 2), K-1), right = pad_len - left
    so out = (length-1)·s + 1 + left + right - K + 1. ONNX's ConvTranspose crops `pads` from the full
    (length-1)·s + K outputs and appends `output_padding`: begin = K-1-left, and the end is K-1-right
    when that is ≥ 0, else output_padding = right - (K-1) (outputs only the bias reaches).
    """
    extent = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(extent, stride) - extent if out_pad is None else out_pad
        left, right = extent - 1, extent - 1 + extra
    else:
        pad_len = stride + extent - 2 if out_pad is None else extent + extent % 2 - 2 + out_pad
        left = min(pad_len // 2 + pad_len % 2, extent - 1)
        right = pad_len - left
    out = (length - 1) * stride + left + right - extent + 2
    return out, extent - 1 - left, max(extent - 1 - right, 0), max(right - (extent - 1), 0)


class Conv2DTranspose(Layer):
    """Keras's Conv2DTranspose; the kernel is stored as PyTorch's ConvTranspose2d weight [C_in, filters, kh, kw]
    (Keras's is (kh, kw, filters, C_in), hence its fans: fan_in = filters·kh·kw, fan_out = C_in·kh·kw)."""

    type: Literal["Conv2DTranspose"]
    filters: Int(ge=1, le=MAX_WINDOW)
    kernel_size: Pair
    strides: Pair = (1, 1)
    padding: KerasPadding = "valid"
    output_padding: Annotated[tuple[int, int] | None, BeforeValidator(_output_padding_check)] = None
    dilation_rate: Pair = (1, 1)
    activation: Activation | None = None
    use_bias: StrictBool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    keras_name: ClassVar[str] = "conv2d_transpose"

    def _axes(self, shape: Shape) -> list[tuple[int, int, int, int]]:
        """Per axis (height, width): (output length, ONNX pad begin, pad end, output_padding)."""
        ops = self.output_padding or (None, None)
        return [
            transpose_pads(shape[a], self.kernel_size[a], self.strides[a], self.dilation_rate[a], self.padding, ops[a])
            for a in (0, 1)
        ]

    def output_shape(self, shape: Shape) -> Shape:
        require_image("Conv2DTranspose", shape, "Conv2DTranspose layers go before Flatten; move it up")
        if self.output_padding is not None:
            for a, name in enumerate(("height", "width")):
                if self.output_padding[a] >= self.strides[a]:
                    raise ShapeError(
                        "output_padding",
                        f"output_padding {self.output_padding[a]} on the {name} must be smaller than the stride "
                        f"{self.strides[a]} (Keras: 'Strides must be greater than output padding')",
                        "output_padding: null (Keras's default), or a value below the stride",
                    )
        axes = self._axes(shape)
        for a, (out, *_) in enumerate(axes):
            if out < 1:
                raise ShapeError(
                    "kernel_size",
                    f"the output {('height', 'width')[a]} would be {out} (Keras: (in-1)·stride + kernel - "
                    f"2·(kernel//2) + output_padding with padding 'same' on a {shape[a]}-pixel input)",
                    "padding: valid, an odd kernel_size, or output_padding ≥ 1",
                )
        return (axes[0][0], axes[1][0], self.filters)

    def pads(self, shape: Shape) -> list[int]:
        """ONNX ConvTranspose pads [top, left, bottom, right] (cropped from the full output)."""
        (_, top, bottom, _), (_, left, right, _) = self._axes(shape)
        return [top, left, bottom, right]

    def onnx_output_padding(self, shape: Shape) -> list[int]:
        return [axis[3] for axis in self._axes(shape)]

    def padding_applied(self, shape: Shape) -> str:
        top, left, bottom, right = self.pads(shape)
        return pads_text(top, bottom, left, right)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (shape[2], self.filters, *self.kernel_size)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        receptive = self.kernel_size[0] * self.kernel_size[1]
        fan_in, fan_out = self.filters * receptive, shape[2] * receptive  # Keras's, from (kh, kw, filters, C_in)
        shapes = self.param_shapes(shape)
        kernel = initialize(initializer_arg(self.kernel_initializer), shapes["weight"], fan_in, fan_out, rng)
        params = {"weight": kernel}
        if self.use_bias:
            params["bias"] = initialize(initializer_arg(self.bias_initializer), shapes["bias"], fan_in, fan_out, rng)
        return params

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * shape[0] * shape[1] * shape[2] * self.filters * self.kernel_size[0] * self.kernel_size[1]

    def window(self, shape: Shape):
        """An output pixel sees at most ceil(K / s) input pixels per axis (K the dilated kernel); the jump
        (an integer in the report) is kept, as it cannot shrink below one input pixel there."""
        ext = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation_rate, strict=True)]
        return (math.ceil(ext[0] / self.strides[0]), math.ceil(ext[1] / self.strides[1])), (1, 1), (1, 1)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        inputs = [x, ctx.params["weight"]] + ([ctx.params["bias"]] if self.use_bias else [])
        z = g.op("ConvTranspose", inputs, ctx.name, **self._window_attrs(), pads=self.pads(ctx.in_shape),
                 output_padding=self.onnx_output_padding(ctx.in_shape))  # fmt: skip
        y = lower_activation(g, z, self.activation, ctx.name)
        ctx.saved.update(x=x, z=z, y=y)
        ctx.pre_activation = z
        return y

    def _adjoint(self, shape: Shape) -> _PaddedConv:
        """The convolution whose transpose this layer is: from the output (filters channels) to the input
        (C_in), weight [C_in, filters, kh, kw] as it is stored, pads [top, left, bottom', right'] where the
        end loses what output_padding added (pixels past the last window are not read)."""
        top, left, bottom, right = self.pads(shape)
        op = self.onnx_output_padding(shape)
        return _PaddedConv(
            type="Conv2D", filters=shape[2], kernel_size=self.kernel_size, strides=self.strides,
            dilation_rate=self.dilation_rate, use_bias=False, fixed_pads=(top, left, max(bottom - op[0], 0),
            max(right - op[1], 0)),
        )  # fmt: skip

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Gradients of z = convT(x, W) + b, the transpose (adjoint) of the convolution A = conv(·, W) from the
        output space to the input space (stride s, dilation d, pads p): z = Aᵀx + b, so
          dL/db[f]       = Σ_{n,i,j} dz[n,f,i,j]
          dL/dx          = A dz = conv(dz, W): a plain Conv with W as stored ([C_in, filters, kh, kw] is
                           Conv's [out, in, kh, kw]) and the same s, d, pads
          dL/dW[c,f,u,v] = Σ_{n,i,j} x[n,c,i,j] dz_p[n,f, s·i + d·u, s·j + d·v]: Conv2D's weight gradient
                           of A with x in the role of A's output gradient and dz as A's input.
        """
        from .gradients import reduce_sum

        dz = activation_grad(g, dy, self.activation, ctx)
        adjoint = self._adjoint(ctx.in_shape)
        (h, w, c), (ho, wo, f) = ctx.in_shape, ctx.out_shape
        view = Lowering(ctx.name, ((ho, wo, f),), (h, w, c), {}, ctx.training, saved={"x": dz})
        grads = {"weight": adjoint._weight_grad(g, ctx.saved["x"], view)}
        if self.use_bias:
            grads["bias"] = reduce_sum(g, dz, [0, 2, 3], ctx.name)
        if not ctx.needs_input_grad:
            return None, grads
        dx = g.op("Conv", [dz, ctx.params["weight"]], ctx.name, **self._window_attrs(), pads=list(adjoint.fixed_pads))
        return dx, grads

    def _window_attrs(self) -> dict[str, list[int]]:
        return {"kernel_shape": list(self.kernel_size), "strides": list(self.strides),
                "dilations": list(self.dilation_rate)}  # fmt: skip


class _PaddedConv(Conv2D):
    """A Conv2D with explicit (possibly asymmetric) ONNX pads: the adjoint of a Conv2DTranspose, only to
    reuse Conv2D's weight-gradient rule."""

    fixed_pads: tuple[int, int, int, int]

    def pads(self, shape: Shape) -> list[int]:
        return list(self.fixed_pads)
