"""UpSampling2D, Cropping2D, Reshape, Identity and Rescaling: layers that move or scale values, no weights."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from ..shapes import hwc_to_chw, numel
from .base import Float, Layer, Lowering, Pair, ShapeError, _got, require_image
from .conv import _zero_padding_check

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape

MAX_TARGET = 1 << 30


def interpolation_matrix(size: int, factor: int) -> np.ndarray:
    """A [size·factor, size] matrix: row i holds the weights Keras's bilinear resize gives the input pixels.

    Half-pixel centres, no antialiasing (tf.image.resize / keras.ops.image.resize): output pixel i samples
    the input at src = (i + 1/2) / factor - 1/2, between floor(src) and floor(src) + 1 with weights
    (1 - frac, frac), clamped to the edge pixels (so src < 0 or src > size - 1 reads the edge).
    E.g. size 2, factor 2: src = -0.25, 0.25, 0.75, 1.25 -> rows [1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1].
    """
    import numpy as np

    out = size * factor
    matrix = np.zeros((out, size))
    for i in range(out):
        src = (i + 0.5) / factor - 0.5
        low = math.floor(src)
        frac = src - low
        matrix[i, min(max(low, 0), size - 1)] += 1.0 - frac
        matrix[i, min(max(low + 1, 0), size - 1)] += frac
    return matrix


class UpSampling2D(Layer):
    """Repeats each pixel size_h x size_w times ('nearest'), or resizes bilinearly as Keras does ('bilinear').

    No Resize op: the inference allowlist (modelfile.py) leaves out ops that allocate from runtime values,
    and onnxruntime-training has no Resize gradient on the CPU. Nearest is a broadcasting Mul by ones;
    bilinear is y = A_h · x · A_wᵀ with the fixed interpolation matrices above (two MatMuls).
    """

    type: Literal["UpSampling2D"]
    size: Pair = (2, 2)
    interpolation: Literal["nearest", "bilinear"] = "nearest"

    keras_name: ClassVar[str] = "up_sampling2d"

    def output_shape(self, shape: Shape) -> Shape:
        require_image("UpSampling2D", shape)
        return (shape[0] * self.size[0], shape[1] * self.size[1], shape[2])

    def flops(self, shape: Shape, out: Shape) -> int:
        if self.interpolation == "nearest":
            return 0
        (h, w, c), (ho, wo, _) = shape, out
        return 2 * c * (h * w * wo + ho * h * wo)  # the two MatMuls

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        from .gradients import ints

        (h, w, _), (sh, sw), scope = ctx.in_shape, self.size, ctx.name
        if self.interpolation == "nearest":
            import numpy as np

            split = g.op("Reshape", [x, ints(g, scope, [0, 0, h, 1, w, 1])], scope)
            tiled = g.op("Mul", [split, g.constant(scope, np.ones((1, sh, 1, sw)))], scope)  # [N, C, H, sh, W, sw]
            return g.op("Reshape", [tiled, ints(g, scope, [0, 0, h * sh, w * sw])], scope)
        rows = g.op("MatMul", [x, g.constant(scope, interpolation_matrix(w, sw).T)], scope)  # [N, C, H, W·sw]
        return g.op("MatMul", [g.constant(scope, interpolation_matrix(h, sh)), rows], scope)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Nearest: y[i, j] = x[i // sh, j // sw], so dx[p, q] = Σ of dy over its sh x sw block (Reshape + ReduceSum).

        Bilinear: y = A_h x A_wᵀ is linear in x, so dx = A_hᵀ dy A_w (the transposed interpolation).
        """
        from .gradients import ints, reduce_sum

        (h, w, _), (sh, sw), scope = ctx.in_shape, self.size, ctx.name
        if self.interpolation == "nearest":
            blocks = g.op("Reshape", [dy, ints(g, scope, [0, 0, h, sh, w, sw])], scope)
            return reduce_sum(g, blocks, [3, 5], scope), {}
        cols = g.op("MatMul", [dy, g.constant(scope, interpolation_matrix(w, sw))], scope)  # [N, C, H·sh, W]
        return g.op("MatMul", [g.constant(scope, interpolation_matrix(h, sh).T), cols], scope), {}


Cropping = Annotated[
    int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]], BeforeValidator(_zero_padding_check)
]


