"""Issue 12's MobileNetV2, MobileNetV3-Small and small U-Net specs against the networks they reproduce.

The totals are Keras 3's `model.count_params()` (and the size of `model.non_trainable_weights`) for
keras.applications.MobileNetV2(weights=None) and MobileNetV3Small(weights=None, input_shape=(224, 224, 3))
(its in-model Rescaling layer has no weights; the spec's preprocess does its job), and for unet_small written
layer for layer with keras.layers (functional API). The per-stage counts are rebuilt here from the Keras
sources' arithmetic (keras/src/applications/mobilenet_v2.py, mobilenet_v3.py: _make_divisible / _depth,
_inverted_res_block, _se_block and the stage tables), so a wrong channel count shows up in its stage. Each spec
validates, compiles, classifies an image and trains one step; unet_small also trains an epoch on random data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnspec.analysis import check
from cnnspec.compiler import compile_spec, initial_params, model_bytes
from cnnspec.spec import load_spec
from cnnspec.training.loop import Data, dropout_masks
from cnnspec.training.optimizers import Optimizer
from cnnspec.training.program import build_train_step
from cnnspec.training.runner import StepRunner
from cnnspec.training.trainer import resolve_settings, train_model

SPECS = Path(__file__).resolve().parents[1] / "specs"

# (count_params(), non-trainable) as Keras 3.x (jax backend) reports them for the models named above.
KERAS = {
    "mobilenet_v2": (3_538_984, 34_112),
    "mobilenet_v3_small": (2_554_968, 12_112),
    "unet_small": (497_098, 1_408),
}


# ---- the Keras sources' arithmetic -------------------------------------------------------------------------


def make_divisible(v: float, divisor: int = 8) -> int:
    """Keras's _make_divisible (MobileNetV2) and _depth (MobileNetV3): the same function."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def bn(c: int) -> int:
    return 4 * c  # gamma, beta, moving mean, moving variance


def conv(k: int, cin: int, cout: int, bias: bool) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def v2_block(cin: int, t: int, cout: int, first: bool = False) -> int:
    """mobilenet_v2._inverted_res_block: [1x1 expand + BN] -> 3x3 depthwise + BN -> 1x1 project + BN."""
    e = cin * t
    expand = 0 if first else conv(1, cin, e, False) + bn(e)
    return expand + 9 * e + bn(e) + conv(1, e, cout, False) + bn(cout)


def v3_block(cin: int, expansion: float, cout: int, k: int, se: bool, first: bool = False) -> int:
    """mobilenet_v3._inverted_res_block with _se_block (ratio 0.25, both SE convs with bias)."""
    e = make_divisible(cin * expansion)
    expand = 0 if first else conv(1, cin, e, False) + bn(e)
    s = make_divisible(e * 0.25)
    squeeze = conv(1, e, s, True) + conv(1, s, e, True) if se else 0
    return expand + k * k * e + bn(e) + squeeze + conv(1, e, cout, False) + bn(cout)


def v2_stages() -> dict[str, int]:
    """MobileNetV2(alpha=1): the stem, 17 blocks (Keras's block_id order), Conv_1, predictions."""
    table = [(16, 1, 1), (24, 2, 6), (32, 3, 6), (64, 4, 6), (96, 3, 6), (160, 3, 6), (320, 1, 6)]  # (c, n, t)
    stages = {"Conv1": conv(3, 3, 32, False), "bn_Conv1": bn(32)}
    cin, block = 32, 0
    for cout, n, t in table:
        for _ in range(n):
            name = "expanded_conv" if block == 0 else f"block_{block}"
            stages[name] = v2_block(cin, t, cout, first=block == 0)
            cin, block = cout, block + 1
    stages |= {"Conv_1": conv(1, 320, 1280, False), "Conv_1_bn": bn(1280), "predictions": 1280 * 1000 + 1000}
    return stages


