"""MaxPooling2D, AveragePooling2D and the global poolings."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from .base import Layer, Lowering, Pair, pads_text, require_image, spatial_windows

if TYPE_CHECKING:
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
        y = g.op(
            self.onnx_op,
            [x],
            ctx.name,
            kernel_shape=list(self.pool_size),
            strides=list(self.stride_pair),
            pads=self.pads(ctx.in_shape),
            **extra,
        )
        ctx.saved.update(x=x, y=y)
        return y


class MaxPooling2D(_Pooling2D):
    type: Literal["MaxPooling2D"]
    keras_name: ClassVar[str] = "max_pooling2d"
    onnx_op: ClassVar[str] = "MaxPool"


class AveragePooling2D(_Pooling2D):
    type: Literal["AveragePooling2D"]
    keras_name: ClassVar[str] = "average_pooling2d"
    onnx_op: ClassVar[str] = "AveragePool"


class _GlobalPooling2D(Layer):
    """(H, W, C) -> (C,), as Keras's default keepdims=False."""

    onnx_op: ClassVar[str]

    def output_shape(self, shape: Shape) -> Shape:
        require_image(self.type, shape)
        return (shape[2],)

    def flops(self, shape: Shape, out: Shape) -> int:
        return shape[0] * shape[1] * shape[2]

    def window(self, shape: Shape):
        return (shape[0], shape[1]), (1, 1), (1, 1)  # sees the whole map

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        pooled = g.op(self.onnx_op, [x], ctx.name)
        y = g.op("Flatten", [pooled], ctx.name, axis=1)
        ctx.saved.update(x=x, y=y)
        return y


class GlobalAveragePooling2D(_GlobalPooling2D):
    type: Literal["GlobalAveragePooling2D"]
    keras_name: ClassVar[str] = "global_average_pooling2d"
    onnx_op: ClassVar[str] = "GlobalAveragePool"


class GlobalMaxPooling2D(_GlobalPooling2D):
    type: Literal["GlobalMaxPooling2D"]
    keras_name: ClassVar[str] = "global_max_pooling2d"
    onnx_op: ClassVar[str] = "GlobalMaxPool"