class Cropping2D(Layer):
    """Removes rows and columns at the borders: cropping = c | [ch, cw] | [[top, bottom], [left, right]]."""

    type: Literal["Cropping2D"]
    cropping: Cropping = ((0, 0), (0, 0))

    keras_name: ClassVar[str] = "cropping2d"

    def output_shape(self, shape: Shape) -> Shape:
        require_image("Cropping2D", shape)
        (top, bottom), (left, right) = self.cropping
        h, w = shape[0] - top - bottom, shape[1] - left - right
        for axis, (size, before, after, out) in enumerate(((shape[0], top, bottom, h), (shape[1], left, right, w))):
            if out < 1:
                name = ("height", "width")[axis]
                raise ShapeError(
                    "cropping",
                    f"cropping {before}+{after} does not leave any of the input's {name} {size}: "
                    f"output {name} would be {size}-{before}-{after} = {out}",
                    f"crop at most {size - 1} {('rows', 'columns')[axis]} in all, or crop before the layers "
                    "that shrink the image",
                )
        return (h, w, shape[2])

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        from .gradients import ints

        (top, _), (left, _) = self.cropping
        h, w, _ = ctx.out_shape
        starts, ends = ints(g, ctx.name, [top, left]), ints(g, ctx.name, [top + h, left + w])
        return g.op("Slice", [x, starts, ends, ints(g, ctx.name, [2, 3])], ctx.name)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x[top : H-bottom, left : W-right]: dx is dy with the cropped border back as zeros (a Pad)."""
        from .gradients import ints

        (top, bottom), (left, right) = self.cropping
        return g.op("Pad", [dy, ints(g, ctx.name, [0, 0, top, left, 0, 0, bottom, right])], ctx.name), {}


def _target_check(value: Any) -> Any:
    items = list(value) if isinstance(value, (list, tuple)) else None
    if (
        not items
        or any(isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or 1 <= v <= MAX_TARGET) for v in items)
        or items.count(-1) > 1
    ):
        raise PydanticCustomError(
            "cnnspec_target_shape",
            "must be a list of sizes ≥ 1 (channels last, no batch), at most one of them -1, got {got}",
            {"got": _got(value)},
        )
    return tuple(items)


class Reshape(Layer):
    """Keras's Reshape: target_shape is channels-last (H, W, C) or flat (units,), without the batch.

    The values keep Keras's order: an (H, W, C) tensor is read and written in H, W, C order. In the NCHW graph
    that is a plain Reshape when the two orders agree (flat <-> 1x1xC, H x W x 1, or only H and W change);
    otherwise the tensor goes to NHWC, is reshaped and comes back (Transposes). NOTE: so Reshape to (n,) of an
    image flattens in Keras's HWC order, unlike Flatten (channel-major, as PyTorch).
    """

    type: Literal["Reshape"]
    target_shape: Annotated[tuple[int, ...], BeforeValidator(_target_check)]

    keras_name: ClassVar[str] = "reshape"

    def output_shape(self, shape: Shape) -> Shape:
        target, total = list(self.target_shape), numel(shape)
        if len(target) not in (1, 3):
            raise ShapeError(
                "target_shape",
                f"target_shape {target} has {len(target)} dimensions: cnnspec's tensors are images (H, W, C) or "
                f"flat (units,), so a rank-{len(target) + 1} tensor (with the batch) cannot be expressed",
                "reshape to (H, W, C) or to (units,)",
            )
        known = math.prod(v for v in target if v != -1)
        if -1 in target:
            if total % known:
                raise ShapeError(
                    "target_shape",
                    f"target_shape {target} cannot hold the input's {total:,} values: {total:,} is not a "
                    f"multiple of {known:,}",
                    "sizes whose product divides the input's size",
                )
            target[target.index(-1)] = total // known
        elif known != total:
            written = "x".join(map(str, shape)) if len(shape) == 3 else f"flat input {list(shape)}"
            raise ShapeError(
                "target_shape",
                f"target_shape {target} holds {'*'.join(map(str, target))} = {known:,} values but the "
                f"{'input ' if len(shape) == 3 else ''}{written} holds {total:,}",
                "sizes whose product equals the input's size (one of them may be -1)",
            )
        return tuple(target)

    @staticmethod
    def _keeps_layout(a: Shape, b: Shape) -> bool:
        """The NCHW order of the values equals Keras's (H, W, C) order on both sides, or only H, W change."""

        def plain(s: Shape) -> bool:  # flat, one channel, or one pixel: CHW order == HWC order
            return len(s) == 1 or s[2] == 1 or s[0] * s[1] == 1

        return (plain(a) and plain(b)) or (len(a) == len(b) == 3 and a[2] == b[2])

    def _move(self, g: GraphBuilder, x: str, scope: str, src: Shape, dst: Shape) -> str:
        """Keras's reshape of `x` (NCHW or flat, shaped `src`) to `dst`, in the graph's layout."""
        from .gradients import ints

        if self._keeps_layout(src, dst):
            return g.op("Reshape", [x, ints(g, scope, [-1, *hwc_to_chw(dst)])], scope)
        if len(src) == 3:
            x = g.op("Transpose", [x], scope, perm=[0, 2, 3, 1])  # NCHW -> NHWC: Keras's order
        x = g.op("Reshape", [x, ints(g, scope, [-1, *dst])], scope)
        return g.op("Transpose", [x], scope, perm=[0, 3, 1, 2]) if len(dst) == 3 else x

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return self._move(g, x, ctx.name, ctx.in_shape, ctx.out_shape)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """A permutation of the values: dx is dy moved back by the inverse reshape (and transposes)."""
        return self._move(g, dy, ctx.name, ctx.out_shape, ctx.in_shape), {}


class Identity(Layer):
    """y = x (Keras's Identity: a placeholder, e.g. where a block leaves out its normalization)."""

    type: Literal["Identity"]
    keras_name: ClassVar[str] = "identity"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return g.op("Identity", [x], ctx.name)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x: dx = dy."""
        return dy, {}


class Rescaling(Layer):
    """y = x * scale + offset (Keras's Rescaling, e.g. scale 1/127.5, offset -1 maps 0..255 to -1..1)."""

    type: Literal["Rescaling"]
    scale: Float()
    offset: Float() = 0.0

    keras_name: ClassVar[str] = "rescaling"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        y = g.op("Mul", [x, g.constant(ctx.name, self.scale)], ctx.name)
        return g.op("Add", [y, g.constant(ctx.name, self.offset)], ctx.name) if self.offset else y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = scale · x + offset: dx = scale · dy."""
        return g.op("Mul", [dy, g.constant(ctx.name, self.scale)], ctx.name), {}