def v3_small_stages() -> dict[str, int]:
    """MobileNetV3Small's stack_fn: (expansion, filters, kernel, stride, se) per block, then the head."""
    table = [(1, 16, 3, True), (72 / 16, 24, 3, False), (88 / 24, 24, 3, False), (4, 40, 5, True),
             (6, 40, 5, True), (6, 40, 5, True), (3, 48, 5, True), (3, 48, 5, True), (6, 96, 5, True),
             (6, 96, 5, True), (6, 96, 5, True)]  # fmt: skip
    stages = {"conv": conv(3, 3, 16, False), "conv_bn": bn(16)}
    cin = 16
    for i, (t, cout, k, se) in enumerate(table):
        stages["expanded_conv" + (f"_{i}" if i else "")] = v3_block(cin, t, cout, k, se, first=i == 0)
        cin = cout
    last = make_divisible(cin * 6)  # 576
    stages |= {"conv_1": conv(1, cin, last, False), "conv_1_bn": bn(last), "conv_2": conv(1, last, 1024, True),
               "logits": conv(1, 1024, 1000, True)}  # fmt: skip
    return stages


def unet_stages() -> dict[str, int]:
    def double(cin: int, cout: int) -> int:
        return conv(3, cin, cout, False) + bn(cout) + conv(3, cout, cout, False) + bn(cout)

    return {"enc1": double(3, 16), "enc2": double(16, 32), "enc3": double(32, 64), "bottleneck": double(64, 128),
            "up3": conv(2, 128, 64, True), "dec3": double(128, 64), "up2": conv(3, 64, 32, True),
            "dec2": double(64, 32), "up1": conv(3, 32, 16, True), "dec1": double(32, 16),
            "classifier": 16 * 10 + 10}  # fmt: skip


STAGES = {"mobilenet_v2": v2_stages, "mobilenet_v3_small": v3_small_stages, "unet_small": unet_stages}

# Keras's output shapes (H, W, C) at the end of each stage (model.get_layer(name).output.shape, 224x224 input).
SHAPES = {
    "mobilenet_v2": {"Conv1_relu": (112, 112, 32), "expanded_conv.project_BN": (112, 112, 16),
                     "block_2.add": (56, 56, 24), "block_5.add": (28, 28, 32), "block_9.add": (14, 14, 64),
                     "block_12.add": (14, 14, 96), "block_15.add": (7, 7, 160), "block_16.project_BN": (7, 7, 320),
                     "out_relu": (7, 7, 1280), "predictions": (1000,)},
    "mobilenet_v3_small": {"conv": (112, 112, 16), "expanded_conv.project_bn": (56, 56, 16),
                           "expanded_conv.squeeze_excite.avg_pool": (1, 1, 16),
                           "expanded_conv.squeeze_excite.conv": (1, 1, 8),
                           "expanded_conv_2.add": (28, 28, 24), "expanded_conv_5.add": (14, 14, 40),
                           "expanded_conv_7.add": (14, 14, 48), "expanded_conv_10.add": (7, 7, 96),
                           "expanded_conv_10.squeeze_excite.conv": (1, 1, 144), "conv_1": (7, 7, 576),
                           "global_average_pooling2d": (1, 1, 576), "conv_2": (1, 1, 1024),
                           "logits": (1, 1, 1000), "predictions": (1000,)},
    "unet_small": {"enc1.relu2": (32, 32, 16), "enc2.relu2": (16, 16, 32), "enc3.relu2": (8, 8, 64),
                   "bottleneck.relu2": (4, 4, 128), "up3": (8, 8, 64), "dec3.concat": (8, 8, 128),
                   "up2_resize": (16, 16, 64), "up2": (16, 16, 32), "dec2.concat": (16, 16, 64),
                   "up1": (32, 32, 16), "dec1.concat": (32, 32, 32), "dec1.conv.relu2": (32, 32, 16),
                   "classifier": (10,)},
}  # fmt: skip

