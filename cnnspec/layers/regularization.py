"""Layers active only in training that drop whole channels or samples (SpatialDropout2D, Keras's ConvNeXt
StochasticDepth), ConvNeXt's LayerScale, and the mask they share with Dropout.

A mask is a graph input of the train-step program (`<name>.mask`, [N, *shape] with a per-sample NCHW
`shape`): the training loop draws it per step (training/loop.py dropout_masks) as keep ~ Bernoulli(1 - rate)
scaled by 1/(1 - rate), Keras's inverted dropout. A shape with ones broadcasts over those axes: one draw per
channel ([C, 1, 1]: SpatialDropout2D) or per sample ([1, 1, 1]: StochasticDepth, drop-connect).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from ..shapes import numel
from .base import Float, Int, Layer, Lowering, ShapeError, require_image

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape


def apply_mask(g: GraphBuilder, x: str, ctx: Lowering, shape: tuple[int, ...], rate: float) -> str:
    """y = x ⊙ mask in training (mask: a graph input of per-sample NCHW `shape`, broadcast over the ones)."""
    # The mask is a graph input (`<name>.mask`: 0 or 1/(1-rate) per value), drawn by the training
    # loop from a generator keyed on (seed, epoch, step): reproducible and resumable, unlike
    # RandomUniform's fixed seed attribute.
    mask = f"{ctx.name}.mask"
    ctx.saved.update(x=x, mask=mask)
    ctx.masks[mask] = (shape, rate)
    return g.op("Mul", [x, mask], ctx.name)


def mask_backward(g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
    """y = x ⊙ mask (mask broadcast over its axes of size 1):  dx = dy ⊙ mask."""
    return g.op("Mul", [dy, ctx.saved["mask"]], ctx.name), {}


class SpatialDropout2D(Layer):
    """Keras's SpatialDropout2D: in training each sample drops whole channels (a fraction `rate`), scaling the
    rest by 1/(1 - rate); absent at inference. Keras's noise_shape (N, 1, 1, C): the mask is [C, 1, 1] per sample."""

    type: Literal["SpatialDropout2D"]
    rate: Float(ge=0.0, lt=1.0)
    keras_name: ClassVar[str] = "spatial_dropout2d"

    def output_shape(self, shape: Shape) -> Shape:
        require_image("SpatialDropout2D", shape, "use Dropout on flat tensors")
        return shape

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return apply_mask(g, x, ctx, (ctx.in_shape[-1], 1, 1), self.rate) if ctx.training else x

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x ⊙ mask, mask [N, C, 1, 1]:  dx = dy ⊙ mask."""
        return mask_backward(g, dy, ctx)


class StochasticDepth(Layer):
    """StochasticDepth as Keras's ConvNeXt defines it (keras/src/applications/convnext.py): in training each
    sample's whole tensor is kept with probability 1 - drop_path_rate and then scaled by 1/(1 - drop_path_rate),
    else zeroed; the identity at inference. Put on a residual branch before the Add, it drops the branch."""

    type: Literal["StochasticDepth"]
    drop_path_rate: Float(ge=0.0, lt=1.0)
    keras_name: ClassVar[str] = "stochastic_depth"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        if not ctx.training:
            return x
        return apply_mask(g, x, ctx, (1,) * len(ctx.in_shape), self.drop_path_rate)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x ⊙ mask, mask [N, 1, 1, 1] (one draw per sample):  dx = dy ⊙ mask."""
        return mask_backward(g, dy, ctx)


class LayerScale(Layer):
    """LayerScale as Keras's ConvNeXt defines it: y = x ⊙ γ, one learned γ per channel (per unit on a flat
    input), initialized to `init_values`; `projection_dim` is the channel count. γ is stored as `L.weight`."""

    type: Literal["LayerScale"]
    init_values: Float()
    projection_dim: Int(ge=1, le=1 << 24)
    keras_name: ClassVar[str] = "layer_scale"

    def output_shape(self, shape: Shape) -> Shape:
        if shape[-1] != self.projection_dim:
            what = "channels" if len(shape) == 3 else "units"
            raise ShapeError(
                "projection_dim",
                f"projection_dim={self.projection_dim} must equal the input {what} ({shape[-1]}): "
                f"LayerScale multiplies each of them by its own gamma",
                f"projection_dim: {shape[-1]}",
            )
        return shape

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        return {"weight": (self.projection_dim,)}

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        import numpy as np

        return {"weight": np.full((self.projection_dim,), self.init_values, np.float32)}  # Keras's Constant

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        from .gradients import ints

        bshape = [self.projection_dim] + [1] * (len(ctx.in_shape) - 1)  # [C, 1, 1] or [C]: broadcasts on x
        gamma = g.op("Reshape", [ctx.params["weight"], ints(g, ctx.name, bshape)], ctx.name)
        ctx.saved.update(x=x, gamma=gamma)
        return g.op("Mul", [x, gamma], ctx.name)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x ⊙ γ (γ per channel):  dγ = Σ_{N,H,W} dy ⊙ x,  dx = dy ⊙ γ."""
        from .gradients import channel_axes, reduce_sum

        scope, s = ctx.name, ctx.saved
        grads = {"weight": reduce_sum(g, g.op("Mul", [dy, s["x"]], scope), channel_axes(ctx.in_shape), scope)}
        dx = g.op("Mul", [dy, s["gamma"]], scope) if ctx.needs_input_grad else None
        return dx, grads
