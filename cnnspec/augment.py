"""The maths of the augmentation layers: vectorized numpy on float32 NCHW batches, Keras 3's value semantics.

Each transform is split in two, as Keras's preprocessing layers are: drawing the random parameters of a batch
(`draw_*`, from a numpy Generator) and applying given parameters (`flip`, `affine`, `crop`, `contrast`,
`brightness`), which is deterministic and is what the tests compare with Keras's own `transform_images`.
Nothing here knows about specs: the layer kinds (cnnspec/layers/augmentation.py) choose what to draw.
"""

from __future__ import annotations

import math

import numpy as np

FillMode = str  # 'reflect' | 'wrap' | 'constant' | 'nearest'


# ---- flips -----------------------------------------------------------------------------------------


def draw_flips(gen: np.random.Generator, n: int) -> np.ndarray:
    """One coin per image, p = 1/2 (Keras: uniform <= 0.5)."""
    return gen.random(n) <= 0.5


def flip(x: np.ndarray, flips: np.ndarray, mode: str) -> np.ndarray:
    """Mirror the images where `flips` is true: left-right ('horizontal'), top-bottom ('vertical') or both.

    NOTE: Keras 3's 'horizontal_and_vertical' uses one coin per image for both axes, so an image is either
    left as it is or turned by 180 degrees; cnnspec does the same.
    """
    out = x.copy()
    chosen = out[flips]
    if mode in ("horizontal", "horizontal_and_vertical"):
        chosen = chosen[..., ::-1]
    if mode in ("vertical", "horizontal_and_vertical"):
        chosen = chosen[..., ::-1, :]
    out[flips] = chosen
    return out


# ---- affine resampling (rotation, translation, zoom) -----------------------------------------------


def rotation_matrices(angles_deg: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, 6] output->input maps (a0, a1, a2, b0, b1, b2) of a rotation about the image centre.

    An output pixel (x, y) reads the input at x' = a0·x + a1·y + a2, y' = b0·x + b1·y + b2 (the transform of
    tf.raw_ops.ImageProjectiveTransform and keras.ops.image.affine_transform). The centre is
    ((W-1)/2, (H-1)/2); a0 = cos θ, a1 = -sin θ, b0 = sin θ, b1 = cos θ, and a2, b2 keep the centre fixed.
    """
    theta = np.asarray(angles_deg, np.float64) * (math.pi / 180.0)
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
    a2 = cx - cx * cos + cy * sin
    b2 = cy - cx * sin - cy * cos
    return np.stack([cos, -sin, a2, sin, cos, b2], axis=1)


def translation_matrices(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Shift by (dy, dx) pixels: the output at (x, y) reads the input at (x - dx, y - dy)."""
    dy, dx = np.asarray(dy, np.float64), np.asarray(dx, np.float64)
    one, zero = np.ones_like(dx), np.zeros_like(dx)
    return np.stack([one, zero, -dx, zero, one, -dy], axis=1)


