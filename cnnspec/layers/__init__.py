"""The layer kinds. Registering one: its module, its class here, and its tests."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .activation_layers import ELU, LeakyReLU, PReLU, ReLU, Softmax
from .augmentation import (
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
)  # fmt: skip
from .base import Layer, Lowering, ShapeError
from .conv import Conv2D, ZeroPadding2D
from .conv_variants import Conv2DTranspose, DepthwiseConv2D, SeparableConv2D
from .core import Activation, Dense, Dropout, Flatten
from .merge import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization, GroupNormalization, LayerNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D
from .regularization import LayerScale, SpatialDropout2D, StochasticDepth
from .reshaping import Cropping2D, Identity, Rescaling, Reshape, UpSampling2D

LAYER_KINDS: tuple[type[Layer], ...] = (
    Conv2D,
    DepthwiseConv2D,
    SeparableConv2D,
    Conv2DTranspose,
    MaxPooling2D,
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    Flatten,
    Dense,
    Dropout,
    Activation,
    BatchNormalization,
    ZeroPadding2D,
    Add,
    Subtract,
    Multiply,
    Average,
    Maximum,
    Minimum,
    Concatenate,
    UpSampling2D,
    Cropping2D,
    Reshape,
    Identity,
    Rescaling,
    ReLU,
    LeakyReLU,
    PReLU,
    ELU,
    Softmax,
    LayerNormalization,
    GroupNormalization,
    SpatialDropout2D,
    StochasticDepth,
    LayerScale,
    RandomFlip,
    RandomTranslation,
    RandomRotation,
    RandomZoom,
    RandomCrop,
    RandomContrast,
    RandomBrightness,
)
LAYERS_BY_TYPE: dict[str, type[Layer]] = {
    kind.model_fields["type"].annotation.__args__[0]: kind for kind in LAYER_KINDS
}

AnyLayer = Annotated[Union[LAYER_KINDS], Field(discriminator="type")]  # noqa: UP007

__all__ = ["LAYER_KINDS", "LAYERS_BY_TYPE", "AnyLayer", "Layer", "Lowering", "ShapeError"] + [
    k.__name__ for k in LAYER_KINDS
]
