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
        y = g.op(
            "BatchNormalization",
            [x, gamma, beta, p["running_mean"], p["running_var"]],
            ctx.name,
            epsilon=self.epsilon,
            momentum=self.momentum,
        )
        ctx.saved.update(x=x, y=y)
        return y
