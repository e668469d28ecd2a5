"""Activation functions: ONNX lowering of each (and, in training, its derivative).

NOTE: Keras's string 'leaky_relu' uses slope 0.2 (ONNX's and PyTorch's default is 0.01), and
Keras's 'gelu' is the exact erf form (approximate=False); both are written explicitly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..builder import GraphBuilder

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
        # 0.5 * x * (1 + erf(x / sqrt(2))), the exact form, for opsets without Gelu
        erf = g.op("Erf", [g.op("Mul", [x, g.constant(scope, 1 / math.sqrt(2))], scope)], scope)
        half_x = g.op("Mul", [x, g.constant(scope, 0.5)], scope)
        return g.op("Mul", [half_x, g.op("Add", [erf, g.constant(scope, 1.0)], scope)], scope)
    raise ValueError(f"unknown activation {activation!r}")
