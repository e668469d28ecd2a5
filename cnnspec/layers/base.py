"""What every layer kind shares: strict field types, the Layer base class and shape errors.

A layer kind is one Pydantic model that holds, side by side, its parameters, its output-shape rule,
its weights, its forward lowering to ONNX and its backward rule. The shape rules use Keras's
channels-last shapes (H, W, C) or (units,); the lowering works on NCHW tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ..shapes import Shape

if TYPE_CHECKING:
    import numpy as np

    from ..builder import GraphBuilder


# ---- strict field types -------------------------------------------------------------------------
# NOTE: Pydantic's lax mode turns `filters: true` into 1 and "32" into 32; these validators refuse
# both and say the rule in words, e.g. "must be an integer ≥ 1".


def _got(value: Any) -> str:
    """A received value as YAML/JSON wrote it (true, not Python's True)."""
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def _int_check(ge: int | None, le: int | None):
    rule = "an integer" + (f" ≥ {ge}" if ge is not None else "") + (f" and ≤ {le:,}" if le is not None else "")

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticCustomError("cnnspec_int", "must be {rule}, got {got}", {"rule": rule, "got": _got(value)})
        if (ge is not None and value < ge) or (le is not None and value > le):
            raise PydanticCustomError("cnnspec_int", "must be {rule}, got {got}", {"rule": rule, "got": value})
        return value

    return check


def Int(ge: int | None = None, le: int | None = None) -> Any:
    return Annotated[int, BeforeValidator(_int_check(ge, le)), Field(ge=ge, le=le)]


def _float_check(ge: float | None, lt: float | None, gt: float | None, le: float | None):
    bounds = []
    if ge is not None and lt is not None:
        bounds.append(f"in [{ge}, {lt})")
    else:
        bounds += [f"{op} {v}" for op, v in (("≥", ge), ("<", lt), (">", gt), ("≤", le)) if v is not None]
    rule = "a number" + (" " + " and ".join(bounds) if bounds else "")

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PydanticCustomError("cnnspec_float", "must be {rule}, got {got}", {"rule": rule, "got": _got(value)})
        if not math.isfinite(value):
            raise PydanticCustomError("cnnspec_float", "must be finite, got {got}", {"got": repr(value)})
        v = float(value)
        if (
            (ge is not None and v < ge)
            or (lt is not None and v >= lt)
            or (gt is not None and v <= gt)
            or (le is not None and v > le)
        ):
            raise PydanticCustomError("cnnspec_float", "must be {rule}, got {got}", {"rule": rule, "got": value})
        return v

    return check


def Float(ge: float | None = None, lt: float | None = None, gt: float | None = None, le: float | None = None) -> Any:
    return Annotated[float, BeforeValidator(_float_check(ge, lt, gt, le)), Field(ge=ge, lt=lt, gt=gt, le=le)]


MAX_WINDOW = 1 << 16


def _pair_check(value: Any) -> Any:
    """Accept n or [h, w] (each an integer ≥ 1) and normalize to a (h, w) tuple."""
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WINDOW for v in items):
        raise PydanticCustomError(
            "cnnspec_pair", "must be an integer ≥ 1 or a list [h, w] of two, got {got}", {"got": _got(value)}
        )
    return (items[0], items[1])


Pair = Annotated[int | tuple[int, int], BeforeValidator(_pair_check)]
"""A size given as one integer (both axes) or [h, w]; always a (h, w) tuple after validation."""


def _name_check(value: Any) -> Any:
    if not isinstance(value, str) or not value or len(value) > 64 or not all(c.isalnum() or c in "_-" for c in value):
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise PydanticCustomError(
            "cnnspec_name",
            "must be 1 to 64 letters, digits, '_' or '-', got {got}",
            {"got": shown},
        )
    return value


