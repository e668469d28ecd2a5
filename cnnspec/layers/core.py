"""Dense, Flatten, Dropout and Activation."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

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


class Dropout(Layer):
    """Zeroes a fraction `rate` of values in training (scaling the rest by 1/(1-rate)); absent at inference."""

    type: Literal["Dropout"]
    rate: Float(ge=0.0, lt=1.0)
    keras_name: ClassVar[str] = "dropout"

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        if not ctx.training:
            return x
        # The mask is a graph input (`<name>.mask`: 0 or 1/(1-rate) per value), drawn by the training
        # loop from a generator keyed on (seed, epoch, step): reproducible and resumable, unlike
        # RandomUniform's fixed seed attribute.
        from ..shapes import hwc_to_chw

        mask = f"{ctx.name}.mask"
        ctx.saved.update(x=x, mask=mask)
        ctx.masks[mask] = (hwc_to_chw(ctx.in_shape), self.rate)
        return g.op("Mul", [x, mask], ctx.name)

    def backward(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[str | None, dict[str, str]]:
        """y = x ⊙ mask:  dx = dy ⊙ mask."""
        return g.op("Mul", [dy, ctx.saved["mask"]], ctx.name), {}


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
