"""Activation functions: ONNX lowering of each (and, in training, its derivative).

NOTE: Keras's string 'leaky_relu' uses slope 0.2 (ONNX's and PyTorch's default is 0.01), and
Keras's 'gelu' is the exact erf form (approximate=False); both are written explicitly. Keras 3's
'hard_sigmoid' is clip(x/6 + 1/2, 0, 1): ONNX HardSigmoid's default alpha 0.2 is Keras 2's formula, so
alpha = 1/6 is written out. ONNX float attributes are float32: the derivatives use the same float32
values (`_f32`), so a float64 gradient check differentiates exactly the function the forward computes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..builder import GraphBuilder
    from .base import Lowering

LEAKY_RELU_SLOPE = 0.2
ELU_ALPHA = 1.0
SELU_ALPHA = 1.6732632423543772848170429916717  # Keras's (and the SELU paper's) constants
SELU_SCALE = 1.0507009873554804934193349852946
HARD_SIGMOID_ALPHA, HARD_SIGMOID_BETA = 1 / 6, 0.5  # Keras 3: relu6(x + 3) / 6


def _f32(value: float) -> float:
    """The float32 value an ONNX float attribute holds."""
    import numpy as np

    return float(np.float32(value))


def _mask(g: GraphBuilder, op: str, a: str, b: str, scope: str) -> str:
    """1.0 where `a op b` (Greater / Less), else 0.0, in the graph's float type."""
    from .gradients import float_type  # onnx: loaded only when a graph is built

    return g.op("Cast", [g.op(op, [a, b], scope)], scope, to=float_type(g))


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
    if activation == "relu6":
        return g.op("Clip", [x, g.scalar(scope, 0.0, g.dtype), g.scalar(scope, 6.0, g.dtype)], scope)
    if activation == "hard_sigmoid":
        return g.op("HardSigmoid", [x], scope, alpha=HARD_SIGMOID_ALPHA, beta=HARD_SIGMOID_BETA)
    if activation in ("hard_silu", "hard_swish"):  # x * hard_sigmoid(x): ONNX HardSwish's alpha is 1/6 too
        return g.op("HardSwish", [x], scope)
    if activation == "mish":  # x * tanh(softplus(x)); the Mish op needs opset 18
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x], scope)], scope)], scope)
    if activation == "softplus":
        return g.op("Softplus", [x], scope)
    if activation == "softsign":
        return g.op("Softsign", [x], scope)
    if activation == "selu":
        return g.op("Selu", [x], scope, alpha=SELU_ALPHA, gamma=SELU_SCALE)
    if activation == "exponential":
        return g.op("Exp", [x], scope)
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
    relu6:      f' = [0 < y < 6]                 hard_sigmoid: f' = 1/6 · [0 < y < 1]  (y = clip(z/6 + 1/2, 0, 1))
    hard_silu:  f' = h + z/6 · [-3 < z < 3],  h = hard_sigmoid(z)   (= 0 below -3, z/3 + 1/2 between, 1 above 3)
    mish:       f' = t + z (1 - t²) sigmoid(z),  t = tanh(softplus(z))
    softplus:   f' = sigmoid(z)                  softsign:  f' = 1 / (1 + |z|)²
    selu:       f' = scale if z > 0 else y + scale·alpha   (y = scale·alpha (e^z - 1) there)
    exponential: f' = e^z = y
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
    if activation == "relu6":
        inside = g.op("Mul", [_mask(g, "Greater", y, g.constant(scope, 0.0), scope),
                              _mask(g, "Less", y, g.constant(scope, 6.0), scope)], scope)  # fmt: skip
        return g.op("Mul", [dy, inside], scope)
    if activation == "hard_sigmoid":
        inside = g.op("Mul", [_mask(g, "Greater", y, g.constant(scope, 0.0), scope),
                              _mask(g, "Less", y, one, scope)], scope)  # fmt: skip
        return g.op("Mul", [dy, g.op("Mul", [inside, g.constant(scope, _f32(HARD_SIGMOID_ALPHA))], scope)], scope)
    if activation in ("hard_silu", "hard_swish"):
        # ONNX HardSwish computes x * max(0, min(1, alpha·x + beta)) with alpha = 1/6 in float32
        alpha = g.constant(scope, _f32(HARD_SIGMOID_ALPHA))
        h = g.op("HardSigmoid", [z], scope, alpha=HARD_SIGMOID_ALPHA, beta=HARD_SIGMOID_BETA)
        inside = g.op("Mul", [_mask(g, "Greater", h, g.constant(scope, 0.0), scope),
                              _mask(g, "Less", h, one, scope)], scope)  # fmt: skip
        slope = g.op("Add", [h, g.op("Mul", [g.op("Mul", [z, alpha], scope), inside], scope)], scope)
        return g.op("Mul", [dy, slope], scope)
    if activation == "mish":
        t = g.op("Tanh", [g.op("Softplus", [z], scope)], scope)
        sech2 = g.op("Sub", [one, g.op("Mul", [t, t], scope)], scope)
        slope = g.op(
            "Add", [t, g.op("Mul", [z, g.op("Mul", [sech2, g.op("Sigmoid", [z], scope)], scope)], scope)], scope
        )
        return g.op("Mul", [dy, slope], scope)
    if activation == "softplus":
        return g.op("Mul", [dy, g.op("Sigmoid", [z], scope)], scope)
    if activation == "softsign":
        denominator = g.op("Add", [one, g.op("Abs", [z], scope)], scope)
        return g.op("Div", [dy, g.op("Mul", [denominator, denominator], scope)], scope)
    if activation == "selu":
        # f' = s + mask (scale - s) with s = y + scale·alpha (the float32 attribute values, as the forward)
        scale = _f32(SELU_SCALE)
        below = g.op("Add", [y, g.constant(scope, scale * _f32(SELU_ALPHA))], scope)
        mask = _mask(g, "Greater", z, g.constant(scope, 0.0), scope)
        slope = g.op(
            "Add", [below, g.op("Mul", [mask, g.op("Sub", [g.constant(scope, scale), below], scope)], scope)], scope
        )
        return g.op("Mul", [dy, slope], scope)
    if activation == "exponential":
        return g.op("Mul", [dy, y], scope)
    raise ValueError(f"no derivative for activation {activation!r}")


def activation_grad(g: GraphBuilder, dy: str, activation: str | None, ctx: Lowering) -> str:
    """dL/dz of a layer ending in `activation`; the loss may have given dL/dz already (fused softmax)."""
    if ctx.dy_is_dz:
        return dy
    return backward_activation(g, dy, activation, ctx.saved["z"], ctx.saved["y"], ctx.name)