LayerName = Annotated[str, BeforeValidator(_name_check), Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

MAX_INPUTS = 64


def _inputs_check(value: Any) -> Any:
    """`inputs: a` or `inputs: [a, b]` -> a tuple of names (each checked like a layer name)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not 1 <= len(items) <= MAX_INPUTS:
        raise PydanticCustomError(
            "cnnspec_inputs", "must be a layer name or a list of 1 to {most} names, got {got}",
            {"most": MAX_INPUTS, "got": _got(value)},
        )  # fmt: skip
    return tuple(_name_check(item) for item in items)


LayerInputs = Annotated[tuple[str, ...], BeforeValidator(_inputs_check, json_schema_input_type=str | list[LayerName])]
"""What a layer reads: one name or a list; 'input' is the model input."""

Activation = Literal[
    "relu", "tanh", "sigmoid", "softmax", "linear", "leaky_relu", "elu", "gelu", "silu", "relu6", "hard_sigmoid",
    "hard_silu", "hard_swish", "mish", "softplus", "softsign", "selu", "exponential",
]  # fmt: skip


# ---- shape errors --------------------------------------------------------------------------------


class ShapeError(Exception):
    """Raised by a layer's shape rule: which field, what arithmetic failed, and how to fix it."""

    def __init__(self, field: str | None, message: str, hint: str) -> None:
        super().__init__(message)
        self.field, self.message, self.hint = field, message, hint


def require_image(layer: str, shape: Shape, hint: str = "remove the Flatten/Dense before it") -> None:
    if len(shape) != 3:
        raise ShapeError(None, f"{layer} needs an image input (H, W, C) but gets the flat shape {list(shape)}", hint)


# ---- lowering context -----------------------------------------------------------------------------


@dataclass
class Lowering:
    """What a layer needs to emit its nodes, and what its forward pass hands to the training program.

    The fields below `training` are the typed contract between a layer, the autodiff walk and the
    train-step program; `saved` is the layer's own scratch (tensors its backward rule reads again).
    """

    name: str
    in_shapes: tuple[Shape, ...]
    out_shape: Shape
    params: dict[str, str]
    training: bool = False
    input_tensors: tuple[str, ...] = ()
    """The tensors the layer reads, one per input (NCHW or flat)."""
    needs_dx: tuple[bool, ...] = ()
    """Per input: whether the backward pass must return dL/d(input) (a trainable parameter lies above it)."""
    dy_is_dz: bool = False
    """The loss hands this (last) layer dL/d(pre-activation) directly (fused softmax + cross-entropy)."""
    pre_activation: str | None = None
    """The tensor before the layer's activation (the logits when the activation is the last softmax)."""
    updates: dict[str, str] = field(default_factory=dict)
    """Parameter key -> its value after the step, for parameters the forward pass updates (running stats)."""
    masks: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)
    """Graph inputs the training loop feeds per step: mask name -> (per-sample NCHW shape, dropout rate)."""
    saved: dict[str, str] = field(default_factory=dict)

    @property
    def in_shape(self) -> Shape:
        """The (first) input's shape: the only one for every layer but the merges."""
        return self.in_shapes[0]

    @property
    def needs_input_grad(self) -> bool:
        return self.needs_dx[0] if self.needs_dx else True


