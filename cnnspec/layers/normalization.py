"""BatchNormalization over the channel axis (Keras's axis=-1; axis 1 of NCHW), and the per-sample
LayerNormalization and GroupNormalization (statistics of each sample, never of the batch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from ..shapes import numel
from .base import MAX_WINDOW, Float, Layer, Lowering, ShapeError, StrictBool

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape


class BatchNormalization(Layer):
    """y = gamma * (x - mean) / sqrt(var + epsilon) + beta, per channel.

    Running statistics follow Keras: running = running * momentum + batch * (1 - momentum), the
    same convention as ONNX's `momentum` (PyTorch's momentum is 1 - this).
    """

    type: Literal["BatchNormalization"]
    momentum: Float(ge=0.0, le=1.0) = 0.99
    epsilon: Float(gt=0.0) = 0.001
    center: StrictBool = True
    scale: StrictBool = True

    keras_name: ClassVar[str] = "batch_normalization"
    non_trainable: ClassVar[tuple[str, ...]] = ("running_mean", "running_var")
    mixes_batch: ClassVar[bool] = True

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        channels = (shape[-1],)
        shapes: dict[str, Shape] = {}
        if self.scale:
            shapes["weight"] = channels
        if self.center:
            shapes["bias"] = channels
        return shapes | {"running_mean": channels, "running_var": channels}

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        import numpy as np

        fills = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        return {k: np.full(s, fills[k], np.float32) for k, s in self.param_shapes(shape).items()}

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * numel(shape)  # folded to one multiply-add per value at inference

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        import numpy as np

        channels = ctx.in_shape[-1]
        p = ctx.params
        gamma = p["weight"] if self.scale else g.constant(ctx.name, np.ones(channels))
        beta = p["bias"] if self.center else g.constant(ctx.name, np.zeros(channels))
        if ctx.training and not self.frozen:
            return self._lower_training(g, x, ctx, gamma, beta)
        # NOTE: a frozen layer runs in inference mode while training, as Keras does since 2.0 (running statistics,
        # not updated), so a fine-tuned model keeps the statistics it was trained with.
        ctx.saved.update(gamma=gamma)
        y = g.op(
            "BatchNormalization",
            [x, gamma, beta, p["running_mean"], p["running_var"]],
            ctx.name,
            epsilon=self.epsilon,
            momentum=self.momentum,
        )
        ctx.saved.update(x=x, y=y)
        return y

    def _lower_training(self, g: GraphBuilder, x: str, ctx: Lowering, gamma: str, beta: str) -> str:
        """Batch statistics, written out (ONNX's training_mode is not in every runtime build):

        mean = E[x], var = E[(x - mean)²] (biased, as Keras), x̂ = (x - mean) / √(var + ε),
        y = γ x̂ + β; running = running · momentum + batch · (1 - momentum) (Keras's convention).
        """
        from .gradients import channel_axes, ints, reduce_mean

        scope, c, axes = ctx.name, ctx.in_shape[-1], channel_axes(ctx.in_shape)
        bshape = ints(g, scope, [c, 1, 1] if len(ctx.in_shape) == 3 else [c])  # broadcast against x
        mean = reduce_mean(g, x, axes, scope)
        xc = g.op("Sub", [x, mean], scope)
        var = reduce_mean(g, g.op("Mul", [xc, xc], scope), axes, scope)
        eps = g.constant(scope, self.epsilon)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, eps], scope)], scope)], scope)
        xhat = g.op("Mul", [xc, inv], scope)
        scaled = g.op("Mul", [xhat, g.op("Reshape", [gamma, bshape], scope)], scope)
        y = g.op("Add", [scaled, g.op("Reshape", [beta, bshape], scope)], scope)
        keep, new = g.constant(scope, self.momentum), g.constant(scope, 1.0 - self.momentum)
        for key, batch in (("running_mean", mean), ("running_var", var)):
            flat = g.op("Reshape", [batch, ints(g, scope, [c])], scope)
            old = g.op("Mul", [ctx.params[key], keep], scope)
            ctx.updates[key] = g.op("Add", [old, g.op("Mul", [flat, new], scope)], scope)
        ctx.saved.update(x=x, y=y, xhat=xhat, inv=inv, gamma=g.op("Reshape", [gamma, bshape], scope))
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """Training-mode batch norm, with sums S over the batch (and H, W) axes, m values per channel:

        dβ = S[dy],  dγ = S[dy ⊙ x̂],  and since the batch mean and variance depend on x too,
        dx = γ/√(var + ε) · (dy - S[dy]/m - x̂ ⊙ S[dy ⊙ x̂]/m) = a ⊙ dy + c1 ⊙ x̂ + c0, with the
        per-channel a = γ/√(var + ε), c1 = -a S[dy ⊙ x̂]/m, c0 = -a S[dy]/m (4 passes over dy).
        """
        from .gradients import channel_axes, float_type, ints, reduce_sum

        if self.frozen:
            return self._backward_frozen(g, dy, ctx), {}
        scope, axes, s, c = ctx.name, channel_axes(ctx.in_shape), ctx.saved, ctx.in_shape[-1]
        sum_dy = reduce_sum(g, dy, axes, scope, keepdims=1)
        sum_dy_xhat = reduce_sum(g, g.op("Mul", [dy, s["xhat"]], scope), axes, scope, keepdims=1)
        grads = {}
        if self.scale:
            grads["weight"] = g.op("Reshape", [sum_dy_xhat, ints(g, scope, [c])], scope)
        if self.center:
            grads["bias"] = g.op("Reshape", [sum_dy, ints(g, scope, [c])], scope)
        if not ctx.needs_input_grad:
            return None, grads
        a = g.op("Mul", [s["gamma"], s["inv"]], scope) if self.scale else s["inv"]
        per_channel = g.op("Cast", [g.op("Size", [dy], scope)], scope, to=float_type(g))  # m·C
        k = g.op(
            "Neg", [g.op("Div", [g.op("Mul", [a, g.constant(scope, float(c))], scope), per_channel], scope)], scope
        )
        c1, c0 = g.op("Mul", [k, sum_dy_xhat], scope), g.op("Mul", [k, sum_dy], scope)
        dx = g.op("Add", [g.op("Mul", [dy, a], scope), g.op("Mul", [s["xhat"], c1], scope)], scope)
        return g.op("Add", [dx, c0], scope), grads

    def _backward_frozen(self, g: GraphBuilder, dy: str, ctx: Lowering) -> str | None:
        """Inference mode: y = γ (x - μ_run) / √(σ²_run + ε) + β is affine in x, so dx = dy · γ / √(σ²_run + ε)."""
        from .gradients import ints

        if not ctx.needs_input_grad:
            return None
        scope, c = ctx.name, ctx.in_shape[-1]
        eps = g.constant(scope, self.epsilon)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ctx.params["running_var"], eps], scope)], scope)], scope)
        a = g.op("Mul", [ctx.saved["gamma"], inv], scope)
        return g.op("Mul", [dy, g.op("Reshape", [a, ints(g, scope, [c, 1, 1] if len(ctx.in_shape) == 3 else [c])],
                                                 scope)], scope)  # fmt: skip


# ---- per-sample normalizations: LayerNormalization and GroupNormalization ----------------------------------


def _affine_shapes(layer: Any, shape: Shape) -> dict[str, Shape]:
    """gamma (`weight`) and beta (`bias`), one per channel (or unit), as PyTorch's GroupNorm/LayerNorm names."""
    channels = (shape[-1],)
    return ({"weight": channels} if layer.scale else {}) | ({"bias": channels} if layer.center else {})


def _affine_init(layer: Any, shape: Shape) -> dict[str, np.ndarray]:
    import numpy as np

    fills = {"weight": 1.0, "bias": 0.0}  # Keras's gamma_initializer 'ones', beta_initializer 'zeros'
    return {k: np.full(s, fills[k], np.float32) for k, s in _affine_shapes(layer, shape).items()}


def _normalize(g: GraphBuilder, layer: Any, x: str, ctx: Lowering, groups: int | None) -> str:
    """x̂ = (x - μ) / √(σ² + ε) over each sample's statistic set S, then y = γ x̂ + β per channel.

    LayerNormalization (`groups` None): S = the channels of one pixel (axis 1 of NCHW, or the units).
    GroupNormalization: S = one group of C/G consecutive channels, all its pixels (axis 2 of [N, G, C/G·H·W]).
    σ² is the biased variance E[(x - μ)²], as Keras's `ops.moments`.
    """
    from ..shapes import hwc_to_chw
    from .gradients import ints, reduce_mean

    scope, chw = ctx.name, hwc_to_chw(ctx.in_shape)
    grouped = x if groups is None else g.op("Reshape", [x, ints(g, scope, [0, groups, -1])], scope)
    axis = [1] if groups is None else [2]
    mean = reduce_mean(g, grouped, axis, scope)
    xc = g.op("Sub", [grouped, mean], scope)
    var = reduce_mean(g, g.op("Mul", [xc, xc], scope), axis, scope)
    inv = g.op(
        "Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.constant(scope, layer.epsilon)], scope)], scope)], scope
    )
    xhat = g.op("Mul", [xc, inv], scope)
    if groups is not None:
        xhat = g.op("Reshape", [xhat, ints(g, scope, [0, *chw])], scope)
    y, bshape = xhat, ints(g, scope, [chw[0], *[1] * (len(chw) - 1)])  # [C, 1, 1] or [C]: broadcasts on x
    gamma = g.op("Reshape", [ctx.params["weight"], bshape], scope) if layer.scale else None
    if gamma is not None:
        y = g.op("Mul", [y, gamma], scope)
    if layer.center:
        y = g.op("Add", [y, g.op("Reshape", [ctx.params["bias"], bshape], scope)], scope)
    ctx.saved.update(x=x, y=y, xhat=xhat, inv=inv)
    if gamma is not None:
        ctx.saved["gamma"] = gamma
    return y


def _normalize_backward(
    g: GraphBuilder, layer: Any, dy: str, ctx: Lowering, groups: int | None
) -> tuple[str | None, dict[str, str]]:
    """y = γ x̂ + β, x̂ = (x - μ) r, r = (σ² + ε)^(-1/2), μ and σ² over each statistic set S of m values.

    Parameters (sums over every axis but the channel: N, H, W):  dγ = Σ dy ⊙ x̂,  dβ = Σ dy.
    Input: with ĝ = dy ⊙ γ = dL/dx̂, and since ∂μ/∂x_j = 1/m and ∂σ²/∂x_j = 2 (x_j - μ)/m,
        dL/dx_j = r (ĝ_j - mean_S(ĝ) - x̂_j mean_S(ĝ ⊙ x̂))
    (the statistics depend on x: the two mean terms are their share). For GroupNormalization ĝ and x̂ are
    reshaped to [N, G, C/G·H·W] for the means over S (axis 2) and back; r is one value per (sample, group).
    """
    from ..shapes import hwc_to_chw
    from .gradients import channel_axes, ints, reduce_mean, reduce_sum

    scope, s, chw = ctx.name, ctx.saved, hwc_to_chw(ctx.in_shape)
    axes = channel_axes(ctx.in_shape)
    grads = {}
    if layer.scale:
        grads["weight"] = reduce_sum(g, g.op("Mul", [dy, s["xhat"]], scope), axes, scope)
    if layer.center:
        grads["bias"] = reduce_sum(g, dy, axes, scope)
    if not ctx.needs_input_grad:
        return None, grads
    dxhat = g.op("Mul", [dy, s["gamma"]], scope) if layer.scale else dy
    xhat = s["xhat"]
    if groups is not None:
        shape = ints(g, scope, [0, groups, -1])
        dxhat, xhat = g.op("Reshape", [dxhat, shape], scope), g.op("Reshape", [xhat, shape], scope)
    axis = [1] if groups is None else [2]
    mean_g = reduce_mean(g, dxhat, axis, scope)
    mean_gx = reduce_mean(g, g.op("Mul", [dxhat, xhat], scope), axis, scope)
    inner = g.op("Sub", [g.op("Sub", [dxhat, mean_g], scope), g.op("Mul", [xhat, mean_gx], scope)], scope)
    dx = g.op("Mul", [inner, s["inv"]], scope)
    if groups is not None:
        dx = g.op("Reshape", [dx, ints(g, scope, [0, *chw])], scope)
    return dx, grads


class LayerNormalization(Layer):
    """Keras's LayerNormalization with axis=-1: each pixel normalized over its own channels (each flat
    sample over its units), then γ, β per channel.

    NOTE: not PyTorch's nn.LayerNorm([C, H, W]) on images, which normalizes over C, H and W together.
    """

    type: Literal["LayerNormalization"]
    axis: Literal[-1] = -1
    epsilon: Float(gt=0.0) = 0.001
    center: StrictBool = True
    scale: StrictBool = True

    keras_name: ClassVar[str] = "layer_normalization"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return _affine_shapes(self, shape)

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return _affine_init(self, shape)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 7 * numel(shape)  # mean, subtract, square, mean, normalize, scale, shift

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return _normalize(g, self, x, ctx, None)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """See `_normalize_backward`: S = the C channels of one pixel (m = C)."""
        return _normalize_backward(g, self, dy, ctx, None)


def _groups_check(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or 1 <= value <= MAX_WINDOW):
        raise PydanticCustomError(
            "cnnspec_groups", "must be an integer ≥ 1, or -1 (one group per channel), got {got}", {"got": repr(value)}
        )
    return value


Groups = Annotated[int, BeforeValidator(_groups_check), Field(ge=-1, le=MAX_WINDOW)]


class GroupNormalization(Layer):
    """Keras 3's GroupNormalization (axis=-1): the C channels in `groups` runs of C/groups consecutive channels;
    each sample's group normalized over its channels and pixels, then γ, β per channel. groups=-1 is one group
    per channel (instance normalization), as Keras."""

    type: Literal["GroupNormalization"]
    groups: Groups = 32
    axis: Literal[-1] = -1
    epsilon: Float(gt=0.0) = 0.001
    center: StrictBool = True
    scale: StrictBool = True

    keras_name: ClassVar[str] = "group_normalization"

    def group_count(self, shape: Shape) -> int:
        return shape[-1] if self.groups == -1 else self.groups

    def output_shape(self, shape: Shape) -> Shape:
        channels, groups = shape[-1], self.group_count(shape)
        if channels % groups:
            what = "channels" if len(shape) == 3 else "units"
            divisors = [d for d in range(1, channels + 1) if channels % d == 0]
            shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
            raise ShapeError(
                "groups",
                f"groups={groups} must divide the input {what} ({channels}): {channels} / {groups} is not whole",
                f"groups: one of the divisors of {channels} ({shown}), or -1 for one group per channel",
            )
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return _affine_shapes(self, shape)

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return _affine_init(self, shape)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 7 * numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return _normalize(g, self, x, ctx, self.group_count(ctx.in_shape))

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """See `_normalize_backward`: S = one group of C/G channels and all its pixels (m = C/G·H·W)."""
        return _normalize_backward(g, self, dy, ctx, self.group_count(ctx.in_shape))
