"""Issue 19, Python API: Classifier.predict takes what `run` takes (folders, globs) and arrays in either layout
by one stated rule; cnnspec.train mirrors the command; cnnspec.compile_to_file is `compile` in one call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SPECS_DIR, run_cli
from PIL import Image

import cnnspec
from cnnspec.errors import UsageError
from cnnspec.runtime import Classifier

RGB_SPEC = """
name: rgb
input: {shape: [6, 5, 3]}
labels: [a, b, c]
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3, padding: same, activation: relu}
  - {type: Flatten}
  - {type: Dense, units: 3, activation: softmax}
training: {optimizer: adam, epochs: 2, batch_size: 8}
"""


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> tuple[Path, Classifier]:
    work = tmp_path_factory.mktemp("api")
    (work / "spec.yaml").write_text(RGB_SPEC)
    cnnspec.compile_to_file(work / "spec.yaml", work / "m.onnx", seed=1)
    rng = np.random.default_rng(0)
    (work / "imgs" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(work / "imgs" / "sub" / f"{i}.png")
    return work, Classifier(work / "m.onnx")


def test_compile_to_file_writes_what_the_command_writes(tmp_path: Path):
    spec = SPECS_DIR / "digits.yaml"
    written = cnnspec.compile_to_file(spec, tmp_path / "api.onnx", seed=3)
    code, _, err = run_cli("compile", spec, "-o", tmp_path / "cli.onnx", "--seed", "3")
    assert code == 0, err
    assert written.read_bytes() == (tmp_path / "cli.onnx").read_bytes()


def test_predict_takes_folders_and_globs_like_run(rgb):
    work, clf = rgb
    files = sorted(str(p) for p in (work / "imgs").rglob("*.png"))
    by_file = [r.as_dict() for r in clf.predict(files)]
    assert [r.as_dict() for r in clf.predict(work / "imgs")] == by_file
    assert [r.as_dict() for r in clf.predict(str(work / "imgs" / "*" / "*.png"))] == by_file
    assert all(r["error"] is None for r in by_file)


def test_arrays_in_either_layout_give_the_same_scores(rgb):
    _, clf = rgb
    nhwc = np.random.default_rng(1).integers(0, 256, (4, 6, 5, 3)).astype(np.float32)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))  # numpy's own transpose is the reference
    expected = clf.scores(nchw)
    np.testing.assert_array_equal(clf.scores(nhwc), expected)
    single_hwc = [r.predictions[0].score for r in clf.predict(nhwc[0])]
    single_chw = [r.predictions[0].score for r in clf.predict(nchw[0])]
    assert single_hwc == single_chw == [pytest.approx(float(expected[0].max()))]
    assert len(clf.predict(nhwc)) == 4 and len(clf.predict([nhwc[0], nchw[1]])) == 2


def test_grey_images_as_two_dimensional_arrays(tmp_path: Path):
    model = cnnspec.compile_to_file(SPECS_DIR / "digits.yaml", tmp_path / "d.onnx")
    clf = Classifier(model)
    grey = np.random.default_rng(2).integers(0, 256, (8, 8)).astype(np.float32)
    assert clf.predict(grey)[0].as_dict() == clf.predict(grey[None])[0].as_dict()
    np.testing.assert_array_equal(clf.scores(np.stack([grey, grey])), clf.scores(grey[None, None].repeat(2, 0)))


@pytest.mark.parametrize("shape", [(5, 6, 3), (2, 3, 6, 6), (6, 5), (7,)])
def test_an_array_of_no_known_layout_is_one_clear_exception(rgb, shape):
    _, clf = rgb
    with pytest.raises(UsageError, match=r"not an image for this model, which takes 3 channel\(s\) of 6x5"):
        clf.predict(np.zeros(shape, np.float32))


def test_train_mirrors_the_command(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(RGB_SPEC)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (24, 6, 5, 3)).astype(np.uint8), y=rng.integers(0, 3, 24))
    result = cnnspec.train(tmp_path / "spec.yaml", tmp_path / "d.npz", tmp_path / "t.onnx", epochs=3, patience=5)
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and result.best_epoch is not None
    assert Classifier(tmp_path / "t.onnx").predict(np.zeros((6, 5, 3), np.float32))[0].error is None


def test_patience_on_the_command_line_reaches_the_settings(tmp_path: Path, monkeypatch):
    from cnnspec import train_command
    from cnnspec.cli import main

    seen = []
    real = train_command.resolve_settings

    def spy(spec, **overrides):
        seen.append(overrides.get("patience"))
        return real(spec, **overrides)

    monkeypatch.setattr(train_command, "resolve_settings", spy)
    (tmp_path / "spec.yaml").write_text(RGB_SPEC)
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 6, 5, 3), np.uint8), y=np.arange(8) % 3)
    args = ["train", str(tmp_path / "spec.yaml"), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "t.onnx")]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--epochs", "1", "--patience", "3"])
    assert exit_.value.code == 0 and seen == [3]


def test_iter_predict_yields_before_the_rest_is_decoded(rgb, monkeypatch):
    from cnnspec import runtime

    work, clf = rgb
    decoded = []
    real = runtime._to_arrays

    def counting(items, chw, resize):
        decoded.append(len(items))
        return real(items, chw, resize)

    monkeypatch.setattr(runtime, "_to_arrays", counting)
    files = sorted(str(p) for p in (work / "imgs").rglob("*.png")) * 4  # 12 images, chunks of 4 at batch size 1
    stream = clf.iter_predict(files, batch_size=1)
    first = next(stream)
    assert first.error is None and len(decoded) <= 2  # this chunk and the one decoding ahead, not all three
    assert len([first, *stream]) == 12 and decoded == [4, 4, 4]


def test_run_jsonl_prints_one_object_per_image(rgb):
    import json

    work, _ = rgb
    args = ["run", work / "m.onnx", work / "imgs", work / "missing.png"]
    code, out, err = run_cli(*args, "--jsonl")
    assert code == 1 and "1 of 4 image(s) could not be classified" in err
    lines = [json.loads(line) for line in out.splitlines()]
    code, whole, _ = run_cli(*args, "--json")
    assert lines == json.loads(whole) and len(lines) == 4