class Layer(BaseModel):
    """Base of every layer kind. Subclasses add `type: Literal[...]` and their fields.

    Most kinds take one input and implement `output_shape`, `lower` and `backward`; the merges take
    several and override the n-ary `infer_shape`, `lower_node` and `backward_node` directly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: LayerName | None = None
    inputs: LayerInputs | None = None
    """Names of the tensors this layer reads (default: the previous item's output)."""
    trainable: Annotated[bool, Field(strict=True)] | None = None
    """false freezes the layer's weights, as Keras's `layer.trainable = False` (None, the default: trainable)."""

    keras_name: ClassVar[str]
    """Keras's default name prefix (conv2d, max_pooling2d, ...)."""
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    """(fewest, most) inputs; None: no upper bound."""
    non_trainable: ClassVar[tuple[str, ...]] = ()
    """Parameters updated by the forward pass, not by gradients (BatchNormalization's running stats)."""
    augmentation: ClassVar[bool] = False
    """A random augmentation (layers/augmentation.py): applied by the training input pipeline, absent at inference."""
    mixes_batch: ClassVar[bool] = False
    """The training forward mixes the samples of a batch (batch statistics): the batch cannot be cut
    into shards that run apart (training.runner.ShardedStepRunner)."""

    @property
    def frozen(self) -> bool:
        """`trainable: false`: no gradient updates, no optimizer state (BatchNormalization: inference mode)."""
        return self.trainable is False

    def output_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def infer_shape(self, shapes: tuple[Shape, ...]) -> Shape:
        """The output shape from every input's shape (unary kinds: `output_shape` of the one input)."""
        return self.output_shape(shapes[0])

    def param_shapes(self, shape: Shape) -> dict[str, Shape]:
        """Parameter shapes in PyTorch layout, e.g. {'weight': (out, in), 'bias': (out,)}."""
        return {}

    def init_params(self, shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def flops(self, shape: Shape, out: Shape) -> int:
        """Floating-point operations per image (2 x multiply-adds for conv/dense)."""
        return 0

    def window(self, shape: Shape) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
        """(kernel, strides, dilation) for the receptive field; None when the layer keeps it."""
        return None

    def padding_applied(self, shape: Shape) -> str:
        """The padding really applied, as 'top,bottom,left,right' ('' when none)."""
        return ""

    def lower(self, g: GraphBuilder, x: str, ctx: Lowering) -> str:
        """Emit the forward nodes on NCHW (or flat) tensors; return the output tensor name."""
        raise NotImplementedError

    def lower_node(self, g: GraphBuilder, xs: list[str], ctx: Lowering) -> str:
        return self.lower(g, xs[0], ctx)

    def backward_node(self, g: GraphBuilder, dy: str, ctx: Lowering) -> tuple[list[str | None], dict[str, str]]:
        """One dL/d(input) per input (None where `ctx.needs_dx` says nobody needs it) and dL/d(params)."""
        rule = getattr(self, "backward", None)
        if rule is None:
            raise NotImplementedError(f"no backward rule for {type(self).__name__} ({ctx.name!r})")
        dx, grads = rule(g, dy, ctx)
        return [dx], grads


def pads_text(top: int, bottom: int, left: int, right: int) -> str:
    return "" if top == bottom == left == right == 0 else f"{top},{bottom},{left},{right}"


# ---- shared field types for weights and padding ----------------------------------------------------

StrictBool = Annotated[bool, Field(strict=True)]

InitializerName = Literal[
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
    "zeros", "ones", "random_normal", "random_uniform",
]  # fmt: skip


class RandomNormal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["random_normal"]
    mean: Float() = 0.0
    stddev: Float(gt=0) = 0.05


class RandomUniform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["random_uniform"]
    minval: Float() = -0.05
    maxval: Float() = 0.05


class Constant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["constant"]
    value: Float() = 0.0


Initializer = InitializerName | Annotated[RandomNormal | RandomUniform | Constant, Field(discriminator="type")]


def initializer_arg(init: Any) -> str | dict:
    """The form `initializers.initialize` takes: a name or a dict with `type` and parameters."""
    return init if isinstance(init, str) else init.model_dump()


def _conv_padding_check(value: Any) -> Any:
    """'valid' | 'same' | p | [ph, pw] (symmetric explicit padding, PyTorch's meaning) -> str or (ph, pw)."""
    if value in ("valid", "same"):
        return value
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WINDOW for v in items):
        return (items[0], items[1])
    raise PydanticCustomError(
        "cnnspec_padding", "must be 'valid', 'same', an integer ≥ 0 or a list [ph, pw], got {got}", {"got": repr(value)}
    )


ConvPadding = Annotated[Literal["valid", "same"] | int | tuple[int, int], BeforeValidator(_conv_padding_check)]


def spatial_windows(
    what: str, shape: Shape, kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int], padding: Any
) -> tuple[Window, Window]:
    """Height and width windows of a conv/pool on an (H, W, C) input; a ShapeError when one is empty.

    `what` names the window in messages ('kernel' or 'pool').
    """
    pads = (padding, padding) if isinstance(padding, str) else padding
    wins = tuple(window(shape[a], kernel[a], strides[a], dilation[a], pads[a]) for a in (0, 1))
    for axis, win in enumerate(wins):
        if win.out >= 1:
            continue
        axis_name = ("height", "width")[axis]
        formula = window_formula(shape[axis], kernel[axis], strides[axis], dilation[axis], pads[axis])
        dil = f" with dilation {dilation[0]}x{dilation[1]}" if dilation != (1, 1) else ""
        written = list(padding) if isinstance(padding, tuple) else padding  # as the spec wrote it: [1, 2]
        raise ShapeError(
            "kernel_size" if what == "kernel" else "pool_size",
            f"{what} {kernel[0]}x{kernel[1]}{dil} does not fit the {shape[0]}x{shape[1]} input with "
            f"padding={written!r}: output {axis_name} would be {formula}",
            f"padding: same, a smaller {what}, or one pooling layer less before it",
        )
    return wins[0], wins[1]


from ..shapes import Window, window, window_formula  # noqa: E402  (kept beside its only user)
