"""Ops onnxruntime-training 1.19.2 has no gradient for, rebuilt from ops it has (ort_artifacts.training_graph).

The rewrites compute the same function (to float32 rounding): tests/test_ort_backend_main_env.py runs the rewritten
graph against the compiled model on the current onnxruntime, tests/ort_training/ against ORT's eval artifact.
"""

from __future__ import annotations


def rewrite_ops(g, start: int) -> None:
    """Replace the ops ORT 1.19.2 has no gradient for (from node `start` on) by ops that have one.

    With r(x) = Relu(x) and |x| = r(x) + r(-x), all without overflow:
      Elu(alpha)             r(x) + alpha (exp(-r(-x)) - 1)       (alpha 1: r(x) + exp(-r(-x)) - 1)
      Selu(alpha, gamma)     gamma (r(x) + alpha (exp(-r(-x)) - 1))
      PRelu(x, slope)        r(x) - slope r(-x)
      HardSigmoid(a, b)      (r(a x + b) - r(a x + b - 1))        = clip(a x + b, 0, 1)
      HardSwish              x (r(x/6 + 1/2) - r(x/6 - 1/2))
      Softplus               r(x) + log(1 + exp(-|x|))
      Softsign               x / (1 + |x|)
    """
    from onnx import helper

    for i in range(len(g.nodes) - 1, start - 1, -1):
        node = g.nodes[i]
        build = _REWRITES.get(node.op_type)
        if build is None:
            continue
        scope, (y,) = node.name.rsplit("/", 1)[0], node.output
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        before, after = g.nodes[:i], g.nodes[i + 1 :]
        g.nodes = before
        build(g, scope, list(node.input), attrs)
        g.nodes[-1].output[0] = y  # the last new node writes the replaced node's output
        g.nodes += after


def _relu(g, x: str, scope: str) -> str:
    return g.op("Relu", [x], scope)


def _negative_exp(g, x: str, scope: str, alpha: float) -> str:
    """r(x) + alpha (exp(-r(-x)) - 1): ELU; for alpha 1 the form used since the first Elu rewrite."""
    negative_part = g.op("Neg", [_relu(g, g.op("Neg", [x], scope), scope)], scope)
    exp = g.op("Exp", [negative_part], scope)
    if alpha == 1.0:
        total = g.op("Add", [_relu(g, x, scope), exp], scope)
        return g.op("Sub", [total, g.constant(scope, 1.0)], scope)
    below = g.op("Mul", [g.op("Sub", [exp, g.constant(scope, 1.0)], scope), g.constant(scope, alpha)], scope)
    return g.op("Add", [_relu(g, x, scope), below], scope)


def _abs(g, x: str, scope: str) -> str:
    return g.op("Add", [_relu(g, x, scope), _relu(g, g.op("Neg", [x], scope), scope)], scope)


def _clip01(g, z: str, scope: str) -> str:
    """clip(z, 0, 1) = r(z) - r(z - 1)."""
    return g.op("Sub", [_relu(g, z, scope), _relu(g, g.op("Sub", [z, g.constant(scope, 1.0)], scope), scope)], scope)


def _hard_sigmoid(g, x: str, scope: str, alpha: float, beta: float) -> str:
    z = g.op("Add", [g.op("Mul", [x, g.constant(scope, alpha)], scope), g.constant(scope, beta)], scope)
    return _clip01(g, z, scope)


def _softplus(g, x: str, scope: str) -> str:
    tail = g.op("Exp", [g.op("Neg", [_abs(g, x, scope)], scope)], scope)
    return g.op(
        "Add", [_relu(g, x, scope), g.op("Log", [g.op("Add", [g.constant(scope, 1.0), tail], scope)], scope)], scope
    )


_REWRITES = {
    "Elu": lambda g, s, xs, a: _negative_exp(g, xs[0], s, a.get("alpha", 1.0)),
    "Selu": lambda g, s, xs, a: g.op("Mul", [_negative_exp(g, xs[0], s, a["alpha"]), g.constant(s, a["gamma"])], s),
    "PRelu": lambda g, s, xs, a: g.op(
        "Sub", [_relu(g, xs[0], s), g.op("Mul", [xs[1], _relu(g, g.op("Neg", [xs[0]], s), s)], s)], s
    ),
    "HardSigmoid": lambda g, s, xs, a: _hard_sigmoid(g, xs[0], s, a.get("alpha", 0.2), a.get("beta", 0.5)),
    "HardSwish": lambda g, s, xs, a: g.op("Mul", [xs[0], _hard_sigmoid(g, xs[0], s, 1 / 6, 0.5)], s),
    "Softplus": lambda g, s, xs, a: _softplus(g, xs[0], s),
    "Softsign": lambda g, s, xs, a: g.op("Div", [xs[0], g.op("Add", [g.constant(s, 1.0), _abs(g, xs[0], s)], s)], s),
}
