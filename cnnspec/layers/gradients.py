"""Small graph helpers shared by the layers' backward rules (and the training program).

They hide two ONNX wrinkles: the axes of ReduceMean became an input in opset 18 (ReduceSum's in
opset 13), and float constants/casts must follow the builder's dtype (float32, or float64 in the
gradient checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx import TensorProto, helper

if TYPE_CHECKING:
    from ..builder import GraphBuilder


def float_type(g: GraphBuilder) -> int:
    return TensorProto.DOUBLE if g.dtype.itemsize == 8 else TensorProto.FLOAT


def ints(g: GraphBuilder, scope: str, values: list[int]) -> str:
    return g.constant(scope, values, "int64")


def reduce_sum(g: GraphBuilder, x: str, axes: list[int], scope: str, keepdims: int = 0) -> str:
    return g.op("ReduceSum", [x, ints(g, scope, axes)], scope, keepdims=keepdims)


def reduce_mean(g: GraphBuilder, x: str, axes: list[int], scope: str, keepdims: int = 1) -> str:
    if g.opset >= 18:
        return g.op("ReduceMean", [x, ints(g, scope, axes)], scope, keepdims=keepdims)
    return g.op("ReduceMean", [x], scope, axes=axes, keepdims=keepdims)


def zeros_like(g: GraphBuilder, x: str, scope: str) -> str:
    value = helper.make_tensor("value", float_type(g), [1], [0.0])
    return g.op("ConstantOfShape", [g.op("Shape", [x], scope)], scope, value=value)


def channel_axes(shape: tuple[int, ...]) -> list[int]:
    """The axes a per-channel statistic reduces over: N, H, W of NCHW, or N of (N, C)."""
    return [0, 2, 3] if len(shape) == 3 else [0]


def leftover(size: int, pad_before: int, pad_after: int, kernel: int, stride: int, dilation: int) -> int:
    """Padded pixels after the last window: (size + pads - extent) mod stride.

    E.g. size 6, no pads, k 3, s 2: windows start at 0 and 2 and cover 0..4; pixel 5 is left over (1).
    The transposed convolution of a backward pass adds them back as `output_padding`.
    """
    return (size + pad_before + pad_after - ((kernel - 1) * dilation + 1)) % stride


def output_padding(in_shape: tuple[int, ...], pads: list[int], kernel, strides, dilation) -> list[int]:
    """Per spatial axis, `leftover` for a window on the (H, W, C) input with ONNX pads [t, l, b, r]."""
    return [leftover(in_shape[a], pads[a], pads[a + 2], kernel[a], strides[a], dilation[a]) for a in (0, 1)]
