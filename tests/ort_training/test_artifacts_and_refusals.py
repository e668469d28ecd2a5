"""`cnnspec export-artifacts` and what the backend refuses or lowers differently, in the ort-training env."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from cnnspec.analysis import check
from cnnspec.compiler import build_inference_model, initial_params
from cnnspec.errors import CnnspecError, SpecError
from cnnspec.spec import spec_from_data
from cnnspec.training import ort_artifacts

from .ort_helpers import ROOT, run_cli


def make_spec(layers: list[dict], training: dict | None = None) -> dict:
    data = {"name": "t", "input": {"shape": [7, 7, 2]}, "layers": layers}
    return data | ({"training": training} if training else {})


def test_export_artifacts_writes_four_loadable_artifacts(tmp_path, ort_training):
    _, api = ort_training
    done = run_cli("export-artifacts", ROOT / "specs" / "digits.yaml", tmp_path / "art", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == sorted(ort_artifacts.ARTIFACTS)
    for name in ort_artifacts.ARTIFACTS[:3]:
        assert onnx.load(str(tmp_path / "art" / name)).ir_version <= ort_artifacts.MAX_IR_VERSION
    trainer = ort_artifacts.OrtTrainer(tmp_path / "art", api)  # CheckpointState + Module + Optimizer load them
    assert trainer.module.input_names()[:2] == ["input", "labels"]
    x, y = np.random.default_rng(0).uniform(0, 16, (5, 1, 8, 8)).astype(np.float32), np.arange(5)
    first, _ = trainer.step(x, y, 0.01)
    assert np.isfinite(first)
    ort.InferenceSession(str(tmp_path / "art" / "eval_model.onnx"), providers=["CPUExecutionProvider"])


def test_export_artifacts_into_a_file_is_a_usage_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    done = run_cli("export-artifacts", ROOT / "specs" / "digits.yaml", target)
    assert done.returncode == 2 and "is a file" in done.stderr and "Traceback" not in done.stderr


BN = [{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "BatchNormalization"}, {"type": "Flatten"},
      {"type": "Dense", "units": 3}]  # fmt: skip


def test_batch_normalization_is_refused_before_any_work_naming_the_layer(tmp_path):
    with pytest.raises(SpecError) as err:
        ort_artifacts.export_artifacts(spec_from_data(make_spec(BN)), tmp_path / "never")
    assert "layers[1] BatchNormalization 'batch_normalization'" in str(err.value)
    assert "no gradient" in str(err.value) and "--backend native" in str(err.value)
    assert err.value.issues[0].layer == 1 and not (tmp_path / "never").exists()


def test_refusal_through_the_cli_is_exit_1_without_traceback(tmp_path):
    spec = tmp_path / "bn.yaml"
    spec.write_text(str(make_spec(BN)).replace("'", '"'))  # a Python dict literal of strings is valid YAML flow
    done = run_cli("export-artifacts", spec, tmp_path / "art")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: layers[1] BatchNormalization" in done.stderr


@pytest.mark.parametrize(
    ("training", "words"),
    [({"optimizer": "momentum"}, "no 'momentum' optimizer"), ({"optimizer": "nesterov"}, "no 'nesterov' optimizer"),
     ({"label_smoothing": 0.1}, "no label smoothing")],
)  # fmt: skip
def test_training_settings_it_lacks_are_refused(training, words):
    spec = spec_from_data(make_spec([{"type": "Flatten"}, {"type": "Dense", "units": 3}], training))
    with pytest.raises(SpecError, match=words):
        ort_artifacts.check_supported(spec)


UNTRAINABLE_RAW = [
    ([{"type": "AveragePooling2D", "pool_size": 2}], "crashed with SIGFPE"),
    ([{"type": "GlobalMaxPooling2D"}], "no gradient for GlobalMaxPool"),
    ([{"type": "Activation", "activation": "elu"}], "no gradient for Elu"),
    ([{"type": "PReLU"}], "no gradient for PRelu"),
    ([{"type": "Activation", "activation": "hard_sigmoid"}], "no gradient for HardSigmoid"),
    ([{"type": "Activation", "activation": "hard_silu"}], "no gradient for HardSwish"),
    ([{"type": "Activation", "activation": "softplus"}], "no gradient for Softplus"),
    ([{"type": "Activation", "activation": "softsign"}], "no gradient for Softsign"),
    ([{"type": "Activation", "activation": "selu"}], "no gradient for Selu"),
    ([{"type": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2}], "no kernel for ConvTransposeGrad"),
]


@pytest.mark.parametrize(("layers", "words"), UNTRAINABLE_RAW)
def test_raw_ops_it_cannot_differentiate_fail_cleanly_in_the_child(layers, words):
    """Why the lowering exists: the compile graph's own op kills or stops ORT; the child turns that into an
    error. (The backend never sends these ops: see the next test.)"""
    tail = [] if layers[0]["type"].startswith("Global") else [{"type": "Flatten"}]
    spec = spec_from_data(make_spec([{"type": "Conv2D", "filters": 2, "kernel_size": 1}, *layers, *tail,
                                     {"type": "Dense", "units": 3}]))  # fmt: skip
    report = check(spec)
    raw = build_inference_model(spec, report, initial_params(spec, report, 0))
    with tempfile.TemporaryDirectory() as temp, pytest.raises(CnnspecError, match=words):
        ort_artifacts.generate_artifacts(
            raw, ort_artifacts.trainable(spec, report), ort_artifacts.OptimizerConfig(), Path(temp)
        )


LOWERED = make_spec([
    {"type": "Conv2D", "filters": 3, "kernel_size": 2, "activation": "elu"},
    {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
    {"type": "ZeroPadding2D", "padding": [[1, 0], [0, 2]]},
    {"type": "AveragePooling2D", "pool_size": 2},
    {"type": "GlobalMaxPooling2D"},
    {"type": "Dropout", "rate": 0.3},
    {"type": "Dense", "units": 4, "activation": "softmax"},
])  # fmt: skip


@pytest.mark.filterwarnings("ignore:overflow encountered in expm1")  # the reference evaluates both branches
def test_lowered_layers_train_and_evaluate_like_the_compiled_model(tmp_path, ort_training):
    """The eval artifact (Dropout off) gives the compiled model's probabilities: AveragePool as a depthwise
    Conv divided by the unpadded count, GlobalMaxPool as a whole-map MaxPool, Elu from Relu/Exp."""
    _, api = ort_training
    spec = spec_from_data(LOWERED)
    report = check(spec)
    params = initial_params(spec, report, 5)
    graph = ort_artifacts.training_graph(spec, report, params)
    assert not {"AveragePool", "GlobalMaxPool", "Elu", "Softmax"} & {n.op_type for n in graph.graph.node}
    ort_artifacts.generate_artifacts(
        graph, ort_artifacts.trainable(spec, report), ort_artifacts.OptimizerConfig(), tmp_path
    )
    trainer = ort_artifacts.OrtTrainer(tmp_path, api)
    x = np.random.default_rng(1).uniform(0, 255, (6, 2, 7, 7)).astype(np.float32)
    y = np.arange(6) % 4
    trainer.module.eval()
    _, logits = trainer.module(x, y)
    # NOTE: the oracle is onnx's reference evaluator: onnxruntime 1.19.2 itself runs this compiled model wrong
    # (its Pad fusion folds ZeroPadding2D into the AveragePool, whose divisor then skips those zeros).
    expected = ReferenceEvaluator(build_inference_model(spec, report, params)).run(["output"], {"input": x})[0]
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), expected, rtol=1e-5, atol=1e-6)
    loss, _ = trainer.step(x, y, 0.05)
    assert np.isfinite(loss)


REWRITTEN = make_spec([
    {"type": "Conv2D", "filters": 4, "kernel_size": 2, "activation": "selu"},
    {"type": "PReLU", "alpha_initializer": {"type": "random_uniform", "minval": -0.5, "maxval": 0.5}},
    {"type": "ELU", "alpha": 0.5},
    {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "hard_sigmoid"},
    {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "hard_swish"},
    {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "softplus"},
    {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "softsign"},
    {"type": "Conv2D", "filters": 4, "kernel_size": 1, "activation": "mish"},
    {"type": "UpSampling2D", "interpolation": "bilinear"},
    {"type": "Flatten"},
    {"type": "Dense", "units": 4},
    {"type": "Softmax"},
])  # fmt: skip


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the reference evaluates both branches
def test_rewritten_ops_evaluate_like_the_compiled_model(tmp_path, ort_training):
    """Selu, PRelu, Elu with its alpha, HardSigmoid, HardSwish, Softplus, Softsign (in mish too) are rebuilt from
    Relu/Exp/Log/Mul/Div (no ORT gradient for them); a last Softmax layer is left to the loss. The eval artifact
    gives the compiled model's probabilities."""
    _, api = ort_training
    spec = spec_from_data(REWRITTEN)
    report = check(spec)
    params = initial_params(spec, report, 6)
    graph = ort_artifacts.training_graph(spec, report, params)
    rewritten = {"Selu", "PRelu", "Elu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Softmax"}
    assert not rewritten & {n.op_type for n in graph.graph.node}
    ort_artifacts.generate_artifacts(
        graph, ort_artifacts.trainable(spec, report), ort_artifacts.OptimizerConfig(), tmp_path
    )
    trainer = ort_artifacts.OrtTrainer(tmp_path, api)
    x = np.random.default_rng(2).uniform(0, 255, (6, 2, 7, 7)).astype(np.float32)
    y = np.arange(6) % 4
    trainer.module.eval()
    _, logits = trainer.module(x, y)
    expected = ReferenceEvaluator(build_inference_model(spec, report, params)).run(["output"], {"input": x})[0]
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), expected, rtol=1e-5, atol=1e-6)


