"""Issue 19, small items: skipped images are counted, classes without samples are named, a glob matching
nothing says so, and --max-pixels raises the decompression-bomb cap on purpose."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import SPECS_DIR, run_cli
from PIL import Image

from cnnspec import images
from cnnspec.compiler import compile_to_file
from cnnspec.data import load_dataset
from cnnspec.images import ImageError, load_image, set_max_pixels


def folder_with_a_bad_image(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(root / label / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"not an image")
    return root


def test_skip_bad_images_says_how_many(tmp_path: Path):
    data = load_dataset(folder_with_a_bad_image(tmp_path / "d"), (8, 8, 1), skip_bad_images=True)
    assert len(data) == 6
    assert len(data.warnings) == 1 and "skipped 1 of 7 image(s)" in data.warnings[0]
    assert "broken.png" in data.warnings[0]


def test_evaluate_prints_the_skip_count(tmp_path: Path):
    model = compile_to_file(SPECS_DIR / "digits.yaml", tmp_path / "m.onnx")
    data = folder_with_a_bad_image(tmp_path / "d")
    for label in ("a", "b"):
        (data / label).rename(data / ("0" if label == "a" else "1"))
    code, _, err = run_cli("evaluate", model, "--data", data, "--skip-bad-images", "--json")
    assert code == 0, err
    assert "warning: " in err and "skipped 1 of 7 image(s)" in err
    assert "8 of the model's 10 classes have no samples here (2, 3, 4, 5, 6, 7, 8, 9)" in err


def test_classes_without_samples_are_named(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 2, 0, 2]))
    data = load_dataset(tmp_path / "d.npz", (8, 8, 1), labels=["cat", "dog", "eel"], num_classes=3)
    assert data.warnings == [f"'{tmp_path / 'd.npz'}': 1 of the model's 3 classes have no samples here (dog)"]
    np.savez(tmp_path / "all.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1, 2]))
    assert load_dataset(tmp_path / "all.npz", (8, 8, 1), labels=["cat", "dog", "eel"], num_classes=3).warnings == []


def test_a_glob_matching_nothing_says_so(tmp_path: Path):
    with pytest.raises(ImageError, match=r"matches no file \(a glob pattern\)"):
        load_image(str(tmp_path / "*.png"), (1, 8, 8))
    with pytest.raises(ImageError, match="does not exist"):
        load_image(str(tmp_path / "plain.png"), (1, 8, 8))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (and whose pixels are 8x8): size checks see the claim."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 3).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def restore_limit():
    before = images.MAX_PIXELS
    yield
    set_max_pixels(before)


def test_max_pixels_raises_the_cap_deliberately(tmp_path: Path, restore_limit):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(9000, 9000))  # 81 MP
    with pytest.raises(ImageError, match=r"81.0 MP; limit 64 MP .*--max-pixels"):
        load_image(path, (1, 8, 8))
    set_max_pixels(100_000_000)
    with pytest.raises(ImageError) as err:  # past the cap now: it fails later, on the missing pixel data
        load_image(path, (1, 8, 8))
    assert "limit" not in str(err.value)


def test_run_max_pixels_option(tmp_path: Path):
    model = compile_to_file(SPECS_DIR / "digits.yaml", tmp_path / "m.onnx")
    (tmp_path / "big.png").write_bytes(png_header(9000, 9000))
    _, out, _ = run_cli("run", model, tmp_path / "big.png", "--json")
    assert "limit 64 MP" in out
    _, out, _ = run_cli("run", model, tmp_path / "big.png", "--json", "--max-pixels", "100000000")
    assert "limit 64 MP" not in out and "MP; limit" not in out