# Keras's layer counts by kind (InputLayer and V3's weightless Rescaling left out). V3's SE gate is
# ReLU(6.)(x + 3) / 6 in Keras, 9 ReLU layers there, hard_sigmoid Activations here: ReLU + Activation agree.
KINDS = {
    "mobilenet_v2": {"Conv2D": 35, "DepthwiseConv2D": 17, "BatchNormalization": 52, "ReLU": 35, "ZeroPadding2D": 4,
                     "Add": 10, "GlobalAveragePooling2D": 1, "Dense": 1},
    "mobilenet_v3_small": {"Conv2D": 43, "DepthwiseConv2D": 11, "BatchNormalization": 34, "ReLU+Activation": 43,
                           "ZeroPadding2D": 4, "Add": 6, "Multiply": 9, "GlobalAveragePooling2D": 10, "Dropout": 1,
                           "Flatten": 1},
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(KERAS))
def named(request):
    spec = load_spec(SPECS / f"{request.param}.yaml")
    return request.param, spec, check(spec)


def test_parameter_counts_match_keras(named) -> None:
    name, _, report = named
    total, frozen = KERAS[name]
    assert (report.total_params, report.total_params - report.trainable_params) == (total, frozen)
    assert sum(STAGES[name]().values()) == total  # the arithmetic below adds up to Keras's total


def test_parameter_counts_per_stage_follow_the_keras_arithmetic(named) -> None:
    name, _, report = named
    produced: dict[str, int] = {}
    for row in report.layers:
        top = row.name.split(".")[0]
        produced[top] = produced.get(top, 0) + row.params
    produced = {k: v for k, v in produced.items() if v}
    assert produced == STAGES[name]()


def test_stage_shapes_match_keras(named) -> None:
    name, _, report = named
    shapes = {row.name: tuple(row.output_shape) for row in report.layers}
    assert {layer: shapes[layer] for layer in SHAPES[name]} == SHAPES[name]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_layer_for_layer_kinds_match_keras(name: str) -> None:
    counts: dict[str, int] = {}
    for row in check(load_spec(SPECS / f"{name}.yaml")).layers:
        kind = "ReLU+Activation" if name == "mobilenet_v3_small" and row.type in ("ReLU", "Activation") else row.type
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == KINDS[name]


def test_compiles_runs_and_trains_a_step(named) -> None:
    name, spec, report = named
    model = compile_spec(spec, seed=0)
    onnx.checker.check_model(model, full_check=name == "unet_small")
    h, w, c = spec.input_shape
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, c, h, w)).astype(np.float32)
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"input": image})
    assert probabilities.shape == (1, report.output_shape[0])
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)

    program = build_train_step(spec, report, Optimizer("sgd"))
    runner = StepRunner(program)
    params = initial_params(spec, report, seed=0)
    runner.load(params, {})
    x = rng.uniform(0, 255, (2, c, h, w)).astype(np.float32)
    y = np.array([0, 1], np.int64)
    loss, _ = runner.step(x, y, 0.01, 0, dropout_masks(program, 0, 0, 0, 2))
    assert np.isfinite(loss)
    after = runner.params()
    changed = [k for k in program.trainable if not np.array_equal(after[k], params[k])]
    assert len(changed) == len(program.trainable)  # every trainable parameter got a gradient


def test_unet_small_trains_an_epoch_on_random_images() -> None:
    spec = load_spec(SPECS / "unet_small.yaml")
    rng = np.random.default_rng(0)
    data = Data(rng.uniform(0, 255, (100, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 100).astype(np.int64))
    settings = resolve_settings(spec, epochs=1, batch_size=32)
    result = train_model(spec, data, None, settings, log=lambda line: None)
    (row,) = result.history
    assert np.isfinite(row["train_loss"]) and 0 <= row["train_accuracy"] <= 1
    assert result.params["bottleneck.bn2.running_var"].shape == (128,)
