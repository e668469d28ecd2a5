"""BatchNormalization over the channel axis (Keras's axis=-1; axis 1 of NCHW)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from ..shapes import numel
from .base import Float, Layer, Lowering, StrictBool

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
        if ctx.training:
            return self._lower_training(g, x, ctx, gamma, beta)
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
