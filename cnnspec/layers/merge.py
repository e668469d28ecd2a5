"""The merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum and Concatenate (Keras's names).

They take several inputs (`inputs: [a, b, ...]`) and have no parameters. Shapes follow Keras's merge rule:
the inputs have the same rank and each dimension is equal or 1 (broadcast), so a squeeze-excite gate
(1, 1, C) multiplies an (H, W, C) map. In NCHW a Keras (1, 1, C) is [N, C, 1, 1], which ONNX broadcasts
against [N, C, H, W] as it is.

Backward, with y the output and dy = dL/dy, for each input xᵢ (then summed over the axes where xᵢ was
broadcast, keeping them, so dxᵢ has xᵢ's shape):
  Add:        dxᵢ = dy                      Subtract:  dx₀ = dy,  dx₁ = -dy
  Average:    dxᵢ = dy / n                  Multiply:  dxᵢ = dy ⊙ Π_{j≠i} xⱼ
  Maximum, Minimum: dxᵢ = dy ⊙ [xᵢ = y] / #{j : xⱼ = y}   (ties share dy: a valid subgradient)
  Concatenate: dy split back into the inputs' sizes along the concatenated axis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from ..shapes import numel
from .base import Int, Layer, Lowering, ShapeError

if TYPE_CHECKING:
    from ..builder import GraphBuilder
    from ..shapes import Shape

BROADCAST_HINT = (
    "make the shapes equal, or reduce one to 1s where it should broadcast (GlobalAveragePooling2D with "
    "keepdims: true gives 1x1xC)"
)

PROJECTION_HINT = (
    "where a branch changes the size or the channels, give the other path the same change: a projection "
    "shortcut (Conv2D with kernel_size 1 and the branch's strides and filters, as ResNet does) or pooling"
)


def _shown(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _nchw_axis(shape: Shape, axis: int) -> int:
    """A Keras shape axis (0-based, no batch) -> the ONNX tensor's axis: H, W, C -> 2, 3, 1; units -> 1."""
    return (2, 3, 1)[axis] if len(shape) == 3 else 1


