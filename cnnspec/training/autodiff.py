"""Reverse-mode differentiation over the layer list: each layer kind holds its own backward rule.

The walk visits the layers last to first, hands each its dL/d(output) and collects dL/d(params);
a layer kind without a `backward` method stops the build loudly instead of training wrongly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from ..builder import GraphBuilder
    from ..layers import Layer, Lowering


def first_trainable(layers: list[Layer], contexts: list[Lowering]) -> int | None:
    """Index of the first layer with a trainable parameter: the walk stops there (no dL/dx needed)."""
    for i, (layer, ctx) in enumerate(zip(layers, contexts, strict=True)):
        if any(key not in layer.non_trainable for key in ctx.params):
            return i
    return None


def backward(
    g: GraphBuilder, layers: list[Layer], contexts: list[Lowering], dy: str, *, dy_is_dz: bool = False
) -> dict[str, str]:
    """Emit the backward nodes; returns {full parameter name: gradient tensor} for trainable params.

    `dy` is dL/d(network output), or with `dy_is_dz` dL/d(last layer's pre-activation) (the fused
    softmax + cross-entropy gradient p - y).
    """
    stop = first_trainable(layers, contexts)
    if stop is None:
        raise ModelError("the network has no trainable parameters: add a Conv2D or Dense layer to train")
    if dy_is_dz:
        contexts[-1].saved["dy_is_dz"] = "1"
    contexts[stop].saved["no_dx"] = "1"
    grads: dict[str, str] = {}
    for index in range(len(layers) - 1, stop - 1, -1):
        layer, ctx = layers[index], contexts[index]
        rule = getattr(layer, "backward", None)
        if rule is None:
            raise NotImplementedError(f"no backward rule for {type(layer).__name__} (layer {index + 1}, {ctx.name!r})")
        dy, layer_grads = rule(g, dy, ctx)
        for key in ctx.params:
            if key in layer.non_trainable:
                continue
            if key not in layer_grads:
                raise NotImplementedError(f"{type(layer).__name__}.backward gave no gradient for {key!r}")
            grads[f"{ctx.name}.{key}"] = layer_grads[key]
        if dy is None and index > stop:
            raise NotImplementedError(f"{type(layer).__name__}.backward gave no dL/dx for layer {ctx.name!r}")
    return grads
