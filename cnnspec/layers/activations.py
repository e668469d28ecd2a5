"""Activation functions: ONNX lowering of each (and, in training, its derivative).

NOTE: Keras's string 'leaky_relu' uses slope 0.2 (ONNX's and PyTorch's default is 0.01), and
Keras's 'gelu' is the exact erf form (approximate=False); both are written explicitly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..builder import GraphBuilder
    from .base import Lowering

LEAKY_RELU_SLOPE = 0.2
ELU_ALPHA = 1.0


def lower_activation(g: GraphBuilder, x: str, activation: str | None, scope: str) -> str:
    """Apply `activation` to x (NCHW or flat; softmax over axis 1, the channels or the units)."""
    if activation in (None, "linear"):
        return x
    if activation == "relu":
        return g.op("Relu", [x], scope)
    if activation == "tanh":
        return g.op("Tanh", [x], scope)
    if activation == "sigmoid":
        return g.op("Sigmoid", [x], scope)
    if activation == "softmax":
        return g.op("Softmax", [x], scope, axis=1)
    if activation == "leaky_relu":
        return g.op("LeakyRelu", [x], scope, alpha=LEAKY_RELU_SLOPE)
    if activation == "elu":
        return g.op("Elu", [x], scope, alpha=ELU_ALPHA)
    if activation == "silu":  # x * sigmoid(x); no Swish op in the standard domain
        return g.op("Mul", [x, g.op("Sigmoid", [x], scope)], scope)
    if activation == "gelu":
        if g.opset >= 20:
            return g.op("Gelu", [x], scope, approximate="none")
        # 0.5 * x * (1 + erf(x / sqrt(2))), the exact form, for opsets without Gelu. Div (not Mul by
        # 1/sqrt(2)): onnxruntime's GeluFusion matches only this form and runs one fused Gelu kernel.
        erf = g.op("Erf", [g.op("Div", [x, g.constant(scope, math.sqrt(2))], scope)], scope)
        half_x = g.op("Mul", [x, g.constant(scope, 0.5)], scope)
        return g.op("Mul", [half_x, g.op("Add", [erf, g.constant(scope, 1.0)], scope)], scope)
    raise ValueError(f"unknown activation {activation!r}")


def backward_activation(g: GraphBuilder, dy: str, activation: str | None, z: str, y: str, scope: str) -> str:
    """dL/dz from dL/dy for y = f(z), elementwise (softmax: over axis 1).

    relu:       f' = [z > 0] = [y > 0]           leaky_relu: f' = 1 if z > 0 else slope
    tanh:       f' = 1 - y²                      sigmoid:    f' = y (1 - y)
    elu:        f' = 1 if z > 0 else y + alpha   (y = alpha (e^z - 1) there)
    silu:       f' = s (1 + z (1 - s)),  s = sigmoid(z)
    gelu:       f' = Φ(z) + z φ(z),  Φ(z) = (1 + erf(z/√2)) / 2,  φ(z) = e^(-z²/2) / √(2π)
    softmax:    dz = y ⊙ (dy - Σ_j dy_j y_j)     (the Jacobian diag(y) - y yᵀ applied to dy)
    """
    if activation in (None, "linear"):
        return dy
    if activation in ("relu", "leaky_relu", "elu"):
        # NOTE: Mul by a 0/1 mask, not Where: onnxruntime's CPU Where is ~8x slower on large tensors.
        # y > 0 exactly when z > 0 for these three; reading y leaves z unused, so onnxruntime can fuse
        # the Conv/Gemm with its activation.
        from .gradients import float_type  # onnx: loaded only when a graph is built

        mask = g.op("Cast", [g.op("Greater", [y, g.constant(scope, 0.0)], scope)], scope, to=float_type(g))
        if activation == "relu":
            return g.op("Mul", [dy, mask], scope)
        if activation == "leaky_relu":  # f' = slope + mask (1 - slope)
            slope = g.op(
                "Add",
                [
                    g.op("Mul", [mask, g.constant(scope, 1 - LEAKY_RELU_SLOPE)], scope),
                    g.constant(scope, LEAKY_RELU_SLOPE),
                ],
                scope,
            )
            return g.op("Mul", [dy, slope], scope)
        below = g.op("Add", [y, g.constant(scope, ELU_ALPHA)], scope)  # f' = s + mask (1 - s), s = y + alpha
        slope = g.op(
            "Add", [below, g.op("Mul", [mask, g.op("Sub", [g.constant(scope, 1.0), below], scope)], scope)], scope
        )
        return g.op("Mul", [dy, slope], scope)
    one = g.constant(scope, 1.0)
    if activation == "tanh":
        return g.op("Mul", [dy, g.op("Sub", [one, g.op("Mul", [y, y], scope)], scope)], scope)
    if activation == "sigmoid":
        return g.op("Mul", [dy, g.op("Mul", [y, g.op("Sub", [one, y], scope)], scope)], scope)
    if activation == "softmax":
        dot = g.op("ReduceSum", [g.op("Mul", [dy, y], scope), g.constant(scope, [1], "int64")], scope, keepdims=1)
        return g.op("Mul", [y, g.op("Sub", [dy, dot], scope)], scope)
    if activation == "silu":
        s = g.op("Sigmoid", [z], scope)
        inner = g.op("Add", [one, g.op("Mul", [z, g.op("Sub", [one, s], scope)], scope)], scope)
        return g.op("Mul", [dy, g.op("Mul", [s, inner], scope)], scope)
    if activation == "gelu":
        erf = g.op("Erf", [g.op("Mul", [z, g.constant(scope, 1 / math.sqrt(2))], scope)], scope)
        cdf = g.op("Mul", [g.op("Add", [erf, one], scope), g.constant(scope, 0.5)], scope)
        z2 = g.op("Mul", [g.op("Mul", [z, z], scope), g.constant(scope, -0.5)], scope)
        pdf = g.op("Mul", [g.op("Exp", [z2], scope), g.constant(scope, 1 / math.sqrt(2 * math.pi))], scope)
        return g.op("Mul", [dy, g.op("Add", [cdf, g.op("Mul", [z, pdf], scope)], scope)], scope)
    raise ValueError(f"no derivative for activation {activation!r}")


def activation_grad(g: GraphBuilder, dy: str, activation: str | None, ctx: Lowering) -> str:
    """dL/dz of a layer ending in `activation`; the loss may have given dL/dz already (fused softmax)."""
    if ctx.dy_is_dz:
        return dy
    return backward_activation(g, dy, activation, ctx.saved["z"], ctx.saved["y"], ctx.name)
