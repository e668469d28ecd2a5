"""Conv2D and ZeroPadding2D."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from .activations import activation_grad, lower_activation
from .base import (
    MAX_WINDOW,
    Activation,
    ConvPadding,
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

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape


IM2COL_MAX_PER_IMAGE = 1 << 17
IM2COL_MAX_PIXELS = 100
COL2IM_MAX_PIXELS = 64
"""Training uses one batch-wide GEMM (im2col) for small outputs (Ho·Wo ≤ 100, where onnxruntime's
per-image Conv GEMMs are tiny) when its columns stay small (kh·kw·C·Ho·Wo ≤ 128 Ki floats, 512 KiB
per image, kept until the backward pass), else Conv."""


class Conv2D(Layer):
    """2-D convolution, Keras's arguments; the kernel is stored as PyTorch's [out, in/groups, kh, kw].

    NOTE: strides > 1 together with dilation_rate > 1 is allowed (ONNX and PyTorch define it);
    Keras refuses that combination.
    """

    type: Literal["Conv2D"]
    filters: Int(ge=1, le=MAX_WINDOW)
    kernel_size: Pair
    strides: Pair = (1, 1)
    padding: ConvPadding = "valid"
    dilation_rate: Pair = (1, 1)
    groups: Int(ge=1, le=MAX_WINDOW) = 1
    activation: Activation | None = None
    use_bias: StrictBool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    keras_name: ClassVar[str] = "conv2d"

    def _windows(self, shape: Shape):
        return spatial_windows("kernel", shape, self.kernel_size, self.strides, self.dilation_rate, self.padding)

    def output_shape(self, shape: Shape) -> Shape:
        require_image("Conv2D", shape, "Conv2D layers go before Flatten; move it up or remove the Flatten")
        channels = shape[2]
        if self.filters % self.groups or channels % self.groups:
            raise ShapeError(
                "groups",
                f"groups={self.groups} must divide both the input channels ({channels}) and filters ({self.filters})",
                "choose groups among the common divisors of the two",
            )
        h, w = self._windows(shape)
        return (h.out, w.out, self.filters)

    def pads(self, shape: Shape) -> list[int]:
        """ONNX pads [top, left, bottom, right] (Keras 'same': the odd pixel at bottom/right)."""
        h, w = self._windows(shape)
        return [h.pad_before, w.pad_before, h.pad_after, w.pad_after]

    def padding_applied(self, shape: Shape) -> str:
        top, left, bottom, right = self.pads(shape)
        return pads_text(top, bottom, left, right)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        kh, kw = self.kernel_size
        shapes: dict[str, Shape] = {"weight": (self.filters, shape[2] // self.groups, kh, kw)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        shapes = self.param_shapes(shape)
        receptive = self.kernel_size[0] * self.kernel_size[1]
        fan_in, fan_out = shape[2] // self.groups * receptive, self.filters * receptive  # Keras's fans
        kernel = initialize(initializer_arg(self.kernel_initializer), shapes["weight"], fan_in, fan_out, rng)
        params = {"weight": kernel}
        if self.use_bias:
            params["bias"] = initialize(initializer_arg(self.bias_initializer), shapes["bias"], fan_in, fan_out, rng)
        return params

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * out[0] * out[1] * out[2] * (shape[2] // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    def window(self, shape: Shape):
        return self.kernel_size, self.strides, self.dilation_rate

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        if ctx.training and self._im2col_fits(ctx.in_shape):
            z = self._lower_im2col(g, x, ctx)
            y = lower_activation(g, z, self.activation, ctx.name)
            ctx.saved.update(x=x, z=z, y=y)
            ctx.pre_activation = z
            return y
        inputs = [x, ctx.params["weight"]] + ([ctx.params["bias"]] if self.use_bias else [])
        z = g.op(
            "Conv",
            inputs,
            ctx.name,
            kernel_shape=list(self.kernel_size),
            strides=list(self.strides),
            dilations=list(self.dilation_rate),
            group=self.groups,
            pads=self.pads(ctx.in_shape),
        )
        y = lower_activation(g, z, self.activation, ctx.name)
        ctx.saved.update(x=x, z=z, y=y)
        ctx.pre_activation = z
        return y

    def _im2col_fits(self, shape: Shape) -> bool:
        kh, kw = self.kernel_size
        h, w = self._windows(shape)
        pixels = h.out * w.out
        return self.groups == 1 and pixels <= IM2COL_MAX_PIXELS and kh * kw * shape[2] * pixels <= IM2COL_MAX_PER_IMAGE

    def _lower_im2col(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        """Training forward as ONE GEMM over the whole batch: z [N·Ho·Wo, M] = cols [N·Ho·Wo, kh·kw·C] @ W2ᵀ.

        cols[n·P + p, (u, v, c)] = x_p[n, c, s·i + d·u, s·j + d·v] for output pixel p = (i, j): ONE Gather
        of channel rows from the padded input in NHWC, [N, Hp·Wp, C], at the constant indices
        (s·i + d·u)·Wp + s·j + d·v; the backward pass reuses it for dL/dW = dz2ᵀ @ cols.
        NOTE: onnxruntime runs a Conv image by image (small GEMMs that use 2 threads poorly) and uses its
        fast NCHWc kernels only for constant weights, which a train step's weights are not. The Gather
        measured 2-10x faster than building the same columns from kh·kw strided Slices and a Concat.
        """
        from .gradients import ints

        scope, (kh, kw) = ctx.name, self.kernel_size
        (ho, wo, m), (h, w, c) = ctx.out_shape, ctx.in_shape
        top, left, bottom, right = self.pads(ctx.in_shape)
        if top or left or bottom or right:
            x = g.op("Pad", [x, ints(g, scope, [0, 0, top, left, 0, 0, bottom, right])], scope)
        hp, wp = h + top + bottom, w + left + right
        xh = g.op("Transpose", [x], scope, perm=[0, 2, 3, 1])  # [N, Hp, Wp, C]
        xh = g.op("Reshape", [xh, ints(g, scope, [0, hp * wp, c])], scope)
        gathered = g.op("Gather", [xh, g.constant(scope, self._gather_index(ctx), "int64")], scope, axis=1)
        cols = g.op("Reshape", [gathered, ints(g, scope, [-1, kh * kw * c])], scope)  # [N·P, kh·kw·C]
        w2 = g.op("Transpose", [ctx.params["weight"]], scope, perm=[0, 2, 3, 1])  # [M, kh, kw, C]
        w2 = g.op("Reshape", [w2, ints(g, scope, [m, -1])], scope)
        inputs = [cols, w2] + ([ctx.params["bias"]] if self.use_bias else [])
        z2 = g.op("Gemm", inputs, scope, transB=1)  # [N·P, M]
        ctx.saved.update(cols=cols, w2=w2)
        z4 = g.op("Reshape", [z2, ints(g, scope, [-1, ho, wo, m])], scope)
        return g.op("Transpose", [z4], scope, perm=[0, 3, 1, 2])

    def _gather_index(self, ctx: Lowering) -> np.ndarray:
        """[P, kh·kw]: the flat pixel (row·Wp + column of the padded image) under each output pixel's
        kernel offset (u, v), (s·i + d·u)·Wp + s·j + d·v."""
        import numpy as np

        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        (ho, wo, _), w = ctx.out_shape, ctx.in_shape[1]
        _, left, _, right = self.pads(ctx.in_shape)
        wp = w + left + right
        rows = (sh * np.arange(ho)[:, None] + dh * np.arange(kh)[None, :]) * wp  # [Ho, kh]
        columns = sw * np.arange(wo)[:, None] + dw * np.arange(kw)[None, :]  # [Wo, kw]
        return (rows[:, None, :, None] + columns[None, :, None, :]).reshape(ho * wo, kh * kw)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Gradients of z = conv(x, W) + b (stride s, dilation d, groups, pads p) from dL/dy.

        With x_p the zero-padded input and z[n,m,i,j] = Σ_{c,u,v} W[m,c,u,v] x_p[n,c, s·i + d·u, s·j + d·v] + b[m]:
          dL/db[m]       = Σ_{n,i,j} dz[n,m,i,j]
          dL/dW[m,c,u,v] = Σ_{n,i,j} dz[n,m,i,j] x_p[n,c, s·i + d·u, s·j + d·v]
                         = a convolution of x (batch and channels swapped) by dz as the kernel,
                           with stride d and dilation s (the roles swap, as in JAX's _conv_general_vjp_rhs)
          dL/dx          = the transposed convolution of dz by W (same s, d, groups, pads), plus
                           output_padding = the pixels after the last window, (H + pads - extent) mod s.
        """
        from .gradients import output_padding, reduce_sum

        dz = activation_grad(g, dy, self.activation, ctx)
        grads = {"weight": self._weight_grad(g, dz, ctx)}
        if self.use_bias:
            grads["bias"] = reduce_sum(g, dz, [0, 2, 3], ctx.name)
        if not ctx.needs_input_grad:
            return None, grads
        if "cols" in ctx.saved and g.serial and g.device == "cpu":
            return self._input_grad_scatter(g, dz, ctx), grads
        small = ctx.out_shape[0] * ctx.out_shape[1] <= COL2IM_MAX_PIXELS
        if "cols" in ctx.saved and small and g.opset >= 18 and g.device == "cpu":  # no CUDA Col2Im in onnxruntime
            return self._input_grad_col2im(g, dz, ctx), grads
        pads = self.pads(ctx.in_shape)
        dx = g.op(
            "ConvTranspose",
            [dz, ctx.params["weight"]],
            ctx.name,
            kernel_shape=list(self.kernel_size),
            strides=list(self.strides),
            dilations=list(self.dilation_rate),
            group=self.groups,
            pads=pads,
            output_padding=output_padding(ctx.in_shape, pads, self.kernel_size, self.strides, self.dilation_rate),
        )
        return dx, grads

    def _input_grad_scatter(self, g: GraphBuilder, dz: str, ctx: Lowering) -> str:
        """dL/dx as the adjoint of the forward's Gather: dcols [N·P, kh·kw·C] = dz2 [N·P, M] @ W2 (the
        forward's [M, (u, v, c)] matrix) holds each output pixel's gradient for its whole window, and ONE
        ScatterND(add) sums its rows of C channels back onto the padded NHWC image at the indices the
        Gather read, n·Hp·Wp + index[p, (u, v)]; then the padding is cropped and the result is NCHW.

        NOTE: only in serial graphs (GraphBuilder.serial): onnxruntime splits a ScatterND's rows among its
        threads without locks, and the rows here repeat pixels. No [N, P, K] -> [N, K, P] reshuffle and one
        pass over dcols: for seed's 6x6-output layer (batch 32, one thread) ScatterND took 0.40 ms where
        Transpose + Col2Im took 1.32 ms; with the 10x10 one's ConvTranspose replaced too, the 1-thread seed
        step went from 813 to 874 img/s.
        """
        from .gradients import ints

        op, scope, m, (h, w, c) = g.op, ctx.name, ctx.out_shape[2], ctx.in_shape
        top, left, bottom, right = self.pads(ctx.in_shape)
        hp, wp = h + top + bottom, w + left + right
        dz2 = op("Reshape", [op("Transpose", [dz], scope, perm=[0, 2, 3, 1]), ints(g, scope, [-1, m])], scope)
        rows = op("Reshape", [op("Gemm", [dz2, ctx.saved["w2"]], scope), ints(g, scope, [-1, c])], scope)
        # The rows' flat pixels: image n starts at n·Hp·Wp (N is known only at run time).
        n = op("Shape", [dz], scope, start=0, end=1)
        zero, one = g.scalar(scope, 0, "int64"), g.scalar(scope, 1, "int64")
        images = op("Range", [zero, op("Squeeze", [n], scope), one], scope)
        starts = op("Unsqueeze", [op("Mul", [images, ints(g, scope, hp * wp)], scope), ints(g, scope, [1])], scope)
        pixels = g.constant(scope, self._gather_index(ctx).reshape(1, -1), "int64")
        index = op("Reshape", [op("Add", [starts, pixels], scope), ints(g, scope, [-1, 1])], scope)
        size = op("Concat", [op("Mul", [n, ints(g, scope, [hp * wp])], scope), ints(g, scope, [c])], scope, axis=0)
        zeros = op("ConstantOfShape", [size], scope, value=_zero(g))
        summed = op("ScatterND", [zeros, index, rows], scope, reduction="add")  # [N·Hp·Wp, C]
        dx = op("Reshape", [summed, ints(g, scope, [-1, hp, wp, c])], scope)
        if top or left or bottom or right:
            begin, end = ints(g, scope, [top, left]), ints(g, scope, [top + h, left + w])
            dx = op("Slice", [dx, begin, end, ints(g, scope, [1, 2])], scope)
        return op("Transpose", [dx], scope, perm=[0, 3, 1, 2])

    def _input_grad_col2im(self, g: GraphBuilder, dz: str, ctx: Lowering) -> str:
        """dL/dx as ONE batch-wide GEMM and a Col2Im: dcols [N·P, C·kh·kw] = dz2 [N·P, M] @ W [M, C·kh·kw]
        (PyTorch's layout, (c, u, v) order) gives each output pixel's gradient for its whole window;
        Col2Im sums the windows back onto the (unpadded) image, [N, C·kh·kw, P] -> [N, C, H, W].

        NOTE: onnxruntime's ConvTranspose runs one GEMM per image with only Ho·Wo columns: seed's 2x2
        output layer measured 7.3 ms -> 2.4 ms (batch 64, 1 thread), its 6x6 one 15.2 -> 12.5 ms; on 10x10
        outputs the extra Transpose + Col2Im cost more than they save, so larger outputs keep ConvTranspose.
        """
        from .gradients import ints

        scope, (kh, kw), (ho, wo, m), (h, w, c) = ctx.name, self.kernel_size, ctx.out_shape, ctx.in_shape
        dz2 = g.op("Reshape", [g.op("Transpose", [dz], scope, perm=[0, 2, 3, 1]), ints(g, scope, [-1, m])], scope)
        w2 = g.op("Reshape", [ctx.params["weight"], ints(g, scope, [m, -1])], scope)
        dcols = g.op("Reshape", [g.op("Gemm", [dz2, w2], scope), ints(g, scope, [-1, ho * wo, c * kh * kw])], scope)
        dcols = g.op("Transpose", [dcols], scope, perm=[0, 2, 1])
        return g.op(
            "Col2Im",
            [dcols, ints(g, scope, [h, w]), ints(g, scope, [kh, kw])],
            scope,
            dilations=list(self.dilation_rate),
            pads=self.pads(ctx.in_shape),
            strides=list(self.strides),
        )

    def _weight_grad(self, g: GraphBuilder, dz: str, ctx: Lowering) -> str:
        """dW[:, :, u, v] = dz [M, N·Ho·Wo] @ x_p[:, :, d·u + s·i, d·v + s·j]ᵀ [N·Ho·Wo, C]: one GEMM per
        kernel offset (u, v) on a strided Slice of the padded input (channels first).

        NOTE: for kernels up to 3x3 this trained the VGG-style net 1.3x faster in onnxruntime than one
        Conv with batch and channels swapped (whose GEMMs have only kh·kw columns); for 5x5 kernels
        (25 small GEMMs) and groups > 1 the swapped Conv is used.
        """
        from .gradients import ints

        if "cols" in ctx.saved:  # the forward's im2col: one GEMM, dW [M, kh·kw·C] = dz2 [M, N·P] @ cols
            (kh, kw), (_, _, m), c = self.kernel_size, ctx.out_shape, ctx.in_shape[2]
            # NOTE: dz2 as [M, N·P] (a Transpose of the small dz) measured ~10% faster than Gemm's transA=1.
            dzt = g.op("Transpose", [dz], ctx.name, perm=[1, 0, 2, 3])
            dz2 = g.op("Reshape", [dzt, ints(g, ctx.name, [m, -1])], ctx.name)  # [M, N·P]
            dw = g.op("Gemm", [dz2, ctx.saved["cols"]], ctx.name)
            dw = g.op("Reshape", [dw, ints(g, ctx.name, [m, kh, kw, c])], ctx.name)
            return g.op("Transpose", [dw], ctx.name, perm=[0, 3, 1, 2])
        if self.groups > 1 or self.kernel_size[0] * self.kernel_size[1] > 9:
            return self._grouped_weight_grad(g, dz, ctx)

        scope, (kh, kw), (sh, sw), (dh, dw) = ctx.name, self.kernel_size, self.strides, self.dilation_rate
        (ho, wo, m), c = ctx.out_shape, ctx.in_shape[2]
        xt = g.op("Transpose", [ctx.saved["x"]], scope, perm=[1, 0, 2, 3])  # [C, N, H, W]
        top, left, bottom, right = self.pads(ctx.in_shape)
        if top or left or bottom or right:
            xt = g.op("Pad", [xt, ints(g, scope, [0, 0, top, left, 0, 0, bottom, right])], scope)
        dz2 = g.op("Reshape", [g.op("Transpose", [dz], scope, perm=[1, 0, 2, 3]), ints(g, scope, [m, -1])], scope)
        axes, steps, rows = ints(g, scope, [2, 3]), ints(g, scope, [sh, sw]), ints(g, scope, [c, -1])
        columns = []
        for u in range(kh):
            for v in range(kw):
                start = [dh * u, dw * v]
                end = [start[0] + sh * (ho - 1) + 1, start[1] + sw * (wo - 1) + 1]
                patch = g.op("Slice", [xt, ints(g, scope, start), ints(g, scope, end), axes, steps], scope)
                column = g.op("Gemm", [dz2, g.op("Reshape", [patch, rows], scope)], scope, transB=1)  # [M, C]
                columns.append(g.op("Unsqueeze", [column, ints(g, scope, [2])], scope))
        stacked = g.op("Concat", columns, scope, axis=2) if len(columns) > 1 else columns[0]
        return g.op("Reshape", [stacked, ints(g, scope, [m, c, kh, kw])], scope)

    def _grouped_weight_grad(self, g: GraphBuilder, dz: str, ctx: Lowering) -> str:
        # Batch as channels: x -> [C/g, g·N, H, W] (for group k the channels k·N..k·N+N-1 are its
        # images), dz -> [M, N, Ho, Wo] as the kernel; a grouped Conv gives [C/g, M, kh', kw'].
        from .gradients import ints, leftover

        h, w, c = ctx.in_shape
        scope, g_ = ctx.name, self.groups
        x = ctx.saved["x"]
        if g_ == 1:
            xt = g.op("Transpose", [x], scope, perm=[1, 0, 2, 3])
        else:
            split = g.op("Reshape", [x, ints(g, scope, [0, g_, c // g_, h, w])], scope)
            xt = g.op("Transpose", [split], scope, perm=[2, 1, 0, 3, 4])
            xt = g.op("Reshape", [xt, ints(g, scope, [c // g_, -1, h, w])], scope)
        dzt = g.op("Transpose", [dz], scope, perm=[1, 0, 2, 3])
        top, left, bottom, right = self.pads(ctx.in_shape)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        # Pixels after the last window are never read; trimming them from the end padding (when it
        # has enough) makes the kernel-sized result exact, else a Slice trims it.
        rh, rw = leftover(h, top, bottom, kh, sh, dh), leftover(w, left, right, kw, sw, dw)
        bottom2, right2 = max(bottom - rh, 0), max(right - rw, 0)
        dw_ = g.op(
            "Conv", [xt, dzt], scope, strides=[dh, dw], dilations=[sh, sw], group=g_, pads=[top, left, bottom2, right2]
        )
        if bottom2 != bottom - rh or right2 != right - rw:
            dw_ = g.op("Slice", [dw_, ints(g, scope, [0, 0]), ints(g, scope, [kh, kw]), ints(g, scope, [2, 3])], scope)
        return g.op("Transpose", [dw_], scope, perm=[1, 0, 2, 3])


def _zero(g: GraphBuilder) -> Any:
    from onnx import helper

    from .gradients import float_type

    return helper.make_tensor("value", float_type(g), [1], [0.0])


def _zero_padding_check(value: Any) -> Any:
    """p | [ph, pw] | [[top, bottom], [left, right]] -> ((top, bottom), (left, right))."""

    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WINDOW

    if ok(value):
        return ((value, value), (value, value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if all(ok(v) for v in value):
            return ((value[0], value[0]), (value[1], value[1]))
        if all(isinstance(v, (list, tuple)) and len(v) == 2 and ok(v[0]) and ok(v[1]) for v in value):
            return ((value[0][0], value[0][1]), (value[1][0], value[1][1]))
    raise PydanticCustomError(
        "cnnspec_padding",
        "must be an integer ≥ 0, [ph, pw] or [[top, bottom], [left, right]], got {got}",
        {"got": repr(value)},
    )


class ZeroPadding2D(Layer):
    """Pads the image with zeros (Keras's ZeroPadding2D)."""

    type: Literal["ZeroPadding2D"]
    padding: Annotated[
        int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]], BeforeValidator(_zero_padding_check)
    ] = ((1, 1), (1, 1))

    keras_name: ClassVar[str] = "zero_padding2d"

    def output_shape(self, shape: Shape) -> Shape:
        require_image("ZeroPadding2D", shape)
        (top, bottom), (left, right) = self.padding
        return (shape[0] + top + bottom, shape[1] + left + right, shape[2])

    def padding_applied(self, shape: Shape) -> str:
        (top, bottom), (left, right) = self.padding
        return pads_text(top, bottom, left, right)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        import numpy as np

        (top, bottom), (left, right) = self.padding
        pads = g.constant(ctx.name, np.array([0, 0, top, left, 0, 0, bottom, right]), dtype=np.int64)
        return g.op("Pad", [x, pads], ctx.name, mode="constant")

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = pad(x): dL/dx is dL/dy without the padded border (a Slice)."""
        from .gradients import ints

        (top, _), (left, _) = self.padding
        h, w, _ = ctx.in_shape
        starts, ends = ints(g, ctx.name, [top, left]), ints(g, ctx.name, [top + h, left + w])
        return g.op("Slice", [dy, starts, ends, ints(g, ctx.name, [2, 3])], ctx.name), {}
