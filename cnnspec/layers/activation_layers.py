"""The activation layers: ReLU, LeakyReLU, PReLU, ELU and Softmax, with Keras 3's arguments and defaults.

NOTE: the LeakyReLU layer's default slope is 0.3 while the 'leaky_relu' activation string means 0.2 (both
Keras's); ONNX and PyTorch default to 0.01. Every slope is written into the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from ..shapes import hwc_to_chw, numel
from .activations import _f32, _mask
from .base import Float, Initializer, Layer, Lowering, ShapeError, _got, initializer_arg

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape


class ReLU(Layer):
    """Keras's ReLU layer: y = min(x, max_value) for x > threshold, else negative_slope · (x - threshold).

    (Keras: relu(x) or x·[x > threshold], clipped to [0, max_value], minus negative_slope·relu(threshold - x);
    Keras refuses negative max_value, negative_slope and threshold, and so does cnnspec.)
    """

    type: Literal["ReLU"]
    max_value: Float(ge=0.0) | None = None
    negative_slope: Float(ge=0.0) = 0.0
    threshold: Float(ge=0.0) = 0.0

    keras_name: ClassVar[str] = "re_lu"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        scope, slope, top, t = ctx.name, self.negative_slope, self.max_value, self.threshold
        ctx.saved["x"] = x
        if t == 0 and top is None:
            return g.op("LeakyRelu", [x], scope, alpha=slope) if slope else g.op("Relu", [x], scope)
        if t == 0 and slope == 0:  # relu clipped at max_value (relu6 for 6)
            return g.op("Clip", [x, g.scalar(scope, 0.0, g.dtype), g.scalar(scope, top, g.dtype)], scope)
        # y = [x > t] · min(x, max_value) + slope · min(x - t, 0)   (t ≥ 0: the first term is ≥ 0)
        kept = x if top is None else g.op("Min", [x, g.constant(scope, top)], scope)
        y = g.op("Mul", [kept, _mask(g, "Greater", x, g.constant(scope, t), scope)], scope)
        if slope:
            below = g.op("Min", [g.op("Sub", [x, g.constant(scope, t)], scope), g.constant(scope, 0.0)], scope)
            y = g.op("Add", [y, g.op("Mul", [below, g.constant(scope, slope)], scope)], scope)
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """f' = [x > t] · [x < max_value] + slope · [x ≤ t]   (= above + slope · (1 - above), above = [x > t])."""
        scope, x, slope = ctx.name, ctx.saved["x"], self.negative_slope
        if self.threshold == 0 and self.max_value is None and slope:
            slope = _f32(slope)  # the LeakyRelu attribute's float32 value, as the forward
        above = _mask(g, "Greater", x, g.constant(scope, self.threshold), scope)
        kept = above
        if self.max_value is not None:
            kept = g.op("Mul", [above, _mask(g, "Less", x, g.constant(scope, self.max_value), scope)], scope)
        if slope:
            below = g.op("Sub", [g.constant(scope, 1.0), above], scope)
            kept = g.op("Add", [kept, g.op("Mul", [below, g.constant(scope, slope)], scope)], scope)
        return g.op("Mul", [dy, kept], scope), {}


class LeakyReLU(Layer):
    """y = x if x > 0 else negative_slope · x. Keras's layer default is 0.3 (the 'leaky_relu' string: 0.2)."""

    type: Literal["LeakyReLU"]
    negative_slope: Float(ge=0.0) = 0.3

    keras_name: ClassVar[str] = "leaky_re_lu"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        ctx.saved["x"] = x
        return g.op("LeakyRelu", [x], ctx.name, alpha=self.negative_slope)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """f' = 1 if x > 0 else slope = slope + [x > 0] (1 - slope)   (slope: the attribute's float32 value)."""
        scope, slope = ctx.name, _f32(self.negative_slope)
        mask = _mask(g, "Greater", ctx.saved["x"], g.constant(scope, 0.0), scope)
        factor = g.op(
            "Add", [g.op("Mul", [mask, g.constant(scope, 1.0 - slope)], scope), g.constant(scope, slope)], scope
        )
        return g.op("Mul", [dy, factor], scope), {}


def _axes_check(value: Any) -> Any:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 3 for v in items):
        raise PydanticCustomError(
            "cnnspec_axes", "must be an axis or a list of axes, each 1 (H), 2 (W) or 3 (C), got {got}",
            {"got": _got(value)},
        )  # fmt: skip
    return tuple(sorted(set(items)))


