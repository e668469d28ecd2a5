"""Conv2D and ZeroPadding2D."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from .activations import lower_activation
from .base import (
    MAX_WINDOW,
    Activation,
    ConvPadding,
    Initializer,
    Int,
    Layer,
    Lowering,
    Pair,
    ShapeError,
    StrictBool,
    initializer_arg,
    pads_text,
    require_image,
    spatial_windows,
)

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape


class Conv2D(Layer):
    """2-D convolution, Keras's arguments; the kernel is stored as PyTorch's [out, in/groups, kh, kw].

    NOTE: strides > 1 together with dilation_rate > 1 is allowed (ONNX and PyTorch define it);
    Keras refuses that combination.
    """

    type: Literal["Conv2D"]
    filters: Int(ge=1, le=MAX_WINDOW)
    kernel_size: Pair
    strides: Pair = (1, 1)
    padding: ConvPadding = "valid"
    dilation_rate: Pair = (1, 1)
    groups: Int(ge=1, le=MAX_WINDOW) = 1
    activation: Activation | None = None
    use_bias: StrictBool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    keras_name: ClassVar[str] = "conv2d"

    def _windows(self, shape: Shape):
        return spatial_windows("kernel", shape, self.kernel_size, self.strides, self.dilation_rate, self.padding)

    def output_shape(self, shape: Shape) -> Shape:
        require_image("Conv2D", shape, "Conv2D layers go before Flatten; move it up or remove the Flatten")
        channels = shape[2]
        if self.filters % self.groups or channels % self.groups:
            raise ShapeError(
                "groups",
                f"groups={self.groups} must divide both the input channels ({channels}) and filters ({self.filters})",
                "choose groups among the common divisors of the two",
            )
        h, w = self._windows(shape)
        return (h.out, w.out, self.filters)

    def pads(self, shape: Shape) -> list[int]:
        """ONNX pads [top, left, bottom, right] (Keras 'same': the odd pixel at bottom/right)."""
        h, w = self._windows(shape)
        return [h.pad_before, w.pad_before, h.pad_after, w.pad_after]

    def padding_applied(self, shape: Shape) -> str:
        top, left, bottom, right = self.pads(shape)
        return pads_text(top, bottom, left, right)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        kh, kw = self.kernel_size
        shapes: dict[str, Shape] = {"weight": (self.filters, shape[2] // self.groups, kh, kw)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return shapes

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        shapes = self.param_shapes(shape)
        receptive = self.kernel_size[0] * self.kernel_size[1]
        fan_in, fan_out = shape[2] // self.groups * receptive, self.filters * receptive  # Keras's fans
        params = {"weight": initialize(initializer_arg(self.kernel_initializer), shapes["weight"], fan_in, fan_out, rng)}
        if self.use_bias:
            params["bias"] = initialize(initializer_arg(self.bias_initializer), shapes["bias"], fan_in, fan_out, rng)
        return params

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * out[0] * out[1] * out[2] * (shape[2] // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    def window(self, shape: Shape):
        return self.kernel_size, self.strides, self.dilation_rate

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        inputs = [x, ctx.params["weight"]] + ([ctx.params["bias"]] if self.use_bias else [])
        z = g.op(
            "Conv",
            inputs,
            ctx.name,
            kernel_shape=list(self.kernel_size),
            strides=list(self.strides),
            dilations=list(self.dilation_rate),
            group=self.groups,
            pads=self.pads(ctx.in_shape),
        )
        y = lower_activation(g, z, self.activation, ctx.name)
        ctx.saved.update(x=x, z=z, y=y)
        return y


def _zero_padding_check(value: Any) -> Any:
    """p | [ph, pw] | [[top, bottom], [left, right]] -> ((top, bottom), (left, right))."""

    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WINDOW

    if ok(value):
        return ((value, value), (value, value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if all(ok(v) for v in value):
            return ((value[0], value[0]), (value[1], value[1]))
        if all(isinstance(v, (list, tuple)) and len(v) == 2 and ok(v[0]) and ok(v[1]) for v in value):
            return ((value[0][0], value[0][1]), (value[1][0], value[1][1]))
    raise PydanticCustomError(
        "cnnspec_padding",
        "must be an integer ≥ 0, [ph, pw] or [[top, bottom], [left, right]], got {got}",
        {"got": repr(value)},
    )


class ZeroPadding2D(Layer):
    """Pads the image with zeros (Keras's ZeroPadding2D)."""

    type: Literal["ZeroPadding2D"]
    padding: Annotated[
        int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]], BeforeValidator(_zero_padding_check)
    ] = ((1, 1), (1, 1))

    keras_name: ClassVar[str] = "zero_padding2d"

    def output_shape(self, shape: Shape) -> Shape:
        require_image("ZeroPadding2D", shape)
        (top, bottom), (left, right) = self.padding
        return (shape[0] + top + bottom, shape[1] + left + right, shape[2])

    def padding_applied(self, shape: Shape) -> str:
        (top, bottom), (left, right) = self.padding
        return pads_text(top, bottom, left, right)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        import numpy as np

        (top, bottom), (left, right) = self.padding
        pads = g.constant(ctx.name, np.array([0, 0, top, left, 0, 0, bottom, right]), dtype=np.int64)
        return g.op("Pad", [x, pads], ctx.name, mode="constant")
