"""Mean categorical cross-entropy with integer labels, emitted as ONNX with its gradient.

With logits z (N, K), p = softmax(z) and the smoothed one-hot target t = (1 - ε)·onehot(y) + ε/K:
  loss = -(1/N) Σ_n Σ_k t[n,k] log p[n,k]
  dL/dz = (p - t) / N      (the fused softmax + cross-entropy gradient: no 1/p, stable)
log p comes from LogSoftmax, never log(softmax), so large logits cannot give log(0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..layers.gradients import float_type, ints, reduce_sum

if TYPE_CHECKING:
    from ..builder import GraphBuilder
    from ..layers import Layer, Lowering

SCOPE = "loss"


@dataclass
class LossNodes:
    loss: str
    """Scalar mean loss over the batch."""
    dlogits: str
    """dL/dz, (N, K)."""
    correct: str
    """Scalar int64: how many argmax(z) equal the label."""


def batch_mean(g: GraphBuilder, per_sample: str, labels: str, negate: bool = False) -> tuple[str, str]:
    """The loss: the mean of `per_sample` (negated for a log-likelihood) over the batch; and the batch size N it
    divides by, the gradient's divisor too.

    Data-parallel (g.sync, staged.py): this rank's or shard's share Σ_local / N_global, so the shares, and the
    gradients, add up to those of the whole batch."""
    if g.sync is not None:
        batch = g.sync.count(g, SCOPE, 1)
        # ReduceSum/ReduceMean without axes reduce every axis, in every opset: a scalar for (N,) and (N, 1)
        loss = g.op("Div", [g.op("ReduceSum", [per_sample], SCOPE, keepdims=0), batch], SCOPE)
    else:
        loss = g.op("ReduceMean", [per_sample], SCOPE, keepdims=0)
    loss = g.op("Neg", [loss], SCOPE) if negate else loss
    if g.sync is None:  # after the loss: the node order of the train-step programs' golden hashes
        batch = g.op("Cast", [g.op("Shape", [labels], SCOPE)], SCOPE, to=float_type(g))
    return loss, batch


def cross_entropy(g: GraphBuilder, logits: str, labels: str, classes: int, smoothing: float = 0.0) -> LossNodes:
    off = smoothing / classes
    values = g.constant(SCOPE, [off, 1.0 - smoothing + off])
    # NOTE: depth as a 0-d tensor (the reference evaluator needs it; the builder stores constants 1-d).
    depth = g.op("Reshape", [ints(g, SCOPE, [classes]), ints(g, SCOPE, [])], SCOPE)
    target = g.op("OneHot", [labels, depth, values], SCOPE, axis=-1)
    logp = g.op("LogSoftmax", [logits], SCOPE, axis=1)
    per_sample = reduce_sum(g, g.op("Mul", [target, logp], SCOPE), [1], SCOPE)  # the log-likelihood
    loss, batch = batch_mean(g, per_sample, labels, negate=True)
    dlogits = g.op("Div", [g.op("Sub", [g.op("Exp", [logp], SCOPE), target], SCOPE), batch], SCOPE)
    predicted = g.op("ArgMax", [logits], SCOPE, axis=1, keepdims=0)
    hits = g.op("Cast", [g.op("Equal", [predicted, labels], SCOPE)], SCOPE, to=7)  # 7 = INT64
    correct = reduce_sum(g, hits, [0], SCOPE)
    return LossNodes(loss, dlogits, correct)


def binary_cross_entropy(g: GraphBuilder, logits: str, labels: str, smoothing: float = 0.0) -> LossNodes:
    """Keras's binary_crossentropy on one sigmoid unit, from its logit z (N, 1) and integer labels y in {0, 1}.

    With Keras's label smoothing t = y·(1 - ε) + ε/2 and p = σ(z):
      loss = -(1/N) Σ_n [t log p + (1 - t) log(1 - p)] = (1/N) Σ_n [max(z, 0) - t·z + log(1 + exp(-|z|))]
      dL/dz = (σ(z) - t) / N      (the fused sigmoid + cross-entropy gradient, like the softmax one)
    The right-hand form never takes the log of 0 or exp of a large positive number.
    """
    column = ints(g, SCOPE, [-1, 1])
    y = g.op("Reshape", [g.op("Cast", [labels], SCOPE, to=float_type(g)), column], SCOPE)
    target = y
    if smoothing:
        scale, shift = g.constant(SCOPE, [1.0 - smoothing]), g.constant(SCOPE, [smoothing / 2])
        target = g.op("Add", [g.op("Mul", [y, scale], SCOPE), shift], SCOPE)
    one = g.constant(SCOPE, [1.0])
    tail = g.op("Exp", [g.op("Neg", [g.op("Abs", [logits], SCOPE)], SCOPE)], SCOPE)  # exp(-|z|) <= 1
    soft = g.op("Log", [g.op("Add", [one, tail], SCOPE)], SCOPE)
    hinge = g.op("Sub", [g.op("Relu", [logits], SCOPE), g.op("Mul", [target, logits], SCOPE)], SCOPE)
    loss, batch = batch_mean(g, g.op("Add", [hinge, soft], SCOPE), labels)
    dlogits = g.op("Div", [g.op("Sub", [g.op("Sigmoid", [logits], SCOPE), target], SCOPE), batch], SCOPE)
    positive = g.op("Cast", [g.op("Greater", [logits, g.constant(SCOPE, [0.0])], SCOPE)], SCOPE, to=7)  # 7 = INT64
    predicted = g.op("Reshape", [positive, ints(g, SCOPE, [-1])], SCOPE)
    hits = g.op("Cast", [g.op("Equal", [predicted, labels], SCOPE)], SCOPE, to=7)
    return LossNodes(loss, dlogits, reduce_sum(g, hits, [0], SCOPE))


def logits_of(last: Layer, ctx: Lowering, output: str) -> tuple[str, bool]:
    """The tensor the loss reads and whether it is the last softmax's input (fused gradient).

    NOTE: a last layer without softmax is taken to output logits, as Keras's from_logits=True. A last
    Softmax layer (over the units: it sets `pre_activation`) counts as a softmax activation.
    """
    ends_in_softmax = getattr(last, "activation", None) == "softmax" or getattr(last, "type", None) == "Softmax"
    if ends_in_softmax and ctx.pre_activation is not None:
        return ctx.pre_activation, True
    return output, False