class PReLU(Layer):
    """y = x if x > 0 else alpha · x, with a learned alpha per value (Keras's default) or shared along
    `shared_axes` (Keras's axes count the batch: 1 H, 2 W, 3 C; [1, 2] gives one slope per channel, PyTorch's).

    The weight `weight` is alpha in NCHW order of its shared shape: (C, 1, 1) for shared_axes [1, 2],
    (C, H, W) without; (units,) or (1,) on a flat input.
    """

    type: Literal["PReLU"]
    alpha_initializer: Initializer = "zeros"
    shared_axes: Annotated[tuple[int, ...] | None, BeforeValidator(lambda v: v if v is None else _axes_check(v))] = None

    keras_name: ClassVar[str] = "p_re_lu"

    def output_shape(self, shape: Shape) -> Shape:
        for axis in self.shared_axes or ():
            if axis > len(shape):
                raise ShapeError(
                    "shared_axes",
                    f"shared_axes {list(self.shared_axes)} names axis {axis}, but the flat input {list(shape)} has "
                    "only axis 1 (the units; axis 0 is the batch)",
                    "shared_axes: [1] or none on a flat input",
                )
        return shape

    def _keras_alpha_shape(self, shape: Shape) -> Shape:
        shared = set(self.shared_axes or ())
        return tuple(1 if axis + 1 in shared else size for axis, size in enumerate(shape))

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return {"weight": hwc_to_chw(self._keras_alpha_shape(shape))}

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        # Keras's fans of the alpha weight (keras compute_fans): rank 1 -> (n, n); rank 3 (h, w, c) ->
        # (w·h, c·h): the last two dims, times the receptive field of the dims before.
        keras = self._keras_alpha_shape(shape)
        fan_in, fan_out = (keras[0], keras[0]) if len(keras) == 1 else (keras[1] * keras[0], keras[2] * keras[0])
        alpha = initialize(initializer_arg(self.alpha_initializer), hwc_to_chw(keras), fan_in, fan_out, rng)
        return {"weight": alpha}

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        ctx.saved["x"] = x
        return g.op("PRelu", [x, ctx.params["weight"]], ctx.name)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = relu(x) - alpha · relu(-x):  dalpha = Σ (batch and shared axes) dy ⊙ min(x, 0);
        dx = dy ⊙ (1 if x > 0 else alpha) = dy ⊙ (alpha + [x > 0] (1 - alpha))."""
        from .gradients import ints, reduce_sum

        scope, x, alpha = ctx.name, ctx.saved["x"], ctx.params["weight"]
        shape = hwc_to_chw(ctx.in_shape)
        alpha_shape = self.param_shapes(ctx.in_shape)["weight"]
        negative = g.op("Min", [x, g.constant(scope, 0.0)], scope)
        axes = [0] + [i + 1 for i, (a, s) in enumerate(zip(alpha_shape, shape, strict=True)) if a == 1 and s > 1]
        summed = reduce_sum(g, g.op("Mul", [dy, negative], scope), axes, scope, keepdims=1)
        grads = {"weight": g.op("Reshape", [summed, ints(g, scope, list(alpha_shape))], scope)}
        if not ctx.needs_input_grad:
            return None, grads
        mask = _mask(g, "Greater", x, g.constant(scope, 0.0), scope)
        factor = g.op(
            "Add", [alpha, g.op("Mul", [mask, g.op("Sub", [g.constant(scope, 1.0), alpha], scope)], scope)], scope
        )
        return g.op("Mul", [dy, factor], scope), grads


class ELU(Layer):
    """y = x if x > 0 else alpha (e^x - 1)."""

    type: Literal["ELU"]
    alpha: Float() = 1.0

    keras_name: ClassVar[str] = "elu"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        y = g.op("Elu", [x], ctx.name, alpha=self.alpha)
        ctx.saved.update(x=x, y=y)
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """f' = 1 if x > 0 else alpha e^x = y + alpha:  f' = s + [x > 0] (1 - s), s = y + alpha (float32 alpha).

        The mask reads x, not y: with a negative alpha, y > 0 also for x < 0."""
        scope = ctx.name
        below = g.op("Add", [ctx.saved["y"], g.constant(scope, _f32(self.alpha))], scope)
        mask = _mask(g, "Greater", ctx.saved["x"], g.constant(scope, 0.0), scope)
        slope = g.op(
            "Add", [below, g.op("Mul", [mask, g.op("Sub", [g.constant(scope, 1.0), below], scope)], scope)], scope
        )
        return g.op("Mul", [dy, slope], scope), {}


class Softmax(Layer):
    """Softmax along Keras's `axis` (counting the batch: on (H, W, C) -1/3 is C, 1 H, 2 W; on (units,) -1/1).

    As the last layer over the classes, training fuses it with the cross-entropy (dL/dx = p - y), like a
    Dense with activation 'softmax'.
    """

    type: Literal["Softmax"]
    axis: Annotated[int, BeforeValidator(lambda v: _softmax_axis(v))] = -1

    keras_name: ClassVar[str] = "softmax"

    def graph_axis(self, shape: Shape) -> int:
        """The NCHW (or [N, units]) axis of Keras's axis on a tensor of `shape` (no batch)."""
        rank = len(shape) + 1
        axis = self.axis + rank if self.axis < 0 else self.axis
        if not 1 <= axis < rank:
            raise ShapeError(
                "axis",
                f"axis {self.axis} is not an axis of the {'image' if rank == 4 else 'flat'} input {list(shape)} "
                f"(with the batch: axes {-rank}..{rank - 1}, and 0 / {-rank} is the batch)",
                "axis: -1 (the channels or the units)",
            )
        return axis if rank == 2 else {1: 2, 2: 3, 3: 1}[axis]

    def output_shape(self, shape: Shape) -> Shape:
        self.graph_axis(shape)
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return 3 * numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        y = g.op("Softmax", [x], ctx.name, axis=self.graph_axis(ctx.in_shape))
        ctx.saved.update(x=x, y=y)
        if len(ctx.in_shape) == 1:
            ctx.pre_activation = x  # the logits, when this is the last layer (training.losses.logits_of)
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """dx = y ⊙ (dy - Σ_axis dy ⊙ y)  (the Jacobian diag(y) - y yᵀ along the axis); the loss hands the last
        layer's dL/dx directly (dy_is_dz)."""
        from .gradients import reduce_sum

        if ctx.dy_is_dz:
            return dy, {}
        scope, y = ctx.name, ctx.saved["y"]
        dot = reduce_sum(g, g.op("Mul", [dy, y], scope), [self.graph_axis(ctx.in_shape)], scope, keepdims=1)
        return g.op("Mul", [y, g.op("Sub", [dy, dot], scope)], scope), {}


def _softmax_axis(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not -4 <= value <= 3 or value == 0:
        raise PydanticCustomError(
            "cnnspec_axis", "must be -1 (the last axis), 1, 2, 3, -2 or -3 (Keras's axes, 0 is the batch), got {got}",
            {"got": _got(value)},
        )  # fmt: skip
    return value
