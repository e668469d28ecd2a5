"""Augmentation layers: each transform against Keras 3's own layer (fixed settings, tests/fixtures/augmentation),
statistical properties of the random draws, the spec rules, identity at inference, and digits trained with them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from cnnspec import augment
from cnnspec.analysis import analyze
from cnnspec.compiler import compile_spec
from cnnspec.errors import SpecError
from cnnspec.layers import LAYERS_BY_TYPE
from cnnspec.spec import spec_from_data
from cnnspec.training.loop import augment_batch

ROOT = Path(__file__).resolve().parents[1]
KERAS = np.load(ROOT / "tests" / "fixtures" / "augmentation" / "keras_reference.npz", allow_pickle=False)
CASES = sorted({key.split("/")[0] for key in KERAS.files if "/" in key})


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def case(name: str):
    args = json.loads(str(KERAS[f"{name}/args"]))
    layer = LAYERS_BY_TYPE[args["type"]].model_validate(args)
    params = KERAS[f"{name}/params"] if f"{name}/params" in KERAS.files else None
    return layer, KERAS[f"{name}/x"], KERAS[f"{name}/y"], params


def test_fixture_covers_every_kind_and_mode():
    assert len(CASES) >= 30 and str(KERAS["keras_version"]).startswith("3.")
    kinds = {json.loads(str(KERAS[f"{c}/args"]))["type"] for c in CASES}
    assert kinds == {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomCrop",
                     "RandomContrast", "RandomBrightness"}  # fmt: skip


@pytest.mark.parametrize("name", [c for c in CASES if c.split("_")[0] in ("translation", "rotation", "zoom")]
                         + ["brightness_0", "brightness_-1"])  # fmt: skip
def test_fixed_factor_ranges_equal_keras(name):
    """A factor range of width 0 ([a, a]) is deterministic: the layer's own draw + transform must give Keras's."""
    layer, x, want, _ = case(name)
    got = nhwc(layer.augment(nchw(x), np.random.default_rng(0)))
    # float32 coordinates on both sides; bilinear weights differ in the last bits
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_flip_equals_keras(mode):
    layer, x, want, flips = case(f"flip_{mode}")
    np.testing.assert_array_equal(nhwc(augment.flip(nchw(x), flips.astype(bool), layer.mode)), want)


def test_contrast_and_crop_window_equal_keras():
    layer, x, want, factors = case("contrast")
    np.testing.assert_allclose(nhwc(augment.contrast(nchw(x), factors, layer.value_range)), want, atol=1e-3)
    layer, x, want, corner = case("crop_window")
    offsets = np.tile(corner, (len(x), 1))
    np.testing.assert_array_equal(nhwc(augment.crop(nchw(x), offsets, (layer.height, layer.width))), want)


@pytest.mark.parametrize("name", ["crop_center", "crop_center_odd"])
def test_compiled_random_crop_is_kerass_center_crop(name):
    """At inference the model crops the centre (Keras's CenterCrop); its input keeps the spec's size."""
    layer, x, want, _ = case(name)
    n, h, w, c = x.shape
    units = layer.height * layer.width * c
    spec = spec_from_data({
        "name": "crop", "input": {"shape": [h, w, c]},
        "layers": [{"type": "RandomCrop", "height": layer.height, "width": layer.width}, {"type": "Flatten"},
                   {"type": "Dense", "units": units, "use_bias": False}],
    })  # fmt: skip
    model = compile_spec(spec)
    for init in model.graph.initializer:
        if init.name == "dense.weight":
            init.CopyFrom(numpy_helper.from_array(np.eye(units, dtype=np.float32), init.name))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [c, h, w]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    flat = session.run(None, {"input": nchw(x)})[0]  # Flatten is channel-major: [N, C·h·w]
    np.testing.assert_array_equal(nhwc(flat.reshape(n, c, layer.height, layer.width)), want)


def test_fill_modes_at_the_border():
    """One row shifted right by 2: reflect (b a | a b c), wrap (d c | a b), nearest (a a | a b), constant."""
    x = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 1, 5)
    m = augment.translation_matrices(np.array([0.0]), np.array([2.0]))
    rows = {mode: augment.affine(x, m, "nearest", mode, -1.0)[0, 0, 0].tolist()
            for mode in ("reflect", "wrap", "nearest", "constant")}  # fmt: skip
    assert rows == {"reflect": [2, 1, 1, 2, 3], "wrap": [4, 5, 1, 2, 3], "nearest": [1, 1, 1, 2, 3],
                    "constant": [-1, -1, 1, 2, 3]}  # fmt: skip


# ---- the random draws ------------------------------------------------------------------------------


def layer(kind: str, **args):
    return LAYERS_BY_TYPE[kind].model_validate({"type": kind, **args})


def test_flip_rate_is_one_half():
    x = np.zeros((4000, 1, 2, 2), np.float32)
    x[:, :, :, 0] = 1  # left column bright
    out = layer("RandomFlip", mode="horizontal").augment(x, np.random.default_rng(1))
    rate = float((out[:, 0, 0, 1] == 1).mean())
    assert abs(rate - 0.5) < 6 * np.sqrt(0.25 / 4000), rate  # 6 sigma of a binomial


def test_translation_and_rotation_ranges():
    gen = np.random.default_rng(2)
    m = layer("RandomTranslation", height_factor=0.2, width_factor=[-0.1, 0.3]).matrices(gen, 5000, 10, 20)
    dy, dx = -m[:, 5], -m[:, 2]  # the output at (x, y) reads (x - dx, y - dy)
    assert -2 <= dy.min() < -1.9 and 1.9 < dy.max() <= 2 and abs(dy.mean()) < 0.1
    assert -2 <= dx.min() < -1.9 and 5.9 < dx.max() <= 6
    m = layer("RandomRotation", factor=0.1).matrices(gen, 5000, 9, 9)
    angles = np.degrees(np.arctan2(m[:, 3], m[:, 0]))
    assert -36 <= angles.min() < -35 and 35 < angles.max() <= 36


def test_contrast_and_brightness_ranges():
    x = np.full((3000, 1, 1, 2), 100.0, np.float32)
    x[:, :, :, 1] = 140  # mean 120, deviation ±20
    out = layer("RandomContrast", factor=0.3).augment(x, np.random.default_rng(3))
    c = (out[:, 0, 0, 1] - 120) / 20
    assert 0.7 <= c.min() < 0.72 and 1.28 < c.max() <= 1.3  # a number f means [1 - f, 1 + f]
    out = layer("RandomBrightness", factor=[-0.1, 0.2]).augment(x[:, :, :, :1], np.random.default_rng(4))
    delta = out[:, 0, 0, 0] - 100
    assert -25.5 <= delta.min() < -24 and 49 < delta.max() <= 51
    bright = layer("RandomBrightness", factor=[1, 1]).augment(x, np.random.default_rng(0))
    assert np.array_equal(bright, np.full_like(x, 255.0))  # clipped to value_range


def test_random_crop_corners_cover_every_position_and_pipeline_centres_them():
    offsets = augment.draw_crop_offsets(np.random.default_rng(5), 2000, (6, 5), (4, 4))
    assert {tuple(o) for o in offsets} == {(r, c) for r in range(3) for c in range(2)}
    x = np.random.default_rng(6).uniform(0, 255, (8, 2, 6, 5)).astype(np.float32)
    crop = layer("RandomCrop", height=4, width=4)
    out = augment_batch([crop], x, seed=1, epoch=0, batch=0)
    window = out[:, :, 1:5, 0:4]  # where the model's centre crop reads: ((6-4)//2, (5-4)//2)
    for i in range(len(x)):  # each is some 4x4 window of its own image
        assert any(np.array_equal(window[i], x[i, :, r : r + 4, c : c + 4]) for r in range(3) for c in range(2))


def test_pipeline_draws_are_keyed_on_seed_epoch_batch():
    layers = [layer("RandomRotation", factor=0.2), layer("RandomContrast", factor=0.5)]
    x = np.random.default_rng(7).uniform(0, 255, (4, 3, 8, 8)).astype(np.float32)
    a = augment_batch(layers, x, 0, 1, 2)
    assert np.array_equal(a, augment_batch(layers, x, 0, 1, 2))
    for other in ((1, 1, 2), (0, 2, 2), (0, 1, 3)):
        assert not np.array_equal(a, augment_batch(layers, x, *other))


# ---- spec rules and the compiled model ----------------------------------------------------------------

BASE = {"name": "t", "input": {"shape": [8, 8, 3]},
        "layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "Flatten"},
                   {"type": "Dense", "units": 3}]}  # fmt: skip
AUG = [{"type": "RandomFlip"}, {"type": "RandomTranslation", "height_factor": 0.1, "width_factor": 0.2},
       {"type": "RandomRotation", "factor": 0.1}, {"type": "RandomZoom", "height_factor": [-0.2, 0.2]},
       {"type": "RandomContrast", "factor": 0.2}, {"type": "RandomBrightness", "factor": 0.2}]  # fmt: skip


def test_compiled_model_is_the_same_with_or_without_them():
    plain = compile_spec(spec_from_data(BASE))
    with_aug = compile_spec(spec_from_data(BASE | {"layers": AUG + BASE["layers"]}))
    assert plain.graph.SerializeToString(deterministic=True) == with_aug.graph.SerializeToString(deterministic=True)
    spec = json.loads({p.key: p.value for p in with_aug.metadata_props}["cnnspec.spec"])
    assert [item["type"] for item in spec["layers"][:6]] == [a["type"] for a in AUG]  # the metadata records them
    onnx.checker.check_model(with_aug, full_check=True)


def test_they_must_come_first():
    bad = BASE | {"layers": BASE["layers"][:1] + [{"type": "RandomFlip"}] + BASE["layers"][1:]}
    issues = analyze(spec_from_data(bad)).issues
    assert len(issues) == 1 and issues[0].layer == 1
    assert "must come before the first other layer" in issues[0].message and "after 'conv2d'" in issues[0].message


def test_random_crop_shapes_are_checked_on_the_crop():
    report = analyze(spec_from_data(BASE | {"layers": [{"type": "RandomCrop", "height": 6, "width": 5}]
                                            + BASE["layers"]}))  # fmt: skip
    assert [r.output_shape for r in report.layers][:2] == [(6, 5, 3), (4, 3, 2)]
    too_big = analyze(spec_from_data(BASE | {"layers": [{"type": "RandomCrop", "height": 9, "width": 5}]
                                             + BASE["layers"]}))  # fmt: skip
    assert too_big.issues[0].field == "height" and "larger than the input's height 8" in too_big.issues[0].message


@pytest.mark.parametrize(
    "item, field, words",
    [
        ({"type": "RandomRotation", "factor": 2}, "factor", "in [-1, 1]"),
        ({"type": "RandomContrast", "factor": -0.1}, "factor", "in [0, 1]"),
        ({"type": "RandomFlip", "mode": "sideways"}, "mode", "horizontal"),
        ({"type": "RandomTranslation", "height_factor": 0.1}, "width_factor", "missing"),
        ({"type": "RandomBrightness", "factor": 0.1, "value_range": [1, 1]}, "value_range", "low < high"),
        ({"type": "RandomZoom", "height_factor": 0.1, "fill_mode": "mirror"}, "fill_mode", "reflect"),
    ],
)
def test_argument_errors_name_the_field(item, field, words):
    with pytest.raises(SpecError) as err:
        spec_from_data(BASE | {"layers": [item] + BASE["layers"]})
    issue = err.value.issues[0]
    assert issue.layer == 0 and issue.field == field and words in issue.message, issue.message


def test_keras_defaults():
    assert layer("RandomFlip").mode == "horizontal_and_vertical"
    t = layer("RandomTranslation", height_factor=0.1, width_factor=0.1)
    assert (t.fill_mode, t.interpolation, t.fill_value) == ("reflect", "bilinear", 0.0)
    assert layer("RandomZoom", height_factor=0.1).width_factor is None
    assert layer("RandomBrightness", factor=0.1).value_range == (0.0, 255.0)


def test_digits_with_augmentation_reach_97_percent(tmp_path: Path):
    from cnnspec.spec import load_spec
    from cnnspec.training.loop import Data
    from cnnspec.training.trainer import resolve_settings, train_model

    sys.path.insert(0, str(ROOT / "examples"))
    from digits_data import digits_split

    x_train, y_train, x_test, y_test = digits_split()
    spec = load_spec(ROOT / "specs" / "digits_augmented.yaml")
    assert any(layer.augmentation for layer in spec.layers)
    result = train_model(spec, Data(x_train[:, None].astype(np.float32), y_train), None, resolve_settings(spec),
                         log=lambda line: None)  # fmt: skip
    from cnnspec.analysis import check
    from cnnspec.compiler import build_inference_model

    model = build_inference_model(spec, check(spec), result.params)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"input": x_test[:, None].astype(np.float32)})[0]
    accuracy = float((scores.argmax(1) == y_test).mean())
    assert accuracy >= 0.97, accuracy


def test_consecutive_resampling_layers_are_resampled_once():
    """Shift right 2 then left 2 (same fill): composed into one map, the identity; with another fill mode in
    between they are two resamplings and the border is lost."""
    from cnnspec.layers.augmentation import apply_augmentations

    x = np.random.default_rng(8).uniform(0, 255, (3, 2, 6, 10)).astype(np.float32)
    right = layer("RandomTranslation", height_factor=[0, 0], width_factor=[0.2, 0.2], fill_mode="constant")
    left = layer("RandomTranslation", height_factor=[0, 0], width_factor=[-0.2, -0.2], fill_mode="constant")
    gens = [np.random.default_rng(i) for i in range(2)]
    np.testing.assert_allclose(apply_augmentations([right, left], x, gens), x, atol=1e-4)
    apart = apply_augmentations([right, layer("RandomFlip", mode="vertical"), left], x, gens + [gens[0]])
    assert not np.allclose(apart[..., -2:], x[..., -2:])
