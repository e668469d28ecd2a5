"""The ort-training backend seen from cnnspec's main environment, where onnxruntime-training cannot be
installed: a clear message with the setup commands, refusals decided without the package, and the graph
it would differentiate checked against the compiled model on the current onnxruntime.

The backend's own tests run in its environment: tests/ort_training/ (docs/ort-training.md).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SPECS_DIR, run_cli

from cnnspec.analysis import check
from cnnspec.compiler import build_inference_model, initial_params
from cnnspec.spec import spec_from_data
from cnnspec.training import ort_artifacts, ort_backend

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime.training") is not None, reason="this environment has onnxruntime-training"
)
SETUP_LINES = [
    "python3.11 -m venv .venv-ort-training",
    ".venv-ort-training/bin/pip install onnxruntime-training-cpu==1.19.2",
    ".venv-ort-training/bin/pip install --no-deps -e .",
]


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 10)
    return folder / "d.npz"


def assert_setup_message(code: int, err: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err and err.startswith("error: ")
    assert "onnxruntime-training 1.19.2" in err and "is not installed" in err and "--backend native" in err
    for line in SETUP_LINES:
        assert line in err


def test_train_backend_ort_training_without_the_package_says_how_to_set_it_up(tmp_path, digits_npz):
    code, _, err = run_cli("train", SPECS_DIR / "digits.yaml", "--data", digits_npz, "-o", tmp_path / "m.onnx",
                           "--backend", "ort-training", "--epochs", "1")  # fmt: skip
    assert_setup_message(code, err)
    assert not (tmp_path / "m.onnx").exists()


def test_export_artifacts_without_the_package_says_how_to_set_it_up_and_writes_nothing(tmp_path):
    code, _, err = run_cli("export-artifacts", SPECS_DIR / "digits.yaml", tmp_path / "art")
    assert_setup_message(code, err)
    assert not (tmp_path / "art").exists()


def test_setup_commands_in_the_message_are_the_documented_ones():
    docs = (SPECS_DIR.parent / "docs" / "ort-training.md").read_text()
    for line in ort_artifacts.SETUP.splitlines():
        assert line in docs


def test_refusals_need_no_package():
    spec = spec_from_data({
        "name": "bn", "input": {"shape": [4, 4, 1]},
        "layers": [{"type": "BatchNormalization", "name": "norm"}, {"type": "Flatten"}, {"type": "Dense", "units": 2}],
        "training": {"optimizer": "nesterov"},
    })  # fmt: skip
    issues = ort_artifacts.unsupported(spec)
    assert [(i.layer, i.field) for i in issues] == [(0, "type"), (None, "training.optimizer")]
    assert "layers[0] BatchNormalization 'norm'" in issues[0].message and "no gradient" in issues[0].message


LOWERED = {
    "name": "lowered",
    "input": {"shape": [9, 9, 2]},
    "preprocess": {"scale": 0.01},
    "layers": [
        {"type": "Conv2D", "filters": 3, "kernel_size": 2, "activation": "elu"},
        {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "AveragePooling2D", "pool_size": [2, 1], "strides": 1},
        {"type": "Conv2D", "filters": 3, "kernel_size": 1},
        {"type": "GlobalMaxPooling2D"},
        {"type": "Dense", "units": 4, "activation": "softmax"},
    ],
}


def test_the_graph_given_to_ort_training_computes_the_compiled_model():
    """AveragePool as a depthwise Conv over the unpadded count, GlobalMaxPool as a whole-map MaxPool, Elu from
    Relu/Exp and the softmax left to the loss: softmax(its logits) equals the compiled model's output."""
    spec = spec_from_data(LOWERED)
    report = check(spec)
    params = initial_params(spec, report, 2)
    x = np.random.default_rng(3).uniform(0, 255, (5, 2, 9, 9)).astype(np.float32)

    def run(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]

    graph = ort_artifacts.training_graph(spec, report, params)
    assert not {"AveragePool", "GlobalMaxPool", "Elu", "Softmax"} & {n.op_type for n in graph.graph.node}
    logits = run(graph)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, run(build_inference_model(spec, report, params)), rtol=1e-5, atol=1e-7)


REWRITTEN = {
    "name": "rewritten",
    "input": {"shape": [7, 6, 2]},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 2, "activation": "selu"},
        {"type": "PReLU", "alpha_initializer": {"type": "random_uniform", "minval": -0.5, "maxval": 0.5}},
        {"type": "ELU", "alpha": 0.5},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "hard_sigmoid"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "hard_silu"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "softplus"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "softsign"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "mish"},
        {"type": "UpSampling2D", "interpolation": "bilinear"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 4},
        {"type": "Softmax"},
    ],
}


