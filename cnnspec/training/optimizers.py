"""Optimizer updates as ONNX nodes, with Keras's formulas; their state is graph inputs and outputs.

With gradient g, learning rate η and the step count t (1 for the first update):
  weight decay (any optimizer, decoupled, applied first as Keras does):  w ← w - η·λ·w
  sgd:       w ← w - η g
  momentum:  v ← μ v - η g;  w ← w + v
  nesterov:  v ← μ v - η g;  w ← w + μ v - η g
  adam:      m ← m + (g - m)(1 - β1);  v ← v + (g² - v)(1 - β2)
             w ← w - α m / (√v + ε),  α = η √(1 - β2^t) / (1 - β1^t)
  adamw:     adam with weight decay (Keras's AdamW default λ = 0.004 when the spec gives none)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from ..builder import GraphBuilder
    from ..spec import Training

OptimizerName = Literal["sgd", "momentum", "nesterov", "adam", "adamw"]
SLOTS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("velocity",),
    "nesterov": ("velocity",),
    "adam": ("m", "v"),
    "adamw": ("m", "v"),
}
ADAMW_DEFAULT_DECAY = 0.004
SCOPE = "optimizer"


@dataclass(frozen=True)
class Optimizer:
    kind: OptimizerName = "sgd"
    momentum: float = 0.9
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0

    @classmethod
    def from_training(cls, t: Training) -> Optimizer:
        decay = t.weight_decay or (ADAMW_DEFAULT_DECAY if t.optimizer == "adamw" else 0.0)
        return cls(t.optimizer, t.momentum, t.beta_1, t.beta_2, t.epsilon, decay)

    def state_names(self, param: str) -> list[str]:
        """Graph names of a parameter's state tensors, e.g. 'm.conv2d.weight'."""
        return [f"{slot}.{param}" for slot in SLOTS[self.kind]]

    def initial_state(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.zeros_like(value) for p, value in params.items() for name in self.state_names(p)}

    def step_scalars(self, g: GraphBuilder, lr: str, t: str) -> dict[str, str]:
        """Scalars computed once per step and shared by every parameter's update.

        `t` is the float step count (1 for the first update). Adam's α = η √(1 - β2^t) / (1 - β1^t).
        """
        op, c = g.op, g.constant
        scalars = {"lr": lr}
        if self.weight_decay:
            scalars["decay"] = op("Mul", [lr, c(SCOPE, self.weight_decay)], SCOPE)
        if self.kind in ("adam", "adamw"):
            one = c(SCOPE, 1.0)
            bias2 = op("Sqrt", [op("Sub", [one, op("Pow", [c(SCOPE, self.beta_2), t], SCOPE)], SCOPE)], SCOPE)
            bias1 = op("Sub", [one, op("Pow", [c(SCOPE, self.beta_1), t], SCOPE)], SCOPE)
            scalars["alpha"] = op("Div", [op("Mul", [lr, bias2], SCOPE), bias1], SCOPE)
        return scalars

    def emit(self, g: GraphBuilder, w: str, grad: str, state: list[str], k: dict[str, str]) -> tuple[str, list[str]]:
        """Nodes of one parameter's update with the step's scalars `k`. Returns (new w, new state)."""
        op, c = g.op, g.constant
        if self.weight_decay:
            w = op("Sub", [w, op("Mul", [w, k["decay"]], SCOPE)], SCOPE)
        if self.kind not in ("adam", "adamw"):
            step = op("Mul", [grad, k["lr"]], SCOPE)  # η g (adam scales by α instead: no dead node)
        if self.kind == "sgd":
            return op("Sub", [w, step], SCOPE), []
        if self.kind in ("momentum", "nesterov"):
            v = op("Sub", [op("Mul", [state[0], c(SCOPE, self.momentum)], SCOPE), step], SCOPE)
            if self.kind == "momentum":
                return op("Add", [w, v], SCOPE), [v]
            ahead = op("Sub", [op("Mul", [v, c(SCOPE, self.momentum)], SCOPE), step], SCOPE)
            return op("Add", [w, ahead], SCOPE), [v]
        m, v = state
        m = op("Add", [m, op("Mul", [op("Sub", [grad, m], SCOPE), c(SCOPE, 1 - self.beta_1)], SCOPE)], SCOPE)
        g2 = op("Mul", [grad, grad], SCOPE)
        v = op("Add", [v, op("Mul", [op("Sub", [g2, v], SCOPE), c(SCOPE, 1 - self.beta_2)], SCOPE)], SCOPE)
        denom = op("Add", [op("Sqrt", [v], SCOPE), c(SCOPE, self.epsilon)], SCOPE)
        return op("Sub", [w, op("Mul", [op("Div", [m, denom], SCOPE), k["alpha"]], SCOPE)], SCOPE), [m, v]
