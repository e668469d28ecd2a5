"""specs/efficientnet_b0.yaml and specs/convnext_tiny.yaml against the Keras applications they reproduce.

Reference numbers: Keras 3.15.1 (jax backend), `keras.applications.EfficientNetB0(weights=None)` and
`keras.applications.ConvNeXtTiny(weights=None)`, 224x224x3: `model.count_params()` and the sizes of
`model.non_trainable_weights`.

- EfficientNetB0: 5,330,571 parameters, 42,023 non-trainable. Its stem's Normalization layer (un-adapted) holds
  mean [3], variance [3] and count [] = 7 non-trainable weights; `preprocess:` replaces it, so the spec has
  5,330,564 and 42,016 (the BatchNormalization moving means and variances).
- ConvNeXtTiny: 28,589,128 parameters, none non-trainable. Its PreStem Normalization receives mean and variance
  as constants and holds no weights, so nothing is subtracted.

The per-stage counts below are rebuilt independently from keras/src/applications/efficientnet.py (DEFAULT_BLOCKS_ARGS,
`block`) and convnext.py (MODEL_CONFIGS["tiny"], ConvNeXtBlock, the downsampling layers, Head), then compared with
the spec's rows. Each spec compiles, classifies a random image with onnxruntime and trains one SGD step (batch 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnspec.analysis import Report, check
from cnnspec.compiler import compile_spec, initial_params, model_bytes
from cnnspec.spec import load_spec
from cnnspec.training.loop import dropout_masks
from cnnspec.training.optimizers import Optimizer
from cnnspec.training.program import build_train_step
from cnnspec.training.runner import StepRunner

SPECS = Path(__file__).resolve().parents[1] / "specs"

KERAS = {  # spec: (Keras count_params(), Keras non-trainable, weights of Keras's in-model Normalization layer)
    "efficientnet_b0": (5_330_571, 42_023, 3 + 3 + 1),  # mean, variance, count
    "convnext_tiny": (28_589_128, 0, 0),  # mean and variance passed as constants
}


def _report(name: str) -> Report:
    report = check(load_spec(SPECS / f"{name}.yaml"))
    assert not report.issues, report.issues
    return report


def _rows(report: Report, prefix: str) -> list:
    return [row for row in report.layers if row.name == prefix or row.name.startswith(prefix + ".")]


# --- EfficientNet-B0: keras/src/applications/efficientnet.py -------------------------------------------------------

# DEFAULT_BLOCKS_ARGS as (kernel_size, repeats, filters_in, filters_out, expand_ratio, strides); se_ratio 0.25 for all.
# B0's width and depth coefficients are 1.0, so round_filters and round_repeats leave these as they are.
EFFICIENTNET_BLOCKS = [
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
]


def batch_norm(channels: int) -> tuple[int, int]:
    """(trainable, non-trainable): gamma, beta; moving mean, moving variance."""
    return 2 * channels, 2 * channels


def mbconv(
    filters_in: int, expand_ratio: int, filters_out: int, kernel: int, se_ratio: float = 0.25
) -> tuple[int, int]:
    """Keras's efficientnet `block`: (trainable, non-trainable) parameters."""
    filters = filters_in * expand_ratio
    filters_se = max(1, int(filters_in * se_ratio))  # the block's INPUT filters, not the expanded ones
    trainable = frozen = 0
    if expand_ratio != 1:  # expand_conv (no bias) + expand_bn
        trainable += filters_in * filters + batch_norm(filters)[0]
        frozen += batch_norm(filters)[1]
    trainable += kernel * kernel * filters + batch_norm(filters)[0]  # dwconv (no bias) + bn
    frozen += batch_norm(filters)[1]
    trainable += (filters * filters_se + filters_se) + (filters_se * filters + filters)  # se_reduce, se_expand (bias)
    trainable += filters * filters_out + batch_norm(filters_out)[0]  # project_conv (no bias) + project_bn
    frozen += batch_norm(filters_out)[1]
    return trainable, frozen