def test_the_rewritten_ops_compute_the_compiled_model():
    """Selu, PRelu, Elu(alpha), HardSigmoid, HardSwish, Softplus, Softsign rebuilt from Relu/Exp/Log/Mul/Div and a
    last Softmax layer left to the loss: softmax(its logits) equals the compiled model's output."""
    spec = spec_from_data(REWRITTEN)
    report = check(spec)
    params = initial_params(spec, report, 4)
    x = np.random.default_rng(5).uniform(0, 255, (5, 2, 7, 6)).astype(np.float32)

    def run(model):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]

    graph = ort_artifacts.training_graph(spec, report, params)
    rewritten = {"Selu", "PRelu", "Elu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Softmax"}
    assert not rewritten & {n.op_type for n in graph.graph.node}
    logits = run(graph)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, run(build_inference_model(spec, report, params)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "transpose",
    [{"kernel_size": 3, "strides": 2, "padding": "same"}, {"kernel_size": 2, "strides": 3},
     {"kernel_size": 4, "strides": 2, "padding": "same", "output_padding": 0},
     {"kernel_size": [3, 2], "strides": [2, 3], "padding": "same", "output_padding": [1, 2], "use_bias": False},
     {"kernel_size": 1, "strides": 2, "padding": "same"}, {"kernel_size": 3, "dilation_rate": 2, "activation": "tanh"},
     {"kernel_size": 5, "strides": 3, "output_padding": 1}],
)  # fmt: skip
def test_conv_transpose_lowered_for_ort_training_computes_the_compiled_model(transpose):
    """ORT-training has no ConvTransposeGrad kernel: the backend's Conv on the zero-stuffed input, padded by
    Keras's (left, right), with the flipped kernel, gives the compiled model's ConvTranspose values."""
    layers = [{"type": "Conv2D", "filters": 3, "kernel_size": 1}, {"type": "Conv2DTranspose", "filters": 2,
              **transpose}, {"type": "Flatten"}, {"type": "Dense", "units": 4, "activation": "softmax"}]  # fmt: skip
    spec = spec_from_data({"name": "t", "input": {"shape": [5, 4, 2]}, "preprocess": {"scale": 0.01}, "layers": layers})
    report = check(spec)
    params = initial_params(spec, report, 2)
    x = np.random.default_rng(3).uniform(0, 255, (3, 2, 5, 4)).astype(np.float32)
    graph = ort_artifacts.training_graph(spec, report, params)
    assert "ConvTranspose" not in {n.op_type for n in graph.graph.node}
    cpu = ["CPUExecutionProvider"]
    logits = ort.InferenceSession(graph.SerializeToString(), providers=cpu).run(None, {"input": x})[0]
    compiled = build_inference_model(spec, report, params)
    expected = ort.InferenceSession(compiled.SerializeToString(), providers=cpu).run(None, {"input": x})[0]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities / probabilities.sum(axis=1, keepdims=True), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("layer", "per_sample"),
    [({"type": "StochasticDepth", "drop_path_rate": 0.5}, True), ({"type": "SpatialDropout2D", "rate": 0.5}, False),
     ({"type": "Dropout", "rate": 0.5, "noise_shape": [None, 1, 1, 1]}, True)],
    ids=["StochasticDepth", "SpatialDropout2D", "Dropout-noise_shape"],
)  # fmt: skip
def test_broadcast_drops_in_the_graph_given_to_ort_training(layer, per_sample):
    """A Dropout of ones of the mask's shape, times x: with an identity head the logits are the positive pooled
    channels, each 0 or 2x (rate 0.5), whole samples (StochasticDepth) or single channels (SpatialDropout2D)."""
    layers = [{"type": "Conv2D", "filters": 3, "kernel_size": 1}, layer, {"type": "GlobalAveragePooling2D"},
              {"type": "Dense", "units": 3}]  # fmt: skip
    spec = spec_from_data({"name": "drops", "input": {"shape": [5, 5, 2]}, "layers": layers})
    report = check(spec)
    params = initial_params(spec, report, 2)
    params |= {"conv2d.weight": np.abs(params["conv2d.weight"]) + 0.1, "conv2d.bias": np.full(3, 0.5, np.float32),
               "dense.weight": np.eye(3, dtype=np.float32), "dense.bias": np.zeros(3, np.float32)}  # fmt: skip
    x = np.random.default_rng(4).uniform(1, 255, (64, 2, 5, 5)).astype(np.float32)
    graph = ort_artifacts.training_graph(spec, report, params)

    def run(model):
        options = ort.SessionOptions()  # NOTE: onnxruntime's optimizer removes Dropout even in training mode
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]

    dropped, pooled = run(graph), run(build_inference_model(spec, report, params))
    kept = dropped > pooled
    np.testing.assert_allclose(dropped, np.where(kept, 2 * pooled, 0.0), rtol=1e-5)
    assert ((kept == kept[:, :1]).all() if per_sample else not (kept == kept[:, :1]).all()) and 0.3 < kept.mean() < 0.7