def zoom_matrices(zoom_h: np.ndarray, zoom_w: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale about the centre: the output reads the input at centre + zoom·(p - centre).

    zoom > 1 reads a larger part of the input (zooms out), zoom < 1 a smaller one (zooms in), as in Keras.
    """
    zh, zw = np.asarray(zoom_h, np.float64), np.asarray(zoom_w, np.float64)
    zero = np.zeros_like(zh)
    return np.stack([zw, zero, (width - 1) / 2.0 * (1 - zw), zero, zh, (height - 1) / 2.0 * (1 - zh)], axis=1)


def _fix_index(index: np.ndarray, size: int, mode: FillMode) -> np.ndarray:
    """Map an integer index outside [0, size) into it, by the fill mode (those of scipy.ndimage).

    reflect (d c b a | a b c d | d c b a): about the pixel edges; wrap (a b c d | a b c d); nearest: clamp;
    constant: the index is only kept in range here, its value is replaced by fill_value by the caller.
    """
    if mode == "wrap":
        return np.mod(index, size)
    if mode == "reflect":
        period = 2 * size
        folded = np.mod(index, period)
        return np.where(folded >= size, period - 1 - folded, folded)
    return np.clip(index, 0, size - 1)


def _round_half_away(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def affine(
    x: np.ndarray,
    matrices: np.ndarray,
    interpolation: str = "bilinear",
    fill_mode: FillMode = "reflect",
    fill_value: float = 0.0,
) -> np.ndarray:
    """Resample each image of x [N, C, H, W] through its output->input map (matrices [N, 6]).

    Bilinear: the four pixels around (y', x') weighted by (1 - fy, fy) x (1 - fx, fx); nearest: the pixel at
    the rounded coordinates (halves away from zero). With fill_mode 'constant' each neighbour outside the
    image counts as fill_value (so edges blend into it), as jax.scipy.ndimage.map_coordinates does.
    """
    n, c, h, w = x.shape
    m = np.asarray(matrices, np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    src_x = m[:, 0, None, None] * xs + m[:, 1, None, None] * ys + m[:, 2, None, None]  # [N, H, W]
    src_y = m[:, 3, None, None] * xs + m[:, 4, None, None] * ys + m[:, 5, None, None]
    # Gather rows of the batch as [N·H·W, C] (pixels of all images one after the other): np.take on axis 0.
    rows = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(n * h * w, c)
    base = (np.arange(n, dtype=np.int64) * (h * w)).reshape(n, 1, 1)
    if interpolation == "nearest":
        iy, ix = _round_half_away(src_y).astype(np.int64), _round_half_away(src_x).astype(np.int64)
        out = _gather(rows, base, _Axis(iy, h, fill_mode), _Axis(ix, w, fill_mode), None, fill_value)
    else:
        y0, x0 = np.floor(src_y), np.floor(src_x)
        fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
        ys = (_Axis(y0.astype(np.int64), h, fill_mode), _Axis(y0.astype(np.int64) + 1, h, fill_mode))
        xs = (_Axis(x0.astype(np.int64), w, fill_mode), _Axis(x0.astype(np.int64) + 1, w, fill_mode))
        out = _gather(rows, base, ys[0], xs[0], (1 - fy) * (1 - fx), fill_value)
        out += _gather(rows, base, ys[0], xs[1], (1 - fy) * fx, fill_value)
        out += _gather(rows, base, ys[1], xs[0], fy * (1 - fx), fill_value)
        out += _gather(rows, base, ys[1], xs[1], fy * fx, fill_value)
    return np.ascontiguousarray(out.reshape(n, h, w, c).transpose(0, 3, 1, 2))


class _Axis:
    """Integer coordinates along one axis: the index to read (fixed by the fill mode) and whether it was inside."""

    def __init__(self, index: np.ndarray, size: int, fill_mode: FillMode) -> None:
        low, high = int(index.min()), int(index.max())
        # the fill-mode mapping of every index in [low, high] once, then a table look-up (np.mod is slow)
        table = _fix_index(np.arange(low, high + 1), size, fill_mode)
        self.index = table[index - low]
        self.inside = None if fill_mode != "constant" or (low >= 0 and high < size) else (index >= 0) & (index < size)


def _gather(rows, base, y: _Axis, x: _Axis, weight, fill_value: float) -> np.ndarray:
    """rows[n·H·W + y·W + x] for every output pixel, as [N, H, W, C], times `weight` ([N, H, W, 1])."""
    n, h, w = y.index.shape
    values = np.take(rows, (base + y.index * w + x.index).reshape(-1), axis=0).reshape(n, h, w, -1)
    inside = y.inside if x.inside is None else (x.inside if y.inside is None else y.inside & x.inside)
    if inside is not None:
        values = np.where(inside[..., None], values, np.float32(fill_value))
    return values if weight is None else values * weight


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[N, 6] maps of `first` then `second` (output->input maps, so the product reads first(second(p)))."""

    def full(m: np.ndarray) -> np.ndarray:
        out = np.zeros((len(m), 3, 3))
        out[:, :2, :] = np.asarray(m, np.float64).reshape(-1, 2, 3)
        out[:, 2, 2] = 1
        return out

    return (full(first) @ full(second))[:, :2, :].reshape(-1, 6)


def draw_uniform(gen: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """n draws from U[low, high) (all equal to low when the range is empty, as a fixed setting)."""
    return low + (high - low) * gen.random(n)


# ---- crops -----------------------------------------------------------------------------------------


def draw_crop_offsets(gen: np.random.Generator, n: int, size: tuple[int, int], crop: tuple[int, int]) -> np.ndarray:
    """[N, 2] top-left corners, each uniform over the positions where the crop fits."""
    return np.stack([gen.integers(0, size[a] - crop[a] + 1, n) for a in (0, 1)], axis=1)


def center_offset(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """Keras's CenterCrop corner: ((H - h) // 2, (W - w) // 2)."""
    return ((size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2)


def crop(x: np.ndarray, offsets: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
    """The [N, C, h, w] windows of x [N, C, H, W] whose top-left corners are `offsets` [N, 2]."""
    h, w = crop_size
    rows = offsets[:, 0, None] + np.arange(h)  # [N, h]
    cols = offsets[:, 1, None] + np.arange(w)  # [N, w]
    batch = np.arange(len(x))[:, None, None]
    return x[batch, :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)


def embed_center(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """x [N, C, h, w] placed where the model's centre crop of a `size` image reads it (zeros around).

    The pipeline crops at random and the compiled model crops the centre: feeding the model the random window
    at the centre makes its crop equal to the random one, so training needs no other graph.
    """
    n, c, h, w = x.shape
    top, left = center_offset(size, (h, w))
    out = np.zeros((n, c, *size), np.float32)
    out[:, :, top : top + h, left : left + w] = x
    return out


# ---- colour ----------------------------------------------------------------------------------------


def contrast(x: np.ndarray, factors: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """(x - mean) · factor + mean per image and channel (mean over H, W), clipped to value_range."""
    mean = x.mean(axis=(2, 3), keepdims=True)
    out = (x - mean) * np.asarray(factors, np.float32).reshape(-1, 1, 1, 1) + mean
    return np.clip(out, value_range[0], value_range[1]).astype(np.float32)


def brightness(x: np.ndarray, deltas: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """x + delta · (high - low) per image, clipped to value_range = (low, high)."""
    span = value_range[1] - value_range[0]
    out = x + (np.asarray(deltas, np.float32) * np.float32(span)).reshape(-1, 1, 1, 1)
    return np.clip(out, value_range[0], value_range[1]).astype(np.float32)
