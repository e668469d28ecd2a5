"""Decoding untrusted image files into the raw pixel arrays a model takes.

Every image goes: regular-file check -> bytes (size cap) -> Pillow with a format allowlist and a pixel cap ->
full decode of the first frame (a truncated file is an error, never half an image) -> EXIF orientation ->
the mode table below -> resize to the model's H x W -> float32 [C, H, W] holding raw 0..255 values
(the model applies its own preprocessing).

Mode table (what each Pillow mode becomes before resizing; the model's C picks L, RGB or RGBA):
  1, L, P (opaque), RGB, RGBX, CMYK, YCbCr, LAB, HSV   -> Pillow's convert() to L / RGB
  I;16, I;16B, I;16L, I;16N, I (16-bit range)          -> scaled to 8-bit levels: round(v * 255 / 65535)
  F (32-bit float)                                     -> taken as 0..255 values, clipped, rounded
  RGBA, LA, PA, P with tRNS, La, RGBa                  -> composited onto BLACK, then L / RGB
  C = 4 (RGBA model)                                   -> RGBA kept, no compositing

Why black: a fully transparent pixel then contributes 0 (as with premultiplied alpha and as in the zero
padding a 'same' convolution adds), and the classic grayscale data sets (MNIST and friends) draw light strokes
on a 0 background, so a transparent-background PNG of a digit lands in the training distribution.

Resizing uses Pillow's BILINEAR filter, which on down-scaling widens its support to the scale factor, so it is
antialiased (like torchvision's antialias=True or tf.image.resize(antialias=True)).
NOTE: Keras's image_dataset_from_directory also says 'bilinear' but does not antialias, so a photo shrunk
a lot differs slightly from what Keras would feed; at equal sizes no resampling happens at all. `resize`:
  stretch  scale each axis to H x W (aspect ratio not kept; Keras's default)
  fit      scale to fit inside H x W keeping the aspect ratio, pad the rest with black (centred)
  crop     scale to cover H x W keeping the aspect ratio, cut the overflow (centred)
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import CnnspecError

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MAX_IMAGE_BYTES = 256 << 20
MAX_PIXELS = 64_000_000
RESIZE_FILTER = Image.Resampling.BILINEAR
Resize = Literal["stretch", "fit", "crop"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "fit", "crop")

# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; the warning becomes an exception here
# (a filter installed once, which is thread-safe, unlike catch_warnings per call) and then a per-image error.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# Pillow warns (UserWarning) about damaged metadata tags it skips, e.g. "Possibly corrupt EXIF data"; the pixels
# still decode fully (missing pixel data raises instead), and `run --json` must keep stderr clean.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

# Formats Pillow (or nothing) could read that cnnspec refuses, by their first bytes: named in the error.
_KNOWN_MAGIC = (
    (b"SIMPLE  =", "FITS"),
    (b"8BPS", "PSD"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\xd0\xcf\x11\xe0", "FlashPix/OLE"),
    (b"%PDF", "PDF"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
_ALLOWED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_OPAQUE = {"1": "L", "L": "L", "P": "RGB", "RGB": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
_ALPHA = {"RGBA", "LA"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


_NO_IMAGES = "; folders are searched for " + ", ".join(sorted(IMAGE_SUFFIXES)) + " files"


class ImageError(CnnspecError):
    """One image that cannot be used; `run` reports it in that image's entry and goes on."""


def set_max_pixels(pixels: int) -> None:
    """Raise (or lower) the decompression-bomb cap, e.g. for trusted scans larger than 64 MP (`--max-pixels`)."""
    global MAX_PIXELS
    if pixels < 1:
        raise CnnspecError(f"the pixel limit must be at least 1; got {pixels}")
    MAX_PIXELS = int(pixels)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def allowed_text() -> str:
    return ", ".join(ALLOWED_FORMATS)


def _is_pattern(text: str) -> bool:
    import glob

    return glob.has_magic(text)


