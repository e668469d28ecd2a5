"""MaxPooling2D, AveragePooling2D and the global poolings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from .base import Layer, Lowering, Pair, StrictBool, pads_text, require_image, spatial_windows

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape


class _Pooling2D(Layer):
    """Shared shape rule: Keras's pooling arithmetic, strides default to pool_size."""

    pool_size: Pair = (2, 2)
    strides: Pair | None = None
    padding: Literal["valid", "same"] = "valid"

    onnx_op: ClassVar[str]

    @property
    def stride_pair(self) -> tuple[int, int]:
        return self.strides or self.pool_size

    def _windows(self, shape: Shape):
        return spatial_windows("pool", shape, self.pool_size, self.stride_pair, (1, 1), self.padding)

    def output_shape(self, shape: Shape) -> Shape:
        require_image(self.type, shape)
        h, w = self._windows(shape)
        return (h.out, w.out, shape[2])

    def pads(self, shape: Shape) -> list[int]:
        h, w = self._windows(shape)
        return [h.pad_before, w.pad_before, h.pad_after, w.pad_after]

    def padding_applied(self, shape: Shape) -> str:
        top, left, bottom, right = self.pads(shape)
        return pads_text(top, bottom, left, right)

    def flops(self, shape: Shape, out: Shape) -> int:
        return out[0] * out[1] * out[2] * self.pool_size[0] * self.pool_size[1]

    def window(self, shape: Shape):
        return self.pool_size, self.stride_pair, (1, 1)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        # NOTE: Keras's average pooling with 'same' divides by the number of real (unpadded) pixels:
        # count_include_pad=0. Max pooling ignores the padding in both.
        extra = {"count_include_pad": 0} if self.onnx_op == "AveragePool" else {}
        # In training, MaxPool also outputs where each maximum came from (flat NCHW indices).
        # NOTE: comparing x with the upsampled maximum (no Indices) measured slower in onnxruntime.
        outputs = 2 if ctx.training and self.onnx_op == "MaxPool" else 1
        y = g.op(
            self.onnx_op,
            [x],
            ctx.name,
            outputs=outputs,
            kernel_shape=list(self.pool_size),
            strides=list(self.stride_pair),
            pads=self.pads(ctx.in_shape),
            **extra,
        )
        if outputs == 2:
            y, ctx.saved["indices"] = y
        ctx.saved.update(x=x, y=y)
        return y

    def _tiles(self, shape: Shape) -> bool:
        """The windows tile the image exactly: stride = pool size, no padding, sizes divisible."""
        (kh, kw), (h, w) = self.pool_size, shape[:2]
        return self.stride_pair == self.pool_size and not any(self.pads(shape)) and h % kh == 0 and w % kw == 0

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Max: each dy goes to the input pixel that was its window's maximum, summed where windows
        overlap: dx = scatter-add of dy at MaxPool's flat indices (which ignore the padding); MaxUnpool
        when the windows tile the image.

        Average (padding not counted, as Keras): y[i] = Σ_{p ∈ win(i) ∩ image} x[p] / count[i], so
        dx[p] = Σ_{i : p ∈ win(i)} dy[i] / count[i]: a transposed convolution of dy / count by a
        kernel of ones, with output_padding for the pixels after the last window.
        """
        import numpy as np

        from .gradients import ints, output_padding, zeros_like

        scope, x = ctx.name, ctx.saved["x"]
        if self.onnx_op == "MaxPool" and self._tiles(ctx.in_shape) and g.device == "cpu":  # no CUDA MaxUnpool
            # Windows that tile the image: each pixel is the maximum of one window at most, so placing
            # dy at the indices (MaxUnpool) is the scatter-add. NOTE: measured 2.3 -> 0.7 ms on seed's
            # first pool (1 thread) against ConstantOfShape + ScatterElements. Only exact tilings: onnx's
            # reference MaxUnpool sizes its flat output from the pooled shape, not from output_shape.
            return g.op(
                "MaxUnpool",
                [dy, ctx.saved["indices"], g.op("Shape", [x], scope)],
                scope,
                kernel_shape=list(self.pool_size),
                strides=list(self.stride_pair),
            ), {}
        if self.onnx_op == "MaxPool":
            flat = g.op("Reshape", [x, ints(g, scope, [-1])], scope)
            index = g.op("Reshape", [ctx.saved["indices"], ints(g, scope, [-1])], scope)
            dy_flat = g.op("Reshape", [dy, ints(g, scope, [-1])], scope)
            summed = g.op("ScatterElements", [zeros_like(g, flat, scope), index, dy_flat], scope, reduction="add")
            return g.op("Reshape", [summed, g.op("Shape", [x], scope)], scope), {}
        (h, w, c), (ho, wo, _) = ctx.in_shape, ctx.out_shape
        pads = self.pads(ctx.in_shape)
        counts = self._counts(ctx.in_shape, pads, ho, wo)
        scaled = g.op("Div", [dy, g.constant(scope, counts.reshape(1, 1, ho, wo))], scope)
        single = g.op("Reshape", [scaled, ints(g, scope, [-1, 1, ho, wo])], scope)  # channels as images
        ones = g.constant(scope, np.ones((1, 1, *self.pool_size)))
        dx = g.op(
            "ConvTranspose",
            [single, ones],
            scope,
            kernel_shape=list(self.pool_size),
            strides=list(self.stride_pair),
            pads=pads,
            output_padding=output_padding(ctx.in_shape, pads, self.pool_size, self.stride_pair, (1, 1)),
        )
        return g.op("Reshape", [dx, ints(g, scope, [-1, c, h, w])], scope), {}

    def _counts(self, shape: Shape, pads: list[int], ho: int, wo: int) -> np.ndarray:
        """Real (unpadded) pixels in each window: the product of the per-axis counts."""
        import numpy as np

        per_axis = []
        for a, n in ((0, ho), (1, wo)):
            start = np.arange(n) * self.stride_pair[a] - pads[a]
            stop = np.minimum(start + self.pool_size[a], shape[a])
            per_axis.append(stop - np.maximum(start, 0))
        return np.outer(per_axis[0], per_axis[1]).astype(np.float64)


class MaxPooling2D(_Pooling2D):
    type: Literal["MaxPooling2D"]
    keras_name: ClassVar[str] = "max_pooling2d"
    onnx_op: ClassVar[str] = "MaxPool"


class AveragePooling2D(_Pooling2D):
    type: Literal["AveragePooling2D"]
    keras_name: ClassVar[str] = "average_pooling2d"
    onnx_op: ClassVar[str] = "AveragePool"


class _GlobalPooling2D(Layer):
    """(H, W, C) -> (C,), or (1, 1, C) with keepdims (as Keras; squeeze-excite gates need it)."""

    # Left out of the normalized spec when false, so specs written before it compile to the same bytes.
    keepdims: Annotated[StrictBool, Field(exclude_if=lambda keep: keep is False)] = False

    onnx_op: ClassVar[str]

    def output_shape(self, shape: Shape) -> Shape:
        require_image(self.type, shape)
        return (1, 1, shape[2]) if self.keepdims else (shape[2],)

    def flops(self, shape: Shape, out: Shape) -> int:
        return shape[0] * shape[1] * shape[2]

    def window(self, shape: Shape):
        return (shape[0], shape[1]), (1, 1), (1, 1)  # sees the whole map

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        pooled = g.op(self.onnx_op, [x], ctx.name)
        y = pooled if self.keepdims else g.op("Flatten", [pooled], ctx.name, axis=1)
        ctx.saved.update(x=x, y=y)
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Average: dx[n,c,h,w] = dy[n,c] / (H·W).  Max: dy goes to the maxima of each map, shared
        equally among ties (a valid subgradient): dx = dy · [x = max] / #ties."""
        from .gradients import float_type, ints, reduce_sum

        h, w, c = ctx.in_shape
        scope, x = ctx.name, ctx.saved["x"]
        dy4 = g.op("Reshape", [dy, ints(g, scope, [-1, c, 1, 1])], scope)
        if self.onnx_op == "GlobalAveragePool":
            scaled = g.op("Mul", [dy4, g.constant(scope, 1.0 / (h * w))], scope)
            return g.op("Expand", [scaled, g.op("Shape", [x], scope)], scope), {}
        y4 = g.op("Reshape", [ctx.saved["y"], ints(g, scope, [-1, c, 1, 1])], scope)
        mask = g.op("Cast", [g.op("Equal", [x, y4], scope)], scope, to=float_type(g))
        ties = reduce_sum(g, mask, [2, 3], scope, keepdims=1)
        return g.op("Mul", [mask, g.op("Div", [dy4, ties], scope)], scope), {}


class GlobalAveragePooling2D(_GlobalPooling2D):
    type: Literal["GlobalAveragePooling2D"]
    keras_name: ClassVar[str] = "global_average_pooling2d"
    onnx_op: ClassVar[str] = "GlobalAveragePool"


class GlobalMaxPooling2D(_GlobalPooling2D):
    type: Literal["GlobalMaxPooling2D"]
    keras_name: ClassVar[str] = "global_max_pooling2d"
    onnx_op: ClassVar[str] = "GlobalMaxPool"