class FakeTrainer:
    """OrtTrainer's surface (step/evaluate/params/set_params/checkpoint_bytes) without onnxruntime-training: one
    weight w, an update w -= lr * (w - target) and ORT's own step count, which only its checkpoint carries."""

    def __init__(self, checkpoint: bytes | None, log: list) -> None:
        import json

        saved = json.loads(checkpoint) if checkpoint is not None else {"w": 0.0, "updates": 0}
        self.w, self.updates, self.log = np.float32(saved["w"]), saved["updates"], log

    def step(self, x, y, lr):
        self.log.append(lr)
        self.w = np.float32(self.w - lr * (self.w - x.mean()))
        self.updates += 1
        return float((self.w - x.mean()) ** 2), int(len(y) // 2)

    def evaluate(self, x, y, batch):
        return float(abs(self.w - 3.0)), 0.5  # best (lowest) at w = 3: patience then stops the run

    def params(self, names):
        return {"w": np.array([self.w], np.float32)}

    def set_params(self, params):
        self.w = np.float32(params["w"][0])

    def checkpoint_bytes(self):
        import json

        return json.dumps({"w": float(self.w), "updates": self.updates}).encode()


def fake_run(tmp_path, rates, *, epochs, resume=False, log=None, **training):
    """ort_backend's runner over FakeTrainer, through the shared run_loop (as ort_backend.train_model does);
    `epochs` as the command line's --epochs (a resumed run may ask for more)."""
    from cnnspec.training.checkpoints import TrainState
    from cnnspec.training.loop import Data
    from cnnspec.training.trainer import resolve_settings, run_loop

    spec = spec_from_data({"name": "f", "input": {"shape": [2, 2, 1]}, "layers": [{"type": "Flatten"}],
                           "training": {"batch_size": 4, "learning_rate": 0.2, **training}})  # fmt: skip
    settings = resolve_settings(spec, epochs=epochs)
    x = np.linspace(0, 8, 40, dtype=np.float32).reshape(10, 1, 2, 2)
    data = Data(x, np.arange(10) % 2)
    opened = []

    def open_trainer(checkpoint):
        opened.append(checkpoint)
        return FakeTrainer(checkpoint, rates)

    runner = ort_backend.OrtStepRunner(open_trainer, ["w"])
    fresh = lambda: TrainState({"w": np.zeros(1, np.float32)}, {})  # noqa: E731
    result = run_loop(spec, data, data, settings, None, runner, runner.evaluate, fresh, backend="ort-training",
                      checkpoint_dir=tmp_path / "ck", resume=resume, log=log or (lambda line: None))  # fmt: skip
    return result, settings, runner, opened


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
def test_the_ort_runner_gets_the_native_loops_learning_rate_schedule(tmp_path, schedule):
    rates = []
    _, settings, runner, _ = fake_run(tmp_path, rates, schedule=schedule, step_epochs=2, epochs=5)
    assert len(rates) == 5 * 3 and runner.trainer.updates == 15  # 10 samples in batches of 4
    assert rates == [settings.lr_at(i // 3, i, 3) for i in range(15)]


def test_early_stopping_and_resume_of_the_ort_runner_come_from_the_native_loop(tmp_path):
    """patience restores the best weights and stops; the checkpoint holds ORT's checkpoint (its step count
    included), and a resumed run continues it: the same rates, weights and metrics as an uninterrupted run."""
    lines, rates = [], []
    whole, *_ = fake_run(tmp_path / "a", rates, epochs=30, patience=2, log=lines.append)
    assert whole.stopped_early and any(line.startswith("early stopping") for line in lines)
    assert whole.best_epoch == min(whole.history, key=lambda row: row["val_loss"])["epoch"]
    assert len(whole.history) == whole.best_epoch + 2

    first_rates = []
    part, *_ = fake_run(tmp_path / "b", first_rates, epochs=2, patience=2)
    again = []
    resumed, _, runner, opened = fake_run(tmp_path / "b", again, resume=True, epochs=30, patience=2)
    assert opened[0] is not None and runner.trainer.updates == len(rates)  # ORT's own count went on
    assert first_rates + again == rates
    pairs = zip(whole.history, resumed.history, strict=True)
    assert resumed.history == [dict(row, seconds=r["seconds"]) for row, r in pairs]
    assert np.array_equal(resumed.params["w"], whole.params["w"]) and resumed.best_epoch == whole.best_epoch


def test_ort_backend_has_no_loop_of_its_own():
    """Schedules, early stopping and checkpoints live in loop.py/checkpoints.py only (issue 11)."""
    for name in ("learning_rate_at", "_Run", "_npz_bytes"):
        assert not hasattr(ort_backend, name)