def efficientnet_parts() -> dict[str, tuple[int, int]]:
    parts = {"stem": (3 * 3 * 3 * 32 + batch_norm(32)[0], batch_norm(32)[1])}  # stem_conv (no bias) + stem_bn
    for i, (kernel, repeats, filters_in, filters_out, ratio, _) in enumerate(EFFICIENTNET_BLOCKS, start=1):
        first = mbconv(filters_in, ratio, filters_out, kernel)
        rest = mbconv(filters_out, ratio, filters_out, kernel)
        parts[f"block{i}"] = (first[0] + (repeats - 1) * rest[0], first[1] + (repeats - 1) * rest[1])
    parts["top"] = (320 * 1280 + batch_norm(1280)[0], batch_norm(1280)[1])  # top_conv (no bias) + top_bn
    parts["predictions"] = (1280 * 1000 + 1000, 0)
    return parts


def _efficientnet_rows(report: Report, part: str) -> list:
    if part in ("stem", "top"):
        return [row for row in report.layers if row.name.startswith(part + "_")]
    if part == "predictions":
        return _rows(report, part)
    return [row for row in report.layers if row.name.startswith(part) and row.name[len(part)].isalpha()]


def test_efficientnet_b0_parameters_per_stage_follow_the_keras_source() -> None:
    report = _report("efficientnet_b0")
    parts = efficientnet_parts()
    for part, (trainable, frozen) in parts.items():
        rows = _efficientnet_rows(report, part)
        assert rows, part
        got = (sum(r.trainable_params for r in rows), sum(r.params - r.trainable_params for r in rows))
        assert got == (trainable, frozen), part
    total, nontrainable, normalization = KERAS["efficientnet_b0"]
    assert sum(t + f for t, f in parts.values()) == total - normalization == report.total_params
    assert sum(f for _, f in parts.values()) == nontrainable - normalization


def test_efficientnet_b0_stage_shapes_and_drop_connect_match_keras() -> None:
    report = _report("efficientnet_b0")
    shapes = {row.name: row.output_shape for row in report.layers}
    assert shapes["stem_conv_pad"] == (225, 225, 3)  # correct_pad(224, 3) = ((0, 1), (0, 1))
    assert shapes["stem_activation"] == (112, 112, 32)
    ends = {"block1a": (112, 112, 16), "block2b": (56, 56, 24), "block3b": (28, 28, 40), "block4c": (14, 14, 80),
            "block5c": (14, 14, 112), "block6d": (7, 7, 192), "block7a": (7, 7, 320)}  # fmt: skip
    for block, shape in ends.items():
        assert _rows(report, block)[-1].output_shape == shape, block
    assert shapes["top_activation"] == (7, 7, 1280)
    assert report.output_shape == (1000,)
    # Keras: 16 blocks, block b's drop-connect rate 0.2 * b / 16, only where stride 1 and filters_in == filters_out
    labels = [f"block{i}{chr(97 + j)}" for i, args in enumerate(EFFICIENTNET_BLOCKS, 1) for j in range(args[1])]
    drops = {row.name: row.layer for row in report.layers if row.name.endswith(".drop")}
    expected = {f"{label}.drop": 0.2 * b / 16 for b, label in enumerate(labels) if label[-1] != "a"}
    assert sorted(drops) == sorted(expected)
    for name, layer in drops.items():
        assert layer.rate == pytest.approx(expected[name]), name
        assert list(layer.noise_shape) == [None, 1, 1, 1], name
    top = next(row.layer for row in report.layers if row.name == "top_dropout")
    assert top.rate == 0.2 and top.noise_shape is None


# --- ConvNeXt-T: keras/src/applications/convnext.py -----------------------------------------------------------------

DEPTHS, DIMS = [3, 3, 9, 3], [96, 192, 384, 768]  # MODEL_CONFIGS["tiny"]


def layer_norm(channels: int) -> int:
    return 2 * channels  # gamma, beta


