"""Data sets: class folders, .npz and MNIST IDX, and every DataError they can raise (RELIABILITY rows 38-39)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnspec.data import load_dataset
from cnnspec.errors import DataError, UsageError


def folder(tmp_path, classes: dict[str, int], size=(6, 5)) -> str:
    """One subfolder per class with n images whose pixel value encodes (class, index)."""
    root = tmp_path / "imgs"
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", size, 10 * c + i).save(root / name / f"{i}.png")
    return str(root)


def test_folder_labels_from_sorted_folder_names(tmp_path):
    data = load_dataset(folder(tmp_path, {"b": 2, "a": 3}), (5, 6, 1))
    assert data.class_names == ["a", "b"] and data.x.shape == (5, 1, 5, 6) and data.x.dtype == np.float32
    assert data.y.tolist() == [0, 0, 0, 1, 1]  # "a" (pixel 10+i) is class 0 in sorted order
    assert data.x[:, 0, 0, 0].tolist() == [10, 11, 12, 0, 1]


def test_folder_maps_names_onto_the_model_labels(tmp_path):
    data = load_dataset(folder(tmp_path, {"dog": 1, "cat": 1}), (5, 6, 1), labels=["eel", "dog", "cat"])
    assert data.y.tolist() == [2, 1] and data.class_names == ["eel", "dog", "cat"]


def test_folder_images_are_resized_and_converted(tmp_path):
    data = load_dataset(folder(tmp_path, {"a": 1, "b": 1}, size=(40, 30)), (8, 8, 3))
    assert data.x.shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    "classes,kw,match",
    [
        ({"a": 1, "b": 1, "c": 1}, {"num_classes": 2}, "3 class folders .* but the model has 2 outputs"),
        ({"a": 1, "b": 0}, {}, "class folder 'b' has no images"),
        ({"a": 1, "zzz": 1}, {"labels": ["a", "b"]}, r"class folders \['zzz'\] are not labels of the model"),
    ],
)
def test_folder_errors(tmp_path, classes, kw, match):
    with pytest.raises(DataError, match=match):
        load_dataset(folder(tmp_path, classes), (5, 6, 1), **kw)


def test_folder_with_a_corrupt_image_lists_it_or_skips_it(tmp_path):
    root = folder(tmp_path, {"a": 2, "b": 1})
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=r"1 image\(s\) cannot be used .*--skip-bad-images[\s\S]*broken.png"):
        load_dataset(root, (5, 6, 1))
    assert len(load_dataset(root, (5, 6, 1), skip_bad_images=True)) == 3


def test_npz_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_dataset(tmp_path / "d.npz", (4, 5, 3), num_classes=3)
    assert np.array_equal(data.x, x.transpose(0, 3, 1, 2).astype(np.float32)) and data.y.dtype == np.int64
    np.savez(tmp_path / "g.npz", x=x[..., 0], y=y)  # (N,H,W) is one channel
    assert load_dataset(tmp_path / "g.npz", (4, 5, 1)).x.shape == (7, 1, 4, 5)


def npz(tmp_path, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


X = np.zeros((4, 4, 5, 1), np.float32)
Y = np.array([0, 1, 0, 1])
NAN_X = X.copy()
NAN_X[2, 0, 0, 0] = np.nan


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"x": np.array([{"a": 1}, None], dtype=object), "y": Y}, r"object array; .* \(never unpickled\)"),
        ({"x": X}, "missing array 'y'"),
        ({"x": X, "y": Y[:3]}, "x has 4 samples but y has 3"),
        ({"x": X, "y": np.array([0, 1, 2, 0])}, "label 2 is out of range.* 2 classes"),
        ({"x": X, "y": np.array([0, -1, 0, 1])}, "label -1 is out of range"),
        ({"x": NAN_X, "y": Y}, r"NaN or infinity \(first at sample 2\)"),
        ({"x": np.zeros((4, 6, 5, 1)), "y": Y}, "images are 6x5 but the model takes 4x5"),
        ({"x": np.zeros((4, 4, 5, 3)), "y": Y}, "images have 3 channel.* the model takes 1"),
        ({"x": np.zeros((0, 4, 5, 1)), "y": np.zeros(0, np.int64)}, "0 samples"),
        ({"x": X, "y": np.array([0.5, 1, 0, 1])}, "whole class indices"),
        ({"x": X, "y": np.zeros((4, 2))}, r"y must be \(N,\) class indices"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        load_dataset(npz(tmp_path, **arrays), (4, 5, 1), num_classes=2)


def test_npz_object_array_is_never_unpickled(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(DataError, match="object array"):
        load_dataset(npz(tmp_path, x=np.array([1, "a"], dtype=object), y=Y), (4, 5, 1))


def idx_pair(tmp_path, n=5, h=4, w=3, gz=True, labels_ok=True) -> str:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(tmp_path / f"train-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 8, 3, n, h, w) + images.tobytes())
    with opener(tmp_path / f"train-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, n if labels_ok else n + 1) + labels.tobytes())
    return str(tmp_path / f"train-images-idx3-ubyte{suffix}"), images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    path, images, labels = idx_pair(tmp_path, gz=gz)
    data = load_dataset(path, (4, 3, 1), num_classes=10)
    assert np.array_equal(data.x[:, 0], images) and np.array_equal(data.y, labels)


def test_mnist_idx_with_a_wrong_header(tmp_path):
    path, *_ = idx_pair(tmp_path, labels_ok=False)
    with pytest.raises(DataError, match=r"IDX dims \[6\] need 6 bytes of data; found 5"):
        load_dataset(path, (4, 3, 1))


def test_mnist_idx_dims_whose_product_wraps_in_int64(tmp_path):
    """2^22 x 2^21 x 2^21 = 2^64 wrapped to 0 in int64, and an empty data section then "matched"."""
    path, *_ = idx_pair(tmp_path, gz=False)
    Path(path).write_bytes(struct.pack(">HBB3I", 0, 8, 3, 1 << 22, 1 << 21, 1 << 21))
    with pytest.raises(DataError, match=r"need 18446744073709551616 bytes of data; found 0"):
        load_dataset(path, (4, 3, 1))


def test_unknown_and_missing_paths(tmp_path):
    (tmp_path / "data.txt").write_text("1,2")  # (.csv is a data format: rows of path,label)
    with pytest.raises(DataError, match="not a folder of class subfolders, an .npz file"):
        load_dataset(tmp_path / "data.txt", (4, 4, 1))
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz", (4, 4, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(tmp_path / "empty", (4, 4, 1))
