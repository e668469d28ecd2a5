"""Each optimizer's ONNX update against a numpy transcription of Keras 3's formulas, over several steps."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cnnspec.builder import GraphBuilder
from cnnspec.training.optimizers import Optimizer


def keras_step(kind, w, g, state, lr, t, *, momentum=0.9, b1=0.9, b2=0.999, eps=1e-7, wd=0.0):
    """keras/src/optimizers/{sgd,adam}.py update_step and Optimizer._apply_weight_decay, in float64."""
    if wd:
        w = w - w * wd * lr
    if kind == "sgd":
        return w - lr * g, []
    if kind in ("momentum", "nesterov"):
        (m,) = state
        m = -g * lr + m * momentum
        return (w + (-g * lr + m * momentum) if kind == "nesterov" else w + m), [m]
    m, v = state
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    return w - alpha * m / (np.sqrt(v) + eps), [m, v]


def update_session(opt: Optimizer, shape):
    g = GraphBuilder(17)
    state = opt.state_names("w")
    scalars = opt.step_scalars(g, "lr", g.op("Add", [g.op("Cast", ["step"], "t", to=1), g.constant("t", 1.0)], "t"))
    w, new_state = opt.emit(g, "w", "grad", state, scalars)
    outputs = [w, *new_state]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, list(shape)) for n in ["w", "grad", *state]]
    inputs += [helper.make_tensor_value_info("lr", f, []), helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    graph = helper.make_graph(
        g.nodes, "opt", inputs, [helper.make_tensor_value_info(o, f, None) for o in outputs], initializer=g.initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), state


CASES = [
    ("sgd", {}),
    ("momentum", {"momentum": 0.8}),
    ("nesterov", {"momentum": 0.95}),
    ("adam", {"beta_1": 0.85, "beta_2": 0.99, "epsilon": 1e-6}),
    ("adamw", {"weight_decay": 0.05}),
    ("sgd", {"weight_decay": 0.1}),
    ("nesterov", {"weight_decay": 0.01}),
]


@pytest.mark.parametrize(("kind", "options"), CASES, ids=[f"{k}-{sorted(o)}" for k, o in CASES])
def test_update_matches_keras_formulas(kind, options):
    opt = Optimizer(kind, **options)
    rng = np.random.default_rng(0)
    shape = (4, 3)
    session, state_names = update_session(opt, shape)
    w = rng.normal(size=shape).astype(np.float32)
    state = [np.zeros(shape, np.float32) for _ in state_names]
    w64, state64 = w.astype(np.float64), [s.astype(np.float64) for s in state]
    keras = {"momentum": opt.momentum, "b1": opt.beta_1, "b2": opt.beta_2, "eps": opt.epsilon, "wd": opt.weight_decay}
    for step, lr in enumerate([0.1, 0.05, 0.02, 0.01]):
        grad = rng.normal(size=shape).astype(np.float32)
        feeds = {"w": w, "grad": grad, "lr": np.asarray(lr, np.float32), "step": np.asarray(step, np.int64)}
        w, *state = session.run(None, feeds | dict(zip(state_names, state, strict=True)))
        w64, state64 = keras_step(kind, w64, grad.astype(np.float64), state64, lr, step + 1, **keras)
        np.testing.assert_allclose(w, w64, rtol=1e-5, atol=1e-6)
        for got, want in zip(state, state64, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_adamw_defaults_to_keras_weight_decay():
    from cnnspec.spec import Training

    assert Optimizer.from_training(Training(optimizer="adamw")).weight_decay == 0.004
    assert Optimizer.from_training(Training(optimizer="adamw", weight_decay=0.01)).weight_decay == 0.01
    assert Optimizer.from_training(Training(optimizer="adam")).weight_decay == 0.0


def test_state_slots():
    params = {"d.weight": np.ones((2, 2), np.float32)}
    assert Optimizer("sgd").initial_state(params) == {}
    assert list(Optimizer("momentum").initial_state(params)) == ["velocity.d.weight"]
    assert list(Optimizer("adam").initial_state(params)) == ["m.d.weight", "v.d.weight"]
