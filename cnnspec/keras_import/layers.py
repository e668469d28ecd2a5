"""Each Keras layer kind as its cnnspec layer: argument names copied through, values checked, refusals named.

A Keras argument is copied (same name, or Keras 2's older name), ignored because it cannot change what the
imported model computes (its name, `trainable`, a float32 dtype, a seed), or refused: every refusal names the
layer, the argument, its value and the reason, and all of them are reported at once.
"""

from __future__ import annotations

from typing import Any

from ..layers import LAYERS_BY_TYPE
from .topology import KLayer

IMAGE_KINDS = (
    "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Dense", "Dropout", "Activation",
    "BatchNormalization", "ZeroPadding2D", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "UpSampling2D", "Cropping2D", "Reshape", "Identity", "Rescaling", "ReLU", "LeakyReLU", "PReLU",
    "ELU", "Softmax", "LayerNormalization", "GroupNormalization", "SpatialDropout2D",
)  # fmt: skip
"""Keras classes with a cnnspec kind of the same name."""
ALIASES = {"Convolution2D": "Conv2D", "SeparableConvolution2D": "SeparableConv2D", "MaxPool2D": "MaxPooling2D",
           "AvgPool2D": "AveragePooling2D", "AveragePool2D": "AveragePooling2D",
           "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D",
           "Conv2DTranspose": "Conv2DTranspose", "Deconvolution2D": "Conv2DTranspose"}  # fmt: skip
IGNORED = ("name", "trainable", "seed")
"""Arguments that change nothing an imported model computes."""
RENAMED = {"LeakyReLU": {"alpha": "negative_slope"}}
"""Keras 2's argument names."""
FIXED: dict[str, dict[str, tuple]] = {
    "BatchNormalization": {"axis": (-1, 3, [-1], [3])},
    "LayerNormalization": {"axis": (-1, [-1])},
    "GroupNormalization": {"axis": (-1,)},
    "Dense": {"lora_rank": (None, 0)},
    "UpSampling2D": {"interpolation": ("nearest", "bilinear")},
}
"""Arguments cnnspec accepts only at these values (Keras's defaults)."""
DEFAULT_INITIALIZERS = {"beta_initializer": "zeros", "gamma_initializer": "ones", "moving_mean_initializer": "zeros",
                        "moving_variance_initializer": "ones"}  # fmt: skip
"""BatchNormalization's initializers: cnnspec uses Keras's defaults and has no such arguments."""
REFUSED_KINDS = {
    "Lambda": "a Lambda layer holds Python code, which cnnspec never runs or deserializes. Hint: rewrite it "
    "with cnnspec layers",
    "TFOpLambda": "a TensorFlow op called on a tensor holds code cnnspec never runs. Hint: use a layer instead",
    "LSTM": "recurrent layers are not supported: cnnspec builds image CNNs",
    "GRU": "recurrent layers are not supported: cnnspec builds image CNNs",
    "SimpleRNN": "recurrent layers are not supported: cnnspec builds image CNNs",
    "RNN": "recurrent layers are not supported: cnnspec builds image CNNs",
    "Bidirectional": "recurrent layers are not supported: cnnspec builds image CNNs",
    "ConvLSTM2D": "recurrent layers are not supported: cnnspec builds image CNNs",
    "TimeDistributed": "time-distributed (sequence) layers are not supported: cnnspec builds image CNNs",
    "Embedding": "embeddings are not supported: cnnspec builds image CNNs",
    "Normalization": "Normalization is imported only right after the input, where it becomes the spec's preprocess",
}
ACTIVATIONS = {
    "linear": None, "swish": "silu", "hard_swish": "hard_silu", **{name: name for name in (
        "relu", "tanh", "sigmoid", "softmax", "leaky_relu", "elu", "gelu", "silu", "relu6", "hard_sigmoid",
        "hard_silu", "mish", "softplus", "softsign", "selu", "exponential")},
}  # fmt: skip
INITIALIZERS = {"GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal", "HeNormal": "he_normal",
                "HeUniform": "he_uniform", "LecunNormal": "lecun_normal", "LecunUniform": "lecun_uniform",
                "Zeros": "zeros", "Ones": "ones"}  # fmt: skip
VARIANCE_SCALING = {
    (1.0, "fan_avg", "uniform"): "glorot_uniform", (1.0, "fan_avg", "truncated_normal"): "glorot_normal",
    (2.0, "fan_in", "truncated_normal"): "he_normal", (2.0, "fan_in", "uniform"): "he_uniform",
    (1.0, "fan_in", "truncated_normal"): "lecun_normal", (1.0, "fan_in", "uniform"): "lecun_uniform",
}  # fmt: skip
PAIRS = ("kernel_size", "strides", "dilation_rate", "pool_size", "size")


def cnnspec_kind(layer: KLayer) -> str | None:
    kind = ALIASES.get(layer.kind, layer.kind)
    return kind if kind in IMAGE_KINDS else None


def refusal(layer: KLayer) -> str | None:
    """Why a layer cannot be imported at all (its kind or its origin), or None."""
    module = layer.module or ""
    if layer.kind in REFUSED_KINDS:
        return REFUSED_KINDS[layer.kind]
    if layer.registered and layer.registered != layer.kind:
        return (f"custom class '{layer.registered}' is code from outside Keras, which cnnspec never runs. Hint: "
                "express it with cnnspec's layers")  # fmt: skip
    if module.startswith(("keras.src.ops", "keras.ops")):
        return "Keras ops called on tensors are not layers cnnspec can import. Hint: use the matching layer"
    if module and module != "keras" and not module.startswith("keras."):
        return f"class from module '{module}' is not a Keras layer; cnnspec never runs outside code"
    if cnnspec_kind(layer) is None:
        return f"Keras's {layer.kind} has no cnnspec equivalent (the kinds are listed in the README)"
    return None