def read_image_bytes(path: str | Path) -> bytes:
    """The file's bytes, from a regular file only: O_NONBLOCK so a FIFO swapped in never blocks the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        kind = "is a dangling symlink" if os.path.islink(path) else "does not exist"
        if kind == "does not exist" and _is_pattern(os.fsdecode(path)):
            kind = "matches no file (a glob pattern)"
        raise ImageError(f"'{path}' {kind}") from None
    except IsADirectoryError:
        raise ImageError(f"'{path}' is not a regular file (it is a directory{_NO_IMAGES})") from None
    except OSError as exc:
        raise ImageError(f"'{path}' cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)  # the file actually opened, not whatever the name points at now
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"'{path}' is not a regular file (it is a directory{_NO_IMAGES})")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"'{path}' is not a regular file (a device, FIFO or socket)")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageError(f"'{path}' is {info.st_size / (1 << 20):.0f} MiB; limit {MAX_IMAGE_BYTES >> 20} MiB")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_IMAGE_BYTES + 1)
    finally:
        os.close(fd)


def open_image(data: bytes, source: str) -> Image.Image:
    """Identify the format from the allowlist and check the pixel count, before any pixel is decoded."""
    if not data:
        raise ImageError(f"'{source}': cannot identify image file (the file is empty)")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise _bomb_error(source, str(exc)) from None
    except UnidentifiedImageError:
        raise _unidentified(data, source) from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(source, exc) from None
    w, h = img.size
    if w * h > MAX_PIXELS:  # formats whose size Pillow learns late (and a belt to the braces above)
        raise _bomb_error(source, f"({w * h} pixels)")
    if w < 1 or h < 1:
        raise ImageError(f"'{source}': image has no pixels ({w}x{h})")
    _check_raw_pixels_present(img, len(data), source)
    return img


def _check_raw_pixels_present(img: Image.Image, size: int, source: str) -> None:
    """An uncompressed ('raw') image must hold its pixels: its tiles cover the whole image, and each finds at
    least one bit per pixel in the file after its offset.

    NOTE: Pillow allocates the declared size and decodes whatever raw strips a TIFF lists, leaving the rest
    zero, with no error: a 194-byte file declaring 5 x 12.7M 32-bit pixels (under the pixel cap) with one
    3-row strip took 0.9 GB and 2 s (found by fuzzing; in tests/fixtures/fuzz-regressions/).
    """
    tiles = list(img.tile)
    if not tiles or any(tile[0] != "raw" for tile in tiles):
        return
    covered = 0
    for _, extents, offset, *_ in tiles:
        if not (isinstance(offset, int) and len(extents) == 4 and all(isinstance(v, int) for v in extents)):
            raise ImageError(f"'{source}': image file is truncated or corrupt (a strip or tile is malformed)")
        x0, y0, x1, y1 = extents
        area = (x1 - x0) * (y1 - y0)
        covered += area
        if area > 8 * max(size - offset, 0):
            break
    else:
        if covered >= img.size[0] * img.size[1]:
            return
    raise ImageError(
        f"'{source}': image file is truncated or corrupt (it declares {img.size[0]}x{img.size[1]} uncompressed "
        f"pixels that its {size} bytes do not hold)"
    )


# What Pillow raises on malformed files; TypeError and KeyError come from broken TIFF tags (found by fuzzing).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, TypeError, KeyError,
                  ZeroDivisionError)  # fmt: skip


def _bomb_error(source: str, pillow_message: str) -> ImageError:
    match = re.search(r"\((\d+) pixels\)", pillow_message)
    pixels = int(match.group(1)) if match else 0
    return ImageError(
        f"'{source}': image is {pixels / 1e6:.1f} MP; limit {MAX_PIXELS / 1e6:g} MP "
        "(refused as a possible decompression bomb; --max-pixels N raises the limit for files you trust)"
    )


def _unidentified(data: bytes, source: str) -> ImageError:
    for magic, name in _ALLOWED_MAGIC:
        if data.startswith(magic):  # an allowed format whose header Pillow could not even parse: cut short
            return ImageError(f"'{source}': image file is truncated or corrupt (a {name} whose header does not parse)")
    for magic, name in _KNOWN_MAGIC:
        if data.startswith(magic):
            return ImageError(f"'{source}': unsupported image format (allowed: {allowed_text()}); this file is {name}")
    return ImageError(f"'{source}': cannot identify image file (not one of the allowed formats: {allowed_text()})")


def _corrupt(source: str, exc: BaseException) -> ImageError:
    return ImageError(f"'{source}': image file is truncated or corrupt ({exc})")


def decode(data: bytes, source: str, size_hw: tuple[int, int] | None = None, draft_mode: str = "RGB") -> Image.Image:
    """Fully decoded first frame, EXIF orientation applied. `size_hw` lets JPEG decode at a reduced scale."""
    img = open_image(data, source)
    try:
        if img.format == "JPEG" and size_hw is not None:
            side = max(size_hw)  # square request: EXIF may still swap the axes
            img.draft(draft_mode, (side, side))
        img.seek(0)
        img.load()  # whole frame now: truncated data raises here, never later
        return ImageOps.exif_transpose(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise _bomb_error(source, str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(source, exc) from None


def to_channels(img: Image.Image, channels: int, source: str) -> Image.Image:
    """Apply the mode table (module docstring): an 8-bit image in mode L, RGB or RGBA."""
    target = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if target is None:
        raise ImageError(f"'{source}': the model takes {channels} channels; images give 1 (L), 3 (RGB) or 4 (RGBA)")
    try:
        img = _eight_bit(img)
        if target == "RGBA":
            return img if img.mode == "RGBA" else img.convert("RGBA")
        if img.mode in _ALPHA:
            img = _composite_on_black(img)
        if img.mode not in ("L", "RGB"):
            img = img.convert(_OPAQUE.get(img.mode, "RGB"))
        return img if img.mode == target else img.convert(target)
    except ValueError as exc:  # a mode Pillow cannot convert (exotic TIFF layouts)
        raise ImageError(f"'{source}': unsupported image mode {img.mode} ({exc})") from None


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and float images to 8-bit L; palettes with transparency to RGBA; premultiplied alpha undone."""
    if img.mode in _SIXTEEN_BIT:
        # NOTE: scale, never clip: a 16-bit ramp keeps all 256 8-bit levels (clipping leaves 0 and 255 only).
        arr = _float_pixels(img)
        np.clip(arr, 0, 65535, out=arr)
        return _rounded_to_l(np.multiply(arr, 255 / 65535, out=arr))
    if img.mode == "F":
        arr = np.nan_to_num(_float_pixels(img), copy=False)
        return _rounded_to_l(np.clip(arr, 0, 255, out=arr))
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "RGBa"):
        return img.convert("RGBA")
    if img.mode == "La":
        return img.convert("LA")
    return img


