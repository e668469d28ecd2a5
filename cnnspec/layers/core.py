"""Dense, Flatten, Dropout and Activation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from ..shapes import numel
from .activations import activation_grad, lower_activation
from .base import Activation as ActivationName
from .base import Float, Initializer, Int, Layer, Lowering, ShapeError, StrictBool, initializer_arg

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder
    from ..shapes import Shape

MAX_UNITS = 1 << 24


class Dense(Layer):
    """Fully connected layer; the weight is stored as PyTorch's [out, in] (ONNX Gemm with transB=1)."""

    type: Literal["Dense"]
    units: Int(ge=1, le=MAX_UNITS)
    activation: ActivationName | None = None
    use_bias: StrictBool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    keras_name: ClassVar[str] = "dense"

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            # NOTE: Keras silently applies Dense to the last axis of an image; that is almost never meant.
            h, w, c = shape
            raise ShapeError(
                None,
                f"Dense needs a flat input but gets the image shape {h}x{w}x{c}",
                f"add Flatten before it (keeps all {h}*{w}*{c} = {h * w * c:,} values) "
                f"or GlobalAveragePooling2D (keeps the {c} channels)",
            )
        return (self.units,)

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {"weight": (self.units, shape[0])}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from ..initializers import initialize

        fan_in, fan_out = shape[0], self.units
        kernel = initialize(initializer_arg(self.kernel_initializer), (fan_out, fan_in), fan_in, fan_out, rng)
        params = {"weight": kernel}
        if self.use_bias:
            params["bias"] = initialize(initializer_arg(self.bias_initializer), (fan_out,), fan_in, fan_out, rng)
        return params

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * shape[0] * self.units

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        inputs = [x, ctx.params["weight"]] + ([ctx.params["bias"]] if self.use_bias else [])
        z = g.op("Gemm", inputs, ctx.name, transB=1)
        y = lower_activation(g, z, self.activation, ctx.name)
        ctx.saved.update(x=x, z=z, y=y)
        ctx.pre_activation = z
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """z = x Wᵀ + b with W [out, in]:  dW = dzᵀ x,  db = Σ_n dz,  dx = dz W."""
        from .gradients import reduce_sum

        dz = activation_grad(g, dy, self.activation, ctx)
        grads = {"weight": g.op("Gemm", [dz, ctx.saved["x"]], ctx.name, transA=1)}
        if self.use_bias:
            grads["bias"] = reduce_sum(g, dz, [0], ctx.name)
        dx = None if not ctx.needs_input_grad else g.op("MatMul", [dz, ctx.params["weight"]], ctx.name)
        return dx, grads


class Flatten(Layer):
    """(H, W, C) -> (H*W*C,) in NCHW (channel-major) order.

    NOTE: this is PyTorch's order; Keras flattens channels-last (HWC), so Dense weights after a
    Flatten are permuted between the two. Weights here follow the ONNX/PyTorch layout.
    """

    type: Literal["Flatten"]
    keras_name: ClassVar[str] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (numel(shape),)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        if len(ctx.in_shape) == 1:
            return x
        return g.op("Flatten", [x], ctx.name, axis=1)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """A reshape: dx is dy in the input's NCHW shape."""
        from ..shapes import hwc_to_chw
        from .gradients import ints

        if len(ctx.in_shape) == 1:
            return dy, {}
        return g.op("Reshape", [dy, ints(g, ctx.name, [-1, *hwc_to_chw(ctx.in_shape)])], ctx.name), {}


def _noise_shape_check(value: Any) -> Any:
    """Keras's noise_shape: a list with the batch axis first, each entry null (the input's size) or an integer ≥ 1."""
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or not 2 <= len(value) <= 4
        or any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1) for v in value)
    ):
        raise PydanticCustomError(
            "cnnspec_noise_shape",
            "must be a list of 2 to 4 entries (the batch axis first, as Keras), each null or an integer ≥ 1, "
            "e.g. [null, 1, 1, 1], got {got}",
            {"got": repr(value)},
        )
    return tuple(value)


NoiseShape = Annotated[
    tuple[int | None, ...] | None,
    BeforeValidator(_noise_shape_check, json_schema_input_type=list[int | None] | None),
]


class Dropout(Layer):
    """Zeroes a fraction `rate` of values in training (scaling the rest by 1/(1-rate)); absent at inference.

    `noise_shape` is Keras's: the shape of the drawn mask, channels-last with the batch axis first, each entry
    null (that axis's size) or 1 (one draw broadcast along it), e.g. [null, 1, 1, 1] drops whole samples
    (EfficientNet's drop-connect), [null, 1, 1, null] whole channels. The batch entry must be null: every
    sample draws its own mask.
    """

    type: Literal["Dropout"]
    rate: Float(ge=0.0, lt=1.0)
    noise_shape: NoiseShape = None  # None is left out of the normalized spec (exclude_none)
    keras_name: ClassVar[str] = "dropout"

    def output_shape(self, shape: Shape) -> Shape:
        if self.noise_shape is not None:
            self.mask_shape(shape)
        return shape

    def mask_shape(self, shape: Shape) -> tuple[int, ...]:
        """The per-sample mask shape in the model's layout (NCHW or units) for an input of Keras `shape`."""
        from ..shapes import hwc_to_chw

        if self.noise_shape is None:
            return hwc_to_chw(shape)
        written = "[" + ", ".join("null" if v is None else str(v) for v in self.noise_shape) + "]"
        keras = ["null", *map(str, shape)]
        if len(self.noise_shape) != len(shape) + 1:
            example = "[null" + ", 1" * len(shape) + "]"
            raise ShapeError(
                "noise_shape",
                f"noise_shape {written} has {len(self.noise_shape)} entries but the input (batch, "
                f"{', '.join(map(str, shape))}) has {len(shape) + 1}: Keras counts the batch axis first",
                f"write {len(shape) + 1} entries, e.g. {example} to drop whole samples",
            )
        if self.noise_shape[0] is not None:
            raise ShapeError(
                "noise_shape",
                f"noise_shape {written}: the batch entry must be null (cnnspec draws one mask per sample), "
                f"got {self.noise_shape[0]}",
                f"write null first: [null, {', '.join('null' if v is None else str(v) for v in self.noise_shape[1:])}]",
            )
        sizes = []
        for axis, (entry, size) in enumerate(zip(self.noise_shape[1:], shape, strict=True)):
            if entry not in (None, 1, size):
                raise ShapeError(
                    "noise_shape",
                    f"noise_shape {written}: entry {axis + 1} is {entry} but that axis of the input "
                    f"[{', '.join(keras)}] has size {size}; a mask axis must be 1 (broadcast) or the axis's size",
                    f"write 1 or null at entry {axis + 1}",
                )
            sizes.append(size if entry is None else entry)
        return hwc_to_chw(tuple(sizes))

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        if not ctx.training:
            return x
        from .regularization import apply_mask

        return apply_mask(g, x, ctx, self.mask_shape(ctx.in_shape), self.rate)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x ⊙ mask (broadcast where noise_shape has 1s):  dx = dy ⊙ mask."""
        from .regularization import mask_backward

        return mask_backward(g, dy, ctx)


class Activation(Layer):
    type: Literal["Activation"]
    activation: ActivationName | None
    keras_name: ClassVar[str] = "activation"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(shape)

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        y = lower_activation(g, x, self.activation, ctx.name)
        ctx.saved.update(x=x, z=x, y=y)
        ctx.pre_activation = x
        return y

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = f(x): dx = f'(x) ⊙ dy (softmax: its Jacobian-vector product)."""
        return activation_grad(g, dy, self.activation, ctx), {}