class _Merge(Layer):
    arity: ClassVar[tuple[int, int | None]] = (2, None)

    def output_shape(self, shape: Shape) -> Shape:  # only reached through infer_shape
        raise NotImplementedError

    def _operands(self, shapes: tuple[Shape, ...]) -> None:
        fewest, most = self.arity
        if len(shapes) < fewest or (most is not None and len(shapes) > most):
            exactly = f"exactly {fewest}" if most == fewest else f"at least {fewest}"
            raise ShapeError(
                "inputs",
                f"{self.type} takes {exactly} inputs, got {len(shapes)}",
                f"list {exactly} names in inputs: [a, b]",
            )

    def infer_shape(self, shapes: tuple[Shape, ...]) -> Shape:
        """Keras's elementwise rule: same rank; per dimension equal, or 1 (which broadcasts)."""
        self._operands(shapes)
        names = self.inputs or ()
        out = list(shapes[0])
        for i, shape in enumerate(shapes[1:], start=1):
            if len(shape) != len(out) or any(a != b and 1 not in (a, b) for a, b in zip(shape, out, strict=True)):
                first = f"'{names[0]}' is {_shown(shapes[0])}" if names else _shown(shapes[0])
                other = f"'{names[i]}' is {_shown(shape)}" if len(names) > i else _shown(shape)
                hint = PROJECTION_HINT if len(shape) == 3 and 1 not in shape + shapes[0] else BROADCAST_HINT
                raise ShapeError("inputs", f"inputs have incompatible shapes: {first}, {other}", hint)
            out = [max(a, b) for a, b in zip(out, shape, strict=True)]
        return tuple(out)

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(out)

    def backward_node(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[list[str | None], dict[str, str]]:
        xs = list(ctx.input_tensors)
        dxs = [
            _unbroadcast(g, self._input_grad(g, dy, ctx, i, xs), ctx.in_shapes[i], ctx.out_shape, ctx.name)
            if wanted
            else None
            for i, wanted in enumerate(ctx.needs_dx)
        ]
        return dxs, {}

    def _input_grad(self, g: GraphBuilder, dy: str, ctx: Lowering, i: int, xs: list[str]) -> str:
        return dy


def _unbroadcast(g: GraphBuilder, dx: str, shape: Shape, out: Shape, scope: str) -> str:
    """Sum dx over the axes where the input had 1 and the output more (keeping them): the input's shape."""
    from .gradients import reduce_sum

    axes = sorted(_nchw_axis(shape, a) for a, (n, m) in enumerate(zip(shape, out, strict=True)) if n == 1 < m)
    return reduce_sum(g, dx, axes, scope, keepdims=1) if axes else dx


class Add(_Merge):
    type: Literal["Add"]
    keras_name: ClassVar[str] = "add"

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        return g.op("Add" if len(xs) == 2 else "Sum", xs, ctx.name)


class Subtract(_Merge):
    type: Literal["Subtract"]
    keras_name: ClassVar[str] = "subtract"
    arity: ClassVar[tuple[int, int | None]] = (2, 2)

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        return g.op("Sub", xs, ctx.name)

    def _input_grad(self, g: GraphBuilder, dy: str, ctx: Lowering, i: int, xs: list[str]) -> str:
        return dy if i == 0 else g.op("Neg", [dy], ctx.name)


class Multiply(_Merge):
    type: Literal["Multiply"]
    keras_name: ClassVar[str] = "multiply"

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        y = xs[0]
        for x in xs[1:]:
            y = g.op("Mul", [y, x], ctx.name)
        return y

    def _input_grad(self, g: GraphBuilder, dy: str, ctx: Lowering, i: int, xs: list[str]) -> str:
        dx = dy
        for j, x in enumerate(xs):
            if j != i:
                dx = g.op("Mul", [dx, x], ctx.name)
        return dx


class Average(_Merge):
    type: Literal["Average"]
    keras_name: ClassVar[str] = "average"

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        total = g.op("Add" if len(xs) == 2 else "Sum", xs, ctx.name)
        return g.op("Div", [total, g.constant(ctx.name, float(len(xs)))], ctx.name)  # Keras: sum, then / n

    def _input_grad(self, g: GraphBuilder, dy: str, ctx: Lowering, i: int, xs: list[str]) -> str:
        return g.op("Div", [dy, g.constant(ctx.name, float(len(xs)))], ctx.name)


class _Extremum(_Merge):
    onnx_op: ClassVar[str]

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        ctx.saved["y"] = g.op(self.onnx_op, xs, ctx.name)
        return ctx.saved["y"]

    def backward_node(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[list[str | None], dict[str, str]]:
        from .gradients import float_type

        equal = [g.op("Equal", [x, ctx.saved["y"]], ctx.name) for x in ctx.input_tensors]
        hits = [g.op("Cast", [e], ctx.name, to=float_type(g)) for e in equal]
        shared = g.op("Div", [dy, g.op("Sum", hits, ctx.name)], ctx.name)  # dy / #ties
        dxs = [
            _unbroadcast(g, g.op("Mul", [shared, hit], ctx.name), ctx.in_shapes[i], ctx.out_shape, ctx.name)
            if wanted
            else None
            for i, (hit, wanted) in enumerate(zip(hits, ctx.needs_dx, strict=True))
        ]
        return dxs, {}


class Maximum(_Extremum):
    type: Literal["Maximum"]
    keras_name: ClassVar[str] = "maximum"
    onnx_op: ClassVar[str] = "Max"


class Minimum(_Extremum):
    type: Literal["Minimum"]
    keras_name: ClassVar[str] = "minimum"
    onnx_op: ClassVar[str] = "Min"


class Concatenate(_Merge):
    """Joins the inputs along `axis`, Keras's axis which counts the batch: for images -1 and 3 are the
    channels, 1 the height and 2 the width; for flat inputs -1 and 1 the units. 0 (the batch) is refused."""

    type: Literal["Concatenate"]
    axis: Int(ge=-3, le=3) = -1
    keras_name: ClassVar[str] = "concatenate"

    def _axis(self, rank: int) -> int:
        """The axis in the Keras shape without the batch (0-based)."""
        if self.axis == 0 or not -rank <= self.axis <= rank:
            raise ShapeError(
                "axis",
                f"axis={self.axis} is not an axis of the {rank + 1}-d batched input (axis 0 is the batch)",
                "axis: -1 (channels) for images; 1 or 2 for height or width",
            )
        return self.axis - 1 if self.axis > 0 else rank + self.axis

    def infer_shape(self, shapes: tuple[Shape, ...]) -> Shape:
        self._operands(shapes)
        names = self.inputs or ()
        axis = self._axis(len(shapes[0]))
        for i, shape in enumerate(shapes[1:], start=1):
            others = [n for a, n in enumerate(shape) if a != axis]
            if len(shape) != len(shapes[0]) or others != [n for a, n in enumerate(shapes[0]) if a != axis]:
                what = ("height", "width", "channels")[axis] if len(shape) == 3 else "units"
                first = f"'{names[0]}' is {_shown(shapes[0])}" if names else _shown(shapes[0])
                other = f"'{names[i]}' is {_shown(shape)}" if len(names) > i else _shown(shape)
                raise ShapeError(
                    "inputs",
                    f"Concatenate along the {what} needs every other dimension equal: {first}, {other}",
                    "resize the branches to the same size (pooling or strides) before joining them",
                )
        out = list(shapes[0])
        out[axis] = sum(shape[axis] for shape in shapes)
        return tuple(out)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 0

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        shape = ctx.in_shapes[0]
        return g.op("Concat", xs, ctx.name, axis=_nchw_axis(shape, self._axis(len(shape))))

    def backward_node(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[list[str | None], dict[str, str]]:
        from .gradients import ints

        shape = ctx.in_shapes[0]
        axis = self._axis(len(shape))
        sizes = [s[axis] for s in ctx.in_shapes]
        parts = g.op(
            "Split", [dy, ints(g, ctx.name, sizes)], ctx.name, outputs=len(sizes), axis=_nchw_axis(shape, axis)
        )
        return [part if wanted else None for part, wanted in zip(parts, ctx.needs_dx, strict=True)], {}


MERGE_KINDS: tuple[type[Layer], ...] = (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate)
