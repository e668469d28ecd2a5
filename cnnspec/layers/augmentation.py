"""Keras's random image augmentation layers: RandomFlip, RandomTranslation, RandomRotation, RandomZoom,
RandomCrop, RandomContrast and RandomBrightness.

As in Keras they act only while training and are the identity at inference: they lower to no node at all, so
the compiled model is the one without them (only the spec in its metadata records them). RandomCrop is
Keras's exception: the model keeps the spec's input size and crops its centre, and the shapes after it are
those of the crop. While training, cnnspec applies them in the input pipeline (training/loop.py) on the raw
pixels of each batch (before `preprocess`), with the maths of cnnspec/augment.py, drawn from a generator keyed
on (seed, epoch, batch), so training stays reproducible and `--resume` exact. They may only come first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from .base import Float, Int, Layer, Lowering, ShapeError, _got, require_image

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape

FillMode = Literal["reflect", "wrap", "constant", "nearest"]
Interpolation = Literal["bilinear", "nearest"]
Seed = Int(ge=0, le=2**32 - 1) | None


def _factor_check(low: float, high: float, amounts: bool):
    """Keras's `factor`: a number f or a list [lower, upper] (sorted), each within [low, high].

    A number f means the range (-f, f), or with `amounts` (RandomContrast's lower and upper amounts) (f, f).
    """
    rule = f"a number or a list [lower, upper] of numbers in [{low:g}, {high:g}]"

    def check(value: Any) -> Any:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        bad = len(items) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items)
        if bad or any(not low <= v <= high for v in items):
            raise PydanticCustomError("cnnspec_factor", "must be {rule}, got {got}", {"rule": rule, "got": _got(value)})
        if len(items) == 1:
            f = abs(float(items[0]))
            return (f, f) if amounts else (-f, f)
        return tuple(sorted(float(v) for v in items))

    return check


def Factor(low: float = -1.0, high: float = 1.0, amounts: bool = False) -> Any:
    return Annotated[tuple[float, float] | float, BeforeValidator(_factor_check(low, high, amounts))]


def _range_check(value: Any) -> Any:
    items = list(value) if isinstance(value, (list, tuple)) else None
    if not items or len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise PydanticCustomError(
            "cnnspec_value_range", "must be a list [low, high] of two numbers, got {got}", {"got": _got(value)}
        )
    low, high = sorted(float(v) for v in items)
    if low == high:
        raise PydanticCustomError("cnnspec_value_range", "must have low < high, got {got}", {"got": _got(value)})
    return (low, high)


ValueRange = Annotated[tuple[float, float], BeforeValidator(_range_check)]


class Augmentation(Layer):
    """Base of the augmentation kinds: the identity shape rule and lowering, and `augment` for the pipeline."""

    augmentation: ClassVar[bool] = True
    seed: Seed = None
    """Keras's per-layer seed; cnnspec mixes it into the (training.seed, epoch, batch) key when given."""

    def output_shape(self, shape: Shape) -> Shape:
        require_image(self.type, shape, "augmentation layers come first, on the input image")
        return shape

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        return x  # the identity at inference: no node

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """The identity in the graph: dx = dy (never needed: nothing trainable comes before these layers)."""
        return dy, {}

    def augment(self, x: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        """A training batch x [N, C, H, W] (float32 raw pixels) transformed with draws from `gen`."""
        raise NotImplementedError


class RandomFlip(Augmentation):
    type: Literal["RandomFlip"]
    mode: Literal["horizontal", "vertical", "horizontal_and_vertical"] = "horizontal_and_vertical"
    keras_name: ClassVar[str] = "random_flip"

    def augment(self, x: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        from .. import augment

        return augment.flip(x, augment.draw_flips(gen, len(x)), self.mode)


class _Resampling(Augmentation):
    fill_mode: FillMode = "reflect"
    interpolation: Interpolation = "bilinear"
    fill_value: Float() = 0.0

    @property
    def sampling(self) -> tuple[str, str, float]:
        return (self.interpolation, self.fill_mode, self.fill_value)

    def matrices(self, gen: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def augment(self, x: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        from .. import augment

        m = self.matrices(gen, len(x), x.shape[2], x.shape[3])
        return augment.affine(x, m, self.interpolation, self.fill_mode, self.fill_value)


class RandomTranslation(_Resampling):
    """Shifts by up to height_factor x H rows and width_factor x W columns (fractions; f means [-f, f])."""

    type: Literal["RandomTranslation"]
    height_factor: Factor()
    width_factor: Factor()
    keras_name: ClassVar[str] = "random_translation"

    def matrices(self, gen: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
        from .. import augment

        dy = augment.draw_uniform(gen, *self.height_factor, n) * height
        dx = augment.draw_uniform(gen, *self.width_factor, n) * width
        return augment.translation_matrices(dy, dx)


class RandomRotation(_Resampling):
    """Turns by an angle in factor x 360 degrees (f means [-f, f]; positive turns counter-clockwise)."""

    type: Literal["RandomRotation"]
    factor: Factor()
    keras_name: ClassVar[str] = "random_rotation"

    def matrices(self, gen: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
        from .. import augment

        return augment.rotation_matrices(augment.draw_uniform(gen, *self.factor, n) * 360.0, height, width)


class RandomZoom(_Resampling):
    """Zooms by 1 + factor (positive: out, negative: in); width_factor null keeps the aspect ratio."""

    type: Literal["RandomZoom"]
    height_factor: Factor(-0.999999, 1.0)
    width_factor: Factor(-0.999999, 1.0) | None = None
    keras_name: ClassVar[str] = "random_zoom"

    def matrices(self, gen: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
        from .. import augment

        zoom_h = 1.0 + augment.draw_uniform(gen, *self.height_factor, n)
        zoom_w = zoom_h if self.width_factor is None else 1.0 + augment.draw_uniform(gen, *self.width_factor, n)
        return augment.zoom_matrices(zoom_h, zoom_w, height, width)


class RandomCrop(Augmentation):
    """A random height x width window while training, the centre one at inference (a Slice in the model).

    `augment` returns the window itself (the layers after it work on it); the pipeline puts the result back at
    the centre of an input-sized image for the model to crop (augment.embed_center).

    NOTE: Keras 3 draws one corner per batch and leaves the input uncropped at inference (training=False);
    cnnspec draws one corner per image and crops the centre at inference, as tf.keras did and as the spec's
    shapes after it say.
    """

    type: Literal["RandomCrop"]
    height: Int(ge=1)
    width: Int(ge=1)
    keras_name: ClassVar[str] = "random_crop"

    def output_shape(self, shape: Shape) -> Shape:
        require_image("RandomCrop", shape, "augmentation layers come first, on the input image")
        for field, want, have in (("height", self.height, shape[0]), ("width", self.width, shape[1])):
            if want > have:
                raise ShapeError(
                    field,
                    f"RandomCrop {field} {want} is larger than the input's {field} {have}",
                    f"crop at most {have}, or enlarge input.shape",
                )
        return (self.height, self.width, shape[2])

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        from ..augment import center_offset
        from .gradients import ints

        (h, w, _), (ho, wo, _) = ctx.in_shape, ctx.out_shape
        if (h, w) == (ho, wo):
            return x
        top, left = center_offset((h, w), (ho, wo))
        starts, ends = ints(g, ctx.name, [top, left]), ints(g, ctx.name, [top + ho, left + wo])
        return g.op("Slice", [x, starts, ends, ints(g, ctx.name, [2, 3])], ctx.name)

    def augment(self, x: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        from .. import augment

        size = (self.height, self.width)
        return augment.crop(x, augment.draw_crop_offsets(gen, len(x), x.shape[2:], size), size)


class RandomContrast(Augmentation):
    """(x - mean) · c + mean per image and channel, c in [1 - lower, 1 + upper] (f means [1 - f, 1 + f])."""

    type: Literal["RandomContrast"]
    factor: Factor(0.0, 1.0, amounts=True)
    value_range: ValueRange = (0.0, 255.0)
    keras_name: ClassVar[str] = "random_contrast"

    def augment(self, x: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        from .. import augment

        # NOTE: as Keras's docs say, a number f means lower = upper = f, so c in [1 - f, 1 + f] (Keras 3.15's
        # code draws from [1, 1 + f] for a number: its bounds check clips -f to 0).
        lower, upper = self.factor
        return augment.contrast(x, augment.draw_uniform(gen, 1.0 - lower, 1.0 + upper, len(x)), self.value_range)


class RandomBrightness(Augmentation):
    """Adds delta x (high - low) per image, delta in factor (f means [-f, f]), clipped to value_range."""

    type: Literal["RandomBrightness"]
    factor: Factor()
    value_range: ValueRange = (0.0, 255.0)
    keras_name: ClassVar[str] = "random_brightness"

    def augment(self, x: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        from .. import augment

        return augment.brightness(x, augment.draw_uniform(gen, *self.factor, len(x)), self.value_range)


def apply_augmentations(layers: list[Augmentation], x: np.ndarray, gens: list[np.random.Generator]) -> np.ndarray:
    """The layers in order on a batch x [N, C, H, W], layer i drawing from gens[i].

    NOTE: consecutive resampling layers (translation, rotation, zoom) with the same interpolation and fill are
    resampled once, through the product of their maps: one interpolation instead of several (less blur, a third
    of the work); each layer alone is exactly Keras's. A RandomCrop hands the layers after it its window; at the
    end the result goes back to the centre of an input-sized image, where the model's centre crop reads it.
    """
    from .. import augment

    sizes: list[tuple[int, int]] = []
    pending: tuple[_Resampling, np.ndarray] | None = None
    for layer, gen in zip(layers, gens, strict=True):
        if isinstance(layer, _Resampling):
            m = layer.matrices(gen, len(x), x.shape[2], x.shape[3])
            if pending is not None and pending[0].sampling == layer.sampling:
                pending = (pending[0], augment.compose(pending[1], m))
                continue
            x = _resample(x, pending)
            pending = (layer, m)
            continue
        x, pending = _resample(x, pending), None
        before = x.shape[2:]
        x = layer.augment(x, gen)
        if x.shape[2:] != before:
            sizes.append(before)
    x = _resample(x, pending)
    for size in reversed(sizes):
        x = augment.embed_center(x, size)
    return x


def _resample(x: np.ndarray, pending: tuple[_Resampling, np.ndarray] | None) -> np.ndarray:
    from .. import augment

    return x if pending is None else augment.affine(x, pending[1], *pending[0].sampling)


AUGMENTATION_KINDS = (
    RandomFlip, RandomTranslation, RandomRotation, RandomZoom, RandomCrop, RandomContrast, RandomBrightness,
)  # fmt: skip