def convnext_block(dim: int) -> int:
    """ConvNeXtBlock: depthwise Conv2D(groups=dim, bias), LayerNormalization, Dense 4*dim, Dense dim, LayerScale."""
    return (7 * 7 * dim + dim) + layer_norm(dim) + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim) + dim


def convnext_parts() -> dict[str, int]:
    parts = {"stem": 4 * 4 * 3 * DIMS[0] + DIMS[0] + layer_norm(DIMS[0])}  # stem_conv + stem_layernorm
    for i, (depth, dim) in enumerate(zip(DEPTHS, DIMS, strict=True)):
        if i:  # downsampling_block_{i-1}: LayerNormalization + Conv 2x2/2 with bias
            parts[f"downsampling_block_{i - 1}"] = layer_norm(DIMS[i - 1]) + 2 * 2 * DIMS[i - 1] * dim + dim
        parts[f"stage_{i}"] = depth * convnext_block(dim)
    parts["head"] = layer_norm(DIMS[-1]) + DIMS[-1] * 1000 + 1000  # head_layernorm + head_dense
    return parts


def test_convnext_tiny_parameters_per_stage_follow_the_keras_source() -> None:
    report = _report("convnext_tiny")
    parts = convnext_parts()
    for part, count in parts.items():
        rows = (
            [r for r in report.layers if r.name.startswith(part + "_")]
            if part in ("stem", "head")
            else _rows(report, part)
        )
        assert rows, part
        assert sum(r.params for r in rows) == count, part
    total, nontrainable, normalization = KERAS["convnext_tiny"]
    assert sum(parts.values()) == total - normalization == report.total_params
    assert report.trainable_params == report.total_params  # no running statistics: LayerNormalization only
    assert nontrainable == 0


def test_convnext_tiny_stage_shapes_match_keras() -> None:
    report = _report("convnext_tiny")
    assert _rows(report, "stem_layernorm")[-1].output_shape == (56, 56, 96)
    for i, (depth, dim, size) in enumerate(zip(DEPTHS, DIMS, (56, 28, 14, 7), strict=True)):
        rows = _rows(report, f"stage_{i}")
        assert rows[-1].name == f"stage_{i}.{depth - 1}.add"
        assert rows[-1].output_shape == (size, size, dim)
        # the pointwise "Dense" layers, written as 1x1 Conv2D: 4x expansion and back, on every pixel
        assert {r.output_shape for r in rows if r.name.endswith("pointwise_conv_1")} == {(size, size, 4 * dim)}
    # ConvNeXtTiny's drop_path_rate is 0.0: Keras puts Activation('linear') where StochasticDepth would be
    assert not [r for r in report.layers if r.type == "StochasticDepth"]
    assert report.output_shape == (1000,)


# --- end to end ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KERAS))
def test_compiles_runs_and_trains_a_step(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    report = check(spec)
    model = compile_spec(spec, seed=0)
    onnx.checker.check_model(model)
    h, w, c = spec.input_shape
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, c, h, w)).astype(np.float32)
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"input": image})
    assert probabilities.shape == (1, 1000)
    assert np.isfinite(probabilities).all()
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)

    program = build_train_step(spec, report, Optimizer("sgd"))
    runner = StepRunner(program)
    params = initial_params(spec, report, seed=0)
    # ConvNeXt's LayerScale starts at 1e-6, which scales every gradient behind it by 1e-6: one SGD step would move
    # a LayerNormalization gamma of 1.0 by ~1e-9, below float32's resolution there. With gamma = 1 every parameter
    # visibly gets its gradient.
    params = {k: np.ones_like(v) if k.endswith("layer_scale.weight") else v for k, v in params.items()}
    runner.load(params, {})
    x = rng.uniform(0, 255, (2, c, h, w)).astype(np.float32)
    y = np.array([0, 1], np.int64)
    loss, _ = runner.step(x, y, 0.01, 0, dropout_masks(program, 0, 0, 0, 2))
    assert np.isfinite(loss)
    after = runner.params()
    changed = [k for k in program.trainable if not np.array_equal(after[k], params[k])]
    assert len(changed) == len(program.trainable)  # every trainable parameter got a gradient
