"""Pure integer shape arithmetic with Keras's semantics. No numpy, no onnx.

Shapes in specs are Keras's channels-last `(H, W, C)` without the batch, or `(units,)` once flat.
The ONNX graph is NCHW; `hwc_to_chw` converts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Shape = tuple[int, ...]
Padding = Literal["valid", "same"] | int


@dataclass(frozen=True)
class Window:
    """One spatial axis of a sliding window: the output size and the padding actually applied."""

    out: int
    pad_before: int
    pad_after: int


def effective_kernel(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel: (k-1)*d + 1. E.g. k=3, d=2 covers 5 pixels."""
    return (kernel - 1) * dilation + 1


def window(size: int, kernel: int, stride: int, dilation: int, padding: Padding) -> Window:
    """Output size and padding of a conv/pool along one axis, exactly as Keras computes it.

    valid: out = floor((in - (k-1)*d - 1) / s) + 1            e.g. in 28, k 5 -> 24
    same:  out = ceil(in / s); total pad = max((out-1)*s + (k-1)*d + 1 - in, 0),
           split with the odd pixel at the bottom/right         e.g. in 5, k 2, s 2 -> 3, pads (0, 1)
    int p: symmetric explicit padding (PyTorch's meaning): out = floor((in + 2p - (k-1)*d - 1)/s) + 1

    `out` may be zero or negative: the caller reports that with the arithmetic.
    """
    extent = effective_kernel(kernel, dilation)
    if padding == "valid":
        return Window((size - extent) // stride + 1, 0, 0)
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + extent - size, 0)
        return Window(out, total // 2, total - total // 2)
    return Window((size + 2 * padding - extent) // stride + 1, padding, padding)


def window_formula(size: int, kernel: int, stride: int, dilation: int, padding: Padding) -> str:
    """The arithmetic of `window` written out with the values, for error messages."""
    out = window(size, kernel, stride, dilation, padding).out
    if padding == "same":
        return f"out = ceil({size}/{stride}) = {out}"
    extent = f"{kernel}" if dilation == 1 else f"(({kernel}-1)*{dilation}+1)"
    pad = "" if padding == "valid" else f"+2*{padding}"
    return f"out = floor(({size}{pad}-{extent})/{stride})+1 = {out}"


def hwc_to_chw(shape: Shape) -> Shape:
    """(H, W, C) -> (C, H, W); flat shapes are unchanged."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def numel(shape: Shape) -> int:
    return math.prod(shape)