BROADCAST_DROPS = {  # layer -> how the mask repeats over the 3 channels of the logits
    "StochasticDepth": ({"type": "StochasticDepth", "drop_path_rate": 0.5}, "sample"),
    "Dropout noise_shape per sample": ({"type": "Dropout", "rate": 0.5, "noise_shape": [None, 1, 1, 1]}, "sample"),
    "SpatialDropout2D": ({"type": "SpatialDropout2D", "rate": 0.5}, "channel"),
    "Dropout noise_shape per channel": ({"type": "Dropout", "rate": 0.5, "noise_shape": [None, 1, 1, None]}, "channel"),
}


@pytest.mark.parametrize(("layer", "unit"), BROADCAST_DROPS.values(), ids=BROADCAST_DROPS.keys())
def test_broadcast_drops_drop_whole_samples_or_channels_in_training_only(tmp_path, ort_training, layer, unit):
    """ONNX Dropout has no noise_shape: the backend drops a tensor of ones of the mask's shape and multiplies.
    With the head made the identity, the logits are the pooled channels times the mask: each 0 or 2x its eval
    value, the same for a whole sample (StochasticDepth) or per channel (SpatialDropout2D), and no drop in eval."""
    _, api = ort_training
    spec = spec_from_data(make_spec([{"type": "Conv2D", "filters": 3, "kernel_size": 1}, layer,
                                     {"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 3}]))  # fmt: skip
    report = check(spec)
    params = initial_params(spec, report, 2)
    params |= {  # positive pooled channels (x > 0), and the head passes them through as the logits
        "conv2d.weight": np.abs(params["conv2d.weight"]) + 0.1, "conv2d.bias": np.full(3, 0.5, np.float32),
        "dense.weight": np.eye(3, dtype=np.float32), "dense.bias": np.zeros(3, np.float32),
    }  # fmt: skip
    ort_artifacts.generate_artifacts(
        ort_artifacts.training_graph(spec, report, params), ort_artifacts.trainable(spec, report),
        ort_artifacts.OptimizerConfig(), tmp_path,
    )  # fmt: skip
    trainer = ort_artifacts.OrtTrainer(tmp_path, api)
    x = np.random.default_rng(3).uniform(1, 255, (64, 2, 7, 7)).astype(np.float32)
    y = np.arange(64) % 3
    trainer.module.eval()
    _, pooled = trainer.module(x, y)
    expected = ReferenceEvaluator(build_inference_model(spec, report, params)).run(["output"], {"input": x})[0]
    np.testing.assert_allclose(pooled, expected, rtol=1e-5)  # no softmax at the end: the output is the logits
    trainer.module.train()
    _, dropped = trainer.module(x, y)
    mask = dropped / pooled
    np.testing.assert_allclose(np.where(mask < 1, 0.0, mask), np.where(mask < 1, 0.0, 2.0), rtol=1e-5)
    kept = mask > 1
    per_sample = (kept == kept[:, :1]).all(axis=1)
    assert per_sample.all() if unit == "sample" else not per_sample.all()
    assert 0.3 < kept.mean() < 0.7


def test_export_artifacts_json_describes_the_four_files(tmp_path, ort_training):
    import hashlib
    import json

    done = run_cli("export-artifacts", ROOT / "specs" / "digits.yaml", tmp_path / "art", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # one document; the "wrote" lines are on stderr
    assert doc["folder"] == str(tmp_path / "art")
    assert [Path(f["path"]).name for f in doc["files"]] == list(ort_artifacts.ARTIFACTS)
    for entry in doc["files"]:
        data = Path(entry["path"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
