"""Pictures (cnnspec[viz]): the numbers behind each picture against independent references (numpy, scikit-learn),
valid PNG files of sensible size from `train --plots`, `evaluate --plots` and `cnnspec visualize`, and one clear
message when matplotlib is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper
from PIL import Image

from cnnspec import viz
from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.errors import CnnspecError
from cnnspec.spec import spec_from_data

ROOT = Path(__file__).resolve().parents[1]
EDGE = np.array([[-1.0, 0.0, 1.0]] * 3, np.float32)  # a vertical edge detector (dark left, bright right: > 0)

EDGE_NET = {
    "name": "edges",
    "input": {"shape": [8, 10, 1]},
    "labels": ["a", "b"],
    "layers": [
        {"type": "Conv2D", "name": "edge", "filters": 2, "kernel_size": 3, "use_bias": False},
        {"type": "MaxPooling2D", "name": "pool", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
}


def cnnspec(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnspec", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)  # fmt: skip


def cli(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start): its exit code and what it printed on stderr."""
    from cnnspec.cli import _run

    capsys.readouterr()
    code = _run([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)


def assert_png(path: Path, min_side: int = 150) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and min(image.size) >= min_side and max(image.size) <= 4000, image.size


@pytest.fixture()
def edge_model(tmp_path: Path) -> Path:
    """EDGE_NET with filter 0 the hand-set edge kernel and filter 1 its mirror."""
    model = compile_spec(spec_from_data(EDGE_NET))
    for init in model.graph.initializer:
        if init.name == "edge.weight":
            init.CopyFrom(numpy_helper.from_array(np.stack([EDGE, -EDGE])[:, None], init.name))
    (tmp_path / "edges.onnx").write_bytes(model_bytes(model))
    return tmp_path / "edges.onnx"


def step_image() -> np.ndarray:
    x = np.zeros((1, 8, 10), np.float32)
    x[:, :, 5:] = 200.0  # a vertical edge between columns 4 and 5
    x[:, 6:, :] += 20.0
    return x


def test_feature_maps_of_a_vertical_edge_kernel(edge_model: Path):
    image = step_image()
    maps = viz.feature_maps(edge_model.read_bytes(), image)
    assert list(maps) == ["edge", "pool"]
    # numpy reference: valid cross-correlation (ONNX Conv / Keras Conv2D), then 2x2 max pooling
    windows = sliding_window_view(image[0], (3, 3))
    want = np.stack([np.einsum("ijkl,kl->ij", windows, k) for k in (EDGE, -EDGE)])
    np.testing.assert_allclose(maps["edge"], want, atol=1e-4)
    assert want[0].max() == 600 and set(np.flatnonzero(want[0].max(axis=0))) == {3, 4}  # the edge's columns
    pooled = want.reshape(2, 3, 2, 4, 2).max(axis=(2, 4))
    np.testing.assert_allclose(maps["pool"], pooled, atol=1e-4)
    assert list(viz.feature_maps(edge_model.read_bytes(), image, ["pool"])) == ["pool"]
    layer, kernels = viz.first_conv_kernels(onnx.load(edge_model))
    assert layer == "edge" and np.array_equal(kernels[0, 0], EDGE)


def test_visualize_command_writes_the_pictures(edge_model: Path, tmp_path: Path, capsys):
    Image.fromarray(step_image()[0].astype(np.uint8)).save(tmp_path / "step.png")
    before = edge_model.read_bytes()
    r = cli(capsys, "visualize", edge_model, tmp_path / "step.png", "-o", tmp_path / "pics")
    assert r.returncode == 0, r.stderr
    for name in ("filters.png", "feature_maps-edge.png", "feature_maps-pool.png"):
        assert_png(tmp_path / "pics" / name, 100)
    assert edge_model.read_bytes() == before  # the model file is not changed
    r = cli(capsys, "visualize", edge_model, tmp_path / "step.png", "-o", tmp_path / "p2", "--layers", "edge,nope")
    assert r.returncode == 2 and "no convolution or pooling layer named nope" in r.stderr and "edge, pool" in r.stderr


def test_confusion_counts_and_normalization_match_scikit_learn():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    counts = viz.confusion_counts(y, p, 5)  # class 4 never occurs: an empty row and column
    np.testing.assert_array_equal(counts, confusion_matrix(y, p, labels=range(5)))
    norm = viz.row_normalized(counts)
    np.testing.assert_allclose(norm[:4].sum(axis=1), 1.0)
    assert not norm[4].any()
    np.testing.assert_allclose(norm, confusion_matrix(y, p, labels=range(5), normalize="true"))


def test_confident_errors_are_the_mistakes_by_confidence():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    y = np.array([1, 1, 1, 0, 0])  # wrong: 0 (p 0.9), 2 (0.6), 3 (0.7)
    assert [(m.index, m.predicted, m.confidence) for m in viz.confident_errors(probs, y)] == [
        (0, 0, 0.9), (3, 1, 0.7), (2, 0, 0.6)]  # fmt: skip
    assert [m.index for m in viz.confident_errors(probs, y, count=1)] == [0]


def test_pictures_are_pngs_of_sensible_size(tmp_path: Path):
    history = [{"epoch": i + 1, "train_loss": 1 / (i + 1), "train_accuracy": 0.5 + 0.1 * i, "val_loss": None,
                "val_accuracy": None} for i in range(3)]  # fmt: skip
    assert_png(viz.plot_curves(history, tmp_path / "curves.png"))
    counts = viz.confusion_counts(np.arange(30) % 3, np.arange(30) % 2, 3)
    assert_png(viz.plot_confusion(counts, ["cat", "dog", "bird"], tmp_path / "cm.png"), 300)
    x = np.random.default_rng(1).uniform(0, 255, (5, 3, 12, 12)).astype(np.float32)
    mistakes = viz.confident_errors(np.eye(3)[[0, 1, 2, 0, 1]] * 0.8 + 0.05, np.array([1, 1, 0, 0, 2]))
    assert_png(viz.plot_errors(x, mistakes, ["cat", "dog", "bird"], tmp_path / "errors.png"))
    assert_png(viz.plot_errors(x, [], ["cat", "dog", "bird"], tmp_path / "none.png"), 100)
    kernels = np.random.default_rng(2).normal(size=(8, 3, 5, 5)).astype(np.float32)
    assert_png(viz.plot_filters("conv2d", kernels, tmp_path / "rgb_filters.png"), 100)


def test_train_and_evaluate_plots(tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64)
    x = rng.uniform(0, 60, (64, 8, 10)).astype(np.float32)
    x[y == 1, :, 5:] += 150
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "edges.yaml").write_text(yaml.safe_dump(EDGE_NET))
    out = tmp_path / "m.onnx"
    r = cli(capsys, "train", tmp_path / "edges.yaml", "--data", tmp_path / "d.npz", "-o", out, "--epochs", 2,
                "--val-split", 0.25, "--plots", tmp_path / "train")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert_png(tmp_path / "train" / "curves.png")
    assert_png(tmp_path / "train" / "confusion_matrix.png", 300)
    r = cli(capsys, "evaluate", out, "--data", tmp_path / "d.npz", "--plots", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    assert_png(tmp_path / "eval" / "confusion_matrix.png", 300)
    assert_png(tmp_path / "eval" / "errors.png", 100)


def test_missing_matplotlib_is_one_clear_message(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(CnnspecError, match=r"pip install 'cnnspec\[viz\]'"):
        viz.pyplot()
    for args in (("evaluate", "missing.onnx", "--data", "missing.npz"), ("train", "s.yaml", "--data", "d.npz", "-o",
                 tmp_path / "m.onnx")):  # fmt: skip
        r = cli(capsys, *args, "--plots", tmp_path / "p")
        assert r.returncode == 1 and "pip install 'cnnspec[viz]'" in r.stderr, r.stderr
    monkeypatch.undo()
    blocker = tmp_path / "blocker"  # a whole process without matplotlib: the message, no traceback
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    env = os.environ | {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = cnnspec("visualize", "x.onnx", "y.png", "-o", tmp_path / "p", env=env)
    assert r.returncode == 1 and "pip install 'cnnspec[viz]'" in r.stderr and "Traceback" not in r.stderr
