"""Image decoding: every mode and size, every kind of bad file, orientation, bit depth and transparency."""

from __future__ import annotations

import io
import os
import resource
import signal
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnspec import images
from cnnspec.images import ImageError, expand_inputs, load_image, load_images


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def gradient(w: int, h: int) -> np.ndarray:
    """An asymmetric RGB test pattern (so rotations and flips are visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + 2 * y) % 256], -1).astype(np.uint8)


# ---- every mode, format and size ---------------------------------------------------------------------------------

MODES = [
    ("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"),
    ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGB", "BMP"), ("1", "BMP"), ("P", "GIF"),
    ("RGB", "TIFF"), ("CMYK", "TIFF"), ("I;16", "TIFF"), ("F", "TIFF"), ("RGBA", "TIFF"), ("I", "TIFF"),
    ("RGB", "WEBP"), ("RGBA", "WEBP"),
]  # fmt: skip


@pytest.mark.parametrize("mode,fmt", MODES, ids=[f"{m}-{f}" for m, f in MODES])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_mode_decodes_to_raw_pixels(tmp_path, mode, fmt, channels):
    img = Image.fromarray(gradient(23, 17)).convert(mode)
    path = save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    out = load_image(path, (channels, 8, 9))
    assert out.shape == (channels, 8, 9) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255 and np.array_equal(out, np.rint(out))


@pytest.mark.parametrize("w,h", [(1, 1), (1, 4000), (4000, 1), (4000, 3000), (28, 28)])
def test_sizes_from_1x1_to_4000x3000(tmp_path, w, h):
    arr = np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8)
    path = save(Image.fromarray(arr), tmp_path / "x.jpg" if w * h > 1e6 else tmp_path / "x.png")
    out = load_image(path, (1, 28, 28))
    assert out.shape == (1, 28, 28)
    if (w, h) == (28, 28):
        assert np.array_equal(out[0], arr)  # same size: no resampling at all


def test_large_jpeg_uses_draft_and_matches_full_decode(tmp_path):
    arr = np.kron(gradient(40, 30), np.ones((100, 100, 1), np.uint8))  # 4000x3000, smooth blocks
    path = save(Image.fromarray(arr), tmp_path / "big.jpg", quality=95)
    fast = load_image(path, (3, 30, 40))
    full = np.asarray(Image.open(path).convert("RGB").resize((40, 30), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(fast - full.transpose(2, 0, 1)).mean() < 2.0


def test_gray_image_for_rgb_model_repeats_the_channel(tmp_path):
    path = save(Image.fromarray(gradient(8, 8)[..., 0]), tmp_path / "g.png")
    out = load_image(path, (3, 8, 8))
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


def test_first_frame_of_an_animated_gif(tmp_path):
    frames = [Image.new("L", (6, 6), v) for v in (10, 200, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert np.all(load_image(path, (1, 6, 6)) == 10)


# ---- orientation, bit depth, transparency ------------------------------------------------------------------------


def test_exif_orientation_6_equals_the_pre_rotated_image(tmp_path):
    img = Image.fromarray(gradient(30, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tagged = save(img, tmp_path / "tagged.png", exif=exif.tobytes())
    rotated = save(img.transpose(Image.Transpose.ROTATE_270), tmp_path / "rotated.png")
    a, b = load_image(tagged, (3, 30, 20)), load_image(rotated, (3, 30, 20))
    assert np.array_equal(a, b)


def test_16_bit_ramp_keeps_256_levels_scaled_not_clipped(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = save(Image.fromarray(ramp), tmp_path / "ramp16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, (1, 256, 256))
    assert len(np.unique(out)) == 256
    assert out.min() == 0 and out.max() == 255
    assert out[0, 128, 0] == round(int(ramp[128, 0]) * 255 / 65535)


def test_transparent_pixels_are_composited_onto_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :2] = (255, 0, 0, 0)  # transparent red
    rgba[:, 2:] = (0, 255, 0, 255)  # opaque green
    rgba[0, 3] = (200, 100, 50, 128)  # half transparent
    out = load_image(save(Image.fromarray(rgba), tmp_path / "a.png"), (3, 4, 4))
    assert np.all(out[:, :, :2] == 0)
    assert np.all(out[:, 1:, 3] == [[0, 0, 0], [255, 255, 255], [0, 0, 0]])
    assert list(out[:, 0, 3]) == [np.rint(200 * 128 / 255), np.rint(100 * 128 / 255), np.rint(50 * 128 / 255)]


def test_palette_with_trns_and_la_are_composited(tmp_path):
    pal = Image.new("P", (4, 1))
    pal.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    pal.putdata([0, 1, 0, 1])
    path = save(pal, tmp_path / "p.png", transparency=0)  # palette entry 0 (white) is transparent
    out = load_image(path, (3, 1, 4))
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 0, 1].tolist() == [10, 20, 30]
    la = Image.fromarray(np.array([[[200, 0], [200, 255]]], np.uint8), "LA")
    assert load_image(save(la, tmp_path / "la.png"), (1, 1, 2))[0, 0].tolist() == [0, 200]


def test_rgba_model_keeps_alpha(tmp_path):
    rgba = np.full((2, 2, 4), (1, 2, 3, 4), np.uint8)
    out = load_image(save(Image.fromarray(rgba), tmp_path / "a.png"), (4, 2, 2))
    assert out[:, 0, 0].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("mode,expect", [("stretch", "white"), ("crop", "white"), ("fit", "bars")])
def test_resize_modes(tmp_path, mode, expect):
    path = save(Image.new("L", (40, 20), 255), tmp_path / "wide.png")
    out = load_image(path, (1, 10, 10), mode)[0]
    if expect == "white":
        assert np.all(out == 255)
    else:  # 40x20 fitted into 10x10 is 10x5: black bars above and below
        assert np.all(out[:2] == 0) and np.all(out[-2:] == 0) and np.all(out[3:7] == 255)


# ---- bad files ---------------------------------------------------------------------------------------------------


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gradient(64, 48)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_jpeg_is_an_error_never_a_partial_image(tmp_path, fraction):
    data = jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageError, match="image file is truncated"):
        load_image(path, (3, 8, 8))


def png_with(width: int, height: int, corrupt_idat: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 7).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep IHDR's CRC valid
    if corrupt_idat:
        start = data.index(b"IDAT") + 4
        data[start] ^= 0xFF  # first byte of compressed data: the chunk CRC no longer matches
    return bytes(data)


def test_png_with_bad_crc(tmp_path):
    path = tmp_path / "crc.png"
    path.write_bytes(png_with(8, 8, corrupt_idat=True))
    with pytest.raises(ImageError, match="image file is truncated or corrupt"):
        load_image(path, (1, 8, 8))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side,mp", [(20000, "400.0"), (10000, "100.0")])
def test_bomb_header_refused_without_allocating(tmp_path, side, mp):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with(side, side))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match=f"image is {mp} MP; limit 64 MP"):
        load_image(path, (1, 8, 8))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing like 400 MB


def test_raw_image_without_its_pixels_refused_without_allocating(tmp_path):
    """A 194-byte TIFF declaring 5 x 12.7M 32-bit pixels (under the pixel cap) in one 3-row strip: Pillow
    would allocate and "decode" it without an error (0.9 GB, found by fuzzing)."""
    finding = Path(__file__).parent / "fixtures" / "fuzz-regressions" / "image_loader-tiff-raw-63mp-194-bytes.bin"
    path = tmp_path / "tiny.tif"
    path.write_bytes(finding.read_bytes())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match=r"declares 5x12713984 uncompressed pixels that its 194 bytes do not hold"):
        load_image(path, (1, 8, 8))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing like 254 MB
    # a whole uncompressed TIFF and BMP, 1 bit per pixel at the least, still load
    for fmt, mode in (("TIFF", "1"), ("BMP", "1"), ("TIFF", "L"), ("BMP", "RGB")):
        ok = tmp_path / f"ok-{mode}.{fmt.lower()}"
        Image.new(mode, (203, 301), 1).save(ok, fmt)
        assert load_image(ok, (1 if mode != "RGB" else 3, 8, 8)).shape == (1 if mode != "RGB" else 3, 8, 8)


FOREIGN = {
    "fits": b"SIMPLE  =                    T" + b" " * 2850,
    "psd": b"8BPS\x00\x01" + b"\x00" * 40,
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
    "fpx": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504,
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_other_formats_renamed_png_are_refused(tmp_path, kind, monkeypatch):
    from PIL import EpsImagePlugin

    def ghostscript(*a, **k):
        raise AssertionError("Ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript, raising=False)
    path = tmp_path / f"{kind}.png"
    path.write_bytes(FOREIGN[kind])
    with pytest.raises(
        ImageError, match=r"unsupported image format \(allowed: PNG, JPEG, BMP, GIF, TIFF, WEBP\); this file is"
    ):
        load_image(path, (1, 8, 8))


@pytest.mark.parametrize("content,match", [(b"", "the file is empty"), (b"hello", "cannot identify image file")])
def test_not_an_image(tmp_path, content, match):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=match):
        load_image(path, (1, 8, 8))


@pytest.fixture
def no_hang():
    def alarm(*_):
        raise TimeoutError("image loading hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_special_files_never_hang(tmp_path, no_hang):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    cases = {"/dev/zero": "not a regular file", str(fifo): "not a regular file", str(tmp_path): "not a regular file"}
    cases |= {str(dangling): "dangling symlink", str(tmp_path / "missing.png"): "does not exist"}
    for path, match in cases.items():
        with pytest.raises(ImageError, match=match):
            load_image(path, (1, 8, 8))


def test_load_images_keeps_order_and_errors_in_place(tmp_path):
    good = [save(Image.new("L", (3, 3), v), tmp_path / f"{v}.png") for v in (1, 2, 3, 4)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = load_images([good[0], bad, *good[1:]], (1, 3, 3))
    assert isinstance(out[1], ImageError)
    assert [int(a[0, 0, 0]) for i, a in enumerate(out) if i != 1] == [1, 2, 3, 4]


def test_load_images_from_threads_is_safe(tmp_path):
    paths = [save(Image.fromarray(gradient(50 + i, 40)), tmp_path / f"{i}.png") for i in range(16)]
    results: list = []
    workers = [threading.Thread(target=lambda: results.append(load_images(paths, (3, 8, 8)))) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert all(np.array_equal(a, b) for r in results for a, b in zip(r, results[0], strict=True))


def test_expand_inputs_folders_globs_and_missing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.png", "d/sub/a.JPG", "d/notes.txt", "c.png"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "d"), str(tmp_path / "*.png"), str(tmp_path / "missing.png")])
    assert got == [str(tmp_path / "d/b.png"), str(tmp_path / "d/sub/a.JPG"), str(tmp_path / "c.png"),
                   str(tmp_path / "missing.png")]  # fmt: skip


def test_channel_count_the_table_cannot_serve(tmp_path):
    path = save(Image.new("L", (3, 3)), tmp_path / "x.png")
    with pytest.raises(ImageError, match="the model takes 2 channels"):
        load_image(path, (2, 3, 3))


def test_byte_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
    path = save(Image.fromarray(gradient(64, 64)), tmp_path / "x.png")
    with pytest.raises(ImageError, match="limit"):
        load_image(path, (1, 8, 8))


# ---- mutation fuzzing: whatever the bytes, the only way out is an array or an ImageError ------------------------

SEEDS: dict[str, bytes] = {}


def seed_files() -> dict[str, bytes]:
    if not SEEDS:
        img = Image.fromarray(gradient(12, 9))
        for fmt, mode in (
            ("PNG", "RGBA"),
            ("JPEG", "RGB"),
            ("GIF", "P"),
            ("BMP", "RGB"),
            ("TIFF", "CMYK"),
            ("WEBP", "RGB"),
        ):
            buf = io.BytesIO()
            img.convert(mode).save(buf, fmt)
            SEEDS[fmt] = buf.getvalue()
    return SEEDS


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]), data=st.data())
def test_mutated_images_fail_only_with_image_error(fmt, data):
    raw = bytearray(seed_files()[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at : at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            break
    try:
        img = images.decode(bytes(raw), "fuzz", (8, 8))
        out = images.image_to_array(img, data.draw(st.sampled_from([1, 3, 4])), (8, 8), "stretch", "fuzz")
    except ImageError:
        return
    assert out.shape[1:] == (8, 8) and np.isfinite(out).all()