def _float_pixels(img: Image.Image) -> np.ndarray:
    """One float32 copy of a one-band image; the conversions below work in place on it.

    Why float32 and in place: a 300-byte TIFF can declare 42 MP of 32-bit floats (under the pixel cap), and
    float64 temporaries made that cost 1.4 GB (found by fuzzing); this way it is decoded + 4 + 1 bytes a pixel.
    """
    return np.array(img, dtype=np.float32).reshape(img.size[1], img.size[0])


def _rounded_to_l(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(arr, out=arr).astype(np.uint8), "L")


def _composite_on_black(img: Image.Image) -> Image.Image:
    """colour * alpha / 255 (the 'over' operator with a black background), rounded to 8-bit levels."""
    gray = img.mode == "LA"
    arr = np.asarray(img if gray else img.convert("RGBA"), dtype=np.float32)
    colour, alpha = arr[..., :-1], arr[..., -1:]
    out = np.rint(colour * alpha / 255.0).astype(np.uint8)
    return Image.fromarray(out[..., 0], "L") if gray else Image.fromarray(out, "RGB")


def resize(img: Image.Image, size_hw: tuple[int, int], mode: Resize = "stretch") -> Image.Image:
    h, w = size_hw
    if img.size == (w, h):
        return img
    if mode == "stretch":
        return img.resize((w, h), RESIZE_FILTER)
    if mode == "fit":
        return ImageOps.pad(img, (w, h), RESIZE_FILTER, color=0)
    if mode == "crop":
        return ImageOps.fit(img, (w, h), RESIZE_FILTER)
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def image_to_array(img: Image.Image, channels: int, size_hw: tuple[int, int], mode: Resize, source: str) -> np.ndarray:
    img = resize(to_channels(img, channels, source), size_hw, mode)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # HWC -> CHW


def load_image(path: str | Path, chw: tuple[int, int, int], resize_mode: Resize = "stretch") -> np.ndarray:
    """One file -> float32 [C, H, W] of raw 0..255 values for a model taking `chw`. Raises ImageError."""
    c, h, w = chw
    source = os.fsdecode(path)
    img = decode(read_image_bytes(path), source, (h, w), "L" if c == 1 else "RGB")
    return image_to_array(img, c, (h, w), resize_mode, source)


def load_images(
    paths: Sequence[str | Path], chw: tuple[int, int, int], resize_mode: Resize = "stretch", workers: int | None = None
) -> list[np.ndarray | ImageError]:
    """Decode many files in parallel (Pillow releases the GIL while decoding); errors are returned in place."""

    def one(path: str | Path) -> np.ndarray | ImageError:
        try:
            return load_image(path, chw, resize_mode)
        except ImageError as exc:
            return exc
        except MemoryError:
            return ImageError(f"'{os.fsdecode(path)}': not enough memory to decode this image")

    if len(paths) <= 1:
        return [one(p) for p in paths]
    workers = workers or min(8, (os.cpu_count() or 1) + 1, len(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files as given, folders searched recursively for image suffixes (sorted), globs expanded.

    A name that neither exists nor matches a glob is kept, so it gets its own 'does not exist' entry.
    """
    import glob

    out: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = [
                os.path.join(root, name)
                for root, dirs, names in os.walk(item)
                for name in names
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
            ]
            out.extend(sorted(found) or [item])  # an empty folder gets its own error entry
        elif not os.path.lexists(item) and glob.has_magic(item):
            out.extend(sorted(glob.glob(item, recursive=True)) or [item])
        else:
            out.append(item)
    return out