def convert_args(layer: KLayer) -> tuple[dict, list[str], list[str]]:
    """(cnnspec arguments, refusals, warnings) of one layer whose kind has a cnnspec equivalent."""
    kind = cnnspec_kind(layer)
    assert kind is not None
    fields = LAYERS_BY_TYPE[kind].model_fields
    renamed = RENAMED.get(kind, {})
    fixed = FIXED.get(kind, {})
    args: dict[str, Any] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for key, value in layer.config.items():
        target = renamed.get(key, key)
        if key in IGNORED:
            continue
        if key == "dtype":
            problems += _dtype(value)
        elif key == "data_format":
            if value not in (None, "channels_last"):
                problems.append(f"data_format={value!r}: cnnspec reads channels-last images only. Hint: build the "
                                "model with data_format='channels_last' (Keras's default)")  # fmt: skip
        elif key in fixed:
            if value not in fixed[key]:
                problems.append(f"{key}={_shown(value)} is not supported (cnnspec takes {_choices(fixed[key])})")
            elif key in fields and key != "axis":
                args[key] = value
        elif key in DEFAULT_INITIALIZERS and kind.endswith("Normalization"):
            if _initializer(value)[0] != DEFAULT_INITIALIZERS[key]:
                warnings.append(f"{key}={_shown(value)} is not kept: cnnspec initializes it as Keras's default")
        elif target == "activation":
            act, problem = _activation(value)
            problems += problem
            if act is not None:
                args["activation"] = act
        elif target.endswith("_initializer") and target in fields:
            init, warning = _initializer(value)
            if warning:
                warnings.append(f"{key}={_shown(value)}: {warning}; written as cnnspec's default (the imported "
                                "weights are unaffected)")  # fmt: skip
            elif init is not None:
                args[target] = init
        elif target in fields and target not in ("type", "name", "inputs"):
            args[target] = _value(target, value)
        elif value in (None, False, [], {}):
            continue  # unset: a regularizer, constraint or feature switched off
        elif kind == "BatchNormalization" and key == "renorm_momentum":
            continue  # used only with renorm, which is refused when on
        else:
            problems.append(f"{key}={_shown(value)} is not supported by cnnspec")
    return _without_defaults(kind, args), problems, warnings


def _dtype(value: Any) -> list[str]:
    name = value
    if isinstance(value, dict):
        name = (value.get("config") or {}).get("name", value.get("class_name"))
    if name in (None, "float32"):
        return []
    return [f"dtype={_shown(name)}: cnnspec computes in float32. Hint: save the model with the float32 policy"]


def _activation(value: Any) -> tuple[str | None, list[str]]:
    if value is None:
        return None, []
    if isinstance(value, str) and value in ACTIVATIONS:
        return ACTIVATIONS[value], []
    return None, [f"activation={_shown(value)} is not one of cnnspec's activations ({', '.join(ACTIVATIONS)})"]


def _initializer(value: Any) -> tuple[Any, str | None]:
    """cnnspec's form of a Keras initializer, or (None, why) where it has none."""
    if value is None:
        return None, None
    if isinstance(value, str):
        snake = {v: v for v in INITIALIZERS.values()}
        return (snake[value], None) if value in snake else (None, "no cnnspec equivalent")
    if not isinstance(value, dict):
        return None, "no cnnspec equivalent"
    kind, config = value.get("class_name"), value.get("config") or {}
    if kind in INITIALIZERS:
        return INITIALIZERS[kind], None
    if kind == "RandomNormal":
        return {"type": "random_normal", "mean": config.get("mean", 0.0), "stddev": config.get("stddev", 0.05)}, None
    if kind == "RandomUniform":
        return {"type": "random_uniform", "minval": config.get("minval", -0.05),
                "maxval": config.get("maxval", 0.05)}, None  # fmt: skip
    if kind == "Constant" and isinstance(config.get("value"), (int, float)):
        return {"type": "constant", "value": float(config["value"])}, None
    if kind == "VarianceScaling":
        key = (float(config.get("scale", 1.0)), config.get("mode"), config.get("distribution"))
        if key in VARIANCE_SCALING:
            return VARIANCE_SCALING[key], None
    return None, "no cnnspec equivalent"


def _value(field: str, value: Any) -> Any:
    """A Keras value in the form cnnspec's specs use: [3, 3] -> 3, tuples -> lists."""
    if isinstance(value, tuple):
        value = list(value)
    if field in PAIRS and isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        return value[0]
    if isinstance(value, list):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    return value


def _without_defaults(kind: str, args: dict) -> dict:
    """Leave out the arguments equal to cnnspec's default, as the specs in specs/ do."""
    fields = LAYERS_BY_TYPE[kind].model_fields
    if kind.endswith("Pooling2D") and "strides" in args and _same(args["strides"], args.get("pool_size", 2)):
        args = {k: v for k, v in args.items() if k != "strides"}  # cnnspec's default strides are the pool size
    out = {}
    for key, value in args.items():
        default = fields[key].default if key in fields and not fields[key].is_required() else object()
        if _same(value, default):
            continue
        out[key] = value
    return out


def _same(value: Any, default: Any) -> bool:
    def norm(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return tuple(norm(x) for x in v)
        return v

    if isinstance(default, tuple) and len(default) == 2 and not isinstance(value, (list, tuple)):
        value = (value, value)
    if isinstance(value, bool) != isinstance(default, bool):
        return False
    return norm(value) == norm(default)


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict) else str(value.get("class_name", value))
    return text if len(text) <= 60 else text[:57] + "..."


def _choices(values: tuple) -> str:
    return " or ".join(repr(v) for v in values)
