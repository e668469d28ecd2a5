"""The spec: Pydantic models of a whole network file, its loading, and Pydantic errors -> Issues."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .errors import Issue, SpecError
from .layers import LAYER_KINDS, LAYERS_BY_TYPE, Layer
from .layers.base import Constant, Float, Int, LayerInputs, LayerName, RandomNormal, RandomUniform
from .loader import read_spec_file

MAX_LAYERS = 1000
MAX_REPEAT = 1000
BLOCK_TAG = "block"
MAX_SIDE = 16384
MAX_CHANNELS = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The image the network takes: Keras's channels-last [H, W, C], without the batch."""

    shape: Annotated[list[Int(ge=1, le=MAX_SIDE)], Field(min_length=3, max_length=3)]


def _number_or_list(value: Any) -> Any:
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value


PerChannel = Annotated[list[Float()], BeforeValidator(_number_or_list), Field(min_length=1, max_length=MAX_CHANNELS)]


class Preprocess(_Strict):
    """Applied inside the model to raw pixels: x * scale, then (x - mean) / std per channel."""

    scale: Float(gt=0) = 1.0
    mean: PerChannel = [0.0]
    std: PerChannel = [1.0]


def _lower(value: Any) -> Any:
    """Keras's class names are accepted for the same thing: `Adam` is `adam`, `SGD` is `sgd`."""
    return value.lower() if isinstance(value, str) else value


def _keras_loss(value: Any) -> Any:
    # Keras's sparse_categorical_crossentropy (integer labels) is what cnnspec's categorical_crossentropy computes.
    value = _lower(value)
    return "categorical_crossentropy" if value == "sparse_categorical_crossentropy" else value


class Training(_Strict):
    """How `cnnspec train` trains the network; every field can be overridden on the command line."""

    optimizer: Annotated[Literal["sgd", "momentum", "nesterov", "adam", "adamw"], BeforeValidator(_lower)] = "adam"
    learning_rate: Float(gt=0, le=10) | None = None
    """Default: 0.001 for adam/adamw, 0.01 for the sgd family (Keras's defaults)."""
    momentum: Float(ge=0, lt=1) = 0.9
    beta_1: Float(ge=0, lt=1) = 0.9
    beta_2: Float(ge=0, lt=1) = 0.999
    epsilon: Float(gt=0) = 1e-7
    weight_decay: Float(ge=0, lt=1) = 0.0
    epochs: Int(ge=1, le=100_000) = 10
    batch_size: Int(ge=1, le=65_536) = 32
    loss: Annotated[Literal["categorical_crossentropy", "binary_crossentropy"], BeforeValidator(_keras_loss)] = (
        "categorical_crossentropy"
    )
    """categorical_crossentropy on integer labels (Keras's sparse_categorical_crossentropy, accepted as a name for
    it); binary_crossentropy for a binary head (one sigmoid unit), which trains with it whatever this says."""
    label_smoothing: Float(ge=0, lt=1) = 0.0
    schedule: Literal["constant", "step", "cosine"] = "constant"
    step_epochs: Int(ge=1, le=100_000) = 10
    """With schedule 'step': multiply the learning rate by step_gamma every step_epochs epochs."""
    step_gamma: Float(gt=0, le=1) = 0.1
    patience: Int(ge=1, le=100_000) | None = None
    """Early stopping: stop after this many epochs without a better validation loss (keeps the best)."""
    val_split: Float(ge=0, lt=1) | None = None
    """Hold out this fraction for validation; 0 or none: no validation (Keras's validation_split=0.0)."""
    seed: Int(ge=0, le=2**32 - 1) = 0

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 0.001 if self.optimizer in ("adam", "adamw") else 0.01


Label = Annotated[str, Field(strict=True, min_length=1, max_length=256)]


class BlockUse(BaseModel):
    """One use of a block: `{block: basic, name: layer1, repeat: 2, filters: 64}`.

    The keys besides these are the block's parameters; they are checked against its declaration when
    the graph is built (cnnspec.graph), where the block's definition is known.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    block: LayerName
    name: LayerName
    inputs: LayerInputs | None = None
    repeat: Int(ge=1, le=MAX_REPEAT) = 1

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


def _item_kind(value: Any) -> str | None:
    """The union member of a `layers` item: a block use, or the layer kind its `type` names."""
    if isinstance(value, dict):
        return BLOCK_TAG if BLOCK_TAG in value else value.get("type")
    if isinstance(value, BlockUse):
        return BLOCK_TAG
    return getattr(value, "type", None)


LayerItem = Annotated[
    Union[tuple(Annotated[k, Tag(k.model_fields["type"].annotation.__args__[0])] for k in LAYER_KINDS)  # noqa: UP007
          + (Annotated[BlockUse, Tag(BLOCK_TAG)],)],
    Discriminator(_item_kind),
]  # fmt: skip
"""An item of `layers`: a layer (`type: ...`) or a block use (`block: ...`)."""

ParamName = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class BlockDef(_Strict):
    """A reusable block: its inputs, parameters and layers. Values written `$param` are replaced by the
    parameter's value where the block is used."""

    inputs: Annotated[list[LayerName], Field(min_length=1, max_length=64)] = ["in"]
    params: Annotated[list[ParamName], Field(max_length=64)] = []
    defaults: Annotated[dict[ParamName, Any], Field(max_length=64)] = {}
    layers: Annotated[
        list[dict[str, Any]],
        Field(min_length=1, max_length=MAX_LAYERS),
    ]

    @model_validator(mode="after")
    def _params_are_not_use_keys(self) -> BlockDef:
        taken = [p for p in (*self.params, *self.defaults) if p in BlockUse.model_fields]
        if taken:
            raise PydanticCustomError(
                "cnnspec_block_param",
                "parameter '{name}' would clash with the block use's own key '{name}'. Hint: rename the parameter",
                {"name": taken[0]},
            )
        return self


class Spec(_Strict):
    """A whole network: its input, its layers and (optionally) labels, preprocessing and training."""

    name: Annotated[str, Field(strict=True, min_length=1, max_length=128)] = "model"
    """Optional, as in Keras: `load_spec` uses the file's stem when it is left out."""
    input: InputSpec
    labels: list[Label] | None = None
    preprocess: Preprocess | None = None
    blocks: Annotated[dict[LayerName, BlockDef], Field(max_length=256)] | None = None
    layers: Annotated[list[LayerItem], Field(min_length=1, max_length=MAX_LAYERS)]
    training: Training | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.input.shape
        return (h, w, c)


# ---- names ----------------------------------------------------------------------------------------


def layer_names(layers: list[Any]) -> list[str]:
    """Each layer's name: its own, or Keras's default (conv2d, conv2d_1, dense, ...) for its kind.

    Works on validated layers and on raw dicts (for error messages before validation). Defaults skip
    names the spec gives explicitly, so they never collide with them.
    """

    def explicit(layer: Any) -> str | None:
        name = layer.get("name") if isinstance(layer, dict) else getattr(layer, "name", None)
        return name if isinstance(name, str) else None

    def prefix(layer: Any) -> str:
        kind = layer.get("type") if isinstance(layer, dict) else type(layer)
        cls = LAYERS_BY_TYPE.get(kind) if isinstance(kind, str) else kind
        return cls.keras_name if cls is not None and hasattr(cls, "keras_name") else "layer"

    taken = {n for n in map(explicit, layers) if n}
    counters: dict[str, int] = {}
    names = []
    for layer in layers:
        name = explicit(layer)
        if name is None:
            base = prefix(layer)
            while True:
                n = counters.get(base, 0)
                counters[base] = n + 1
                name = base if n == 0 else f"{base}_{n}"
                if name not in taken:
                    break
        names.append(name)
    return names


def use_label(index: int, use: Any) -> str:
    """How messages name a block use: layers[3] block 'basic' 'layer1'."""
    block = use.get("block") if isinstance(use, dict) else getattr(use, "block", None)
    name = use.get("name") if isinstance(use, dict) else getattr(use, "name", None)
    shown = f" '{_shown(block)}'" if isinstance(block, str) else ""
    return f"layers[{index}] block{shown}" + (f" '{_shown(name)}'" if isinstance(name, str) else "")


def layer_label(index: int, kind: Any, name: str | None) -> str:
    """How messages name a layer: layers[3] Conv2D 'conv2d_2' (no name: layers[3] Bogus)."""
    shown_kind = _shown(kind) if isinstance(kind, str) else "(no type)"
    return f"layers[{index}] {shown_kind}" + (f" '{_shown(name)}'" if name is not None else "")


def _shown(text: str, limit: int = 40) -> str:
    """User text as it may appear in a message: short, and with control characters escaped."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- Pydantic errors -> Issues ------------------------------------------------------------------


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model whose fields live at `loc` (for 'did you mean' on unknown fields)."""
    model: type[BaseModel] | None = Spec
    nested = {"input": InputSpec, "preprocess": Preprocess, "training": Training}
    if not loc:
        return Spec
    if isinstance(loc[-1], str) and loc[-1] in _INITIALIZERS and len(loc) >= 2 and "tagged-union[" in str(loc[-2]):
        return _INITIALIZERS[loc[-1]]
    if loc[0] == "layers" and len(loc) >= 3 and loc[2] in LAYERS_BY_TYPE:
        return LAYERS_BY_TYPE[loc[2]] if len(loc) == 3 else None
    if len(loc) == 2 and loc[0] == "blocks":
        return BlockDef
    if len(loc) == 1:
        model = nested.get(loc[0])
    else:
        model = None
    return model


def _suggest(word: Any, choices: list[str]) -> str:
    lowered = {c.lower(): c for c in choices}
    match = [lowered[str(word).lower()]] if str(word).lower() in lowered else []
    match = match or difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _is_union_member(part: Any) -> bool:
    # Pydantic appends the union member it tried to the location: "literal['a','b']", "int", ...
    return isinstance(part, str) and (
        "[" in part or part in ("int", "float", "str", "bool", "none", "list", "dict", "tuple")
    )


def _received(value: Any) -> str:
    """A received value as the user wrote it: true/false/null like YAML and JSON, the rest as repr."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_hint(value: Any, integer: bool) -> str:
    """The fix for a value of the wrong type where a number belongs."""
    if isinstance(value, bool):
        return " Hint: true/false is not a number here; write the number itself"
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return " Hint: write a number"
        return f" Hint: remove the quotes ({value})"
    if integer and isinstance(value, float) and value.is_integer():
        return f" Hint: write the whole number {int(value)}"
    return ""


def _describe(error: dict, field: str) -> str:
    """One Pydantic error in words: what is wrong, the rule with the received value, and a hint."""
    if error["type"] in ("extra_forbidden", "missing", "union_tag_invalid", "union_tag_not_found"):
        return _describe_key(error, field)
    return _describe_value(error, field)


def _describe_key(error: dict, field: str) -> str:
    """A key that should not be there, one that is missing, or a `type` that names no known kind."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(tuple(error["loc"][:-1]))
        allowed = [f for f in model.model_fields if f != "type"] if model else []
        parent, _, key = field.rpartition(".")
        if key in _KERAS_KEYS:
            return f"{parent + ': ' if parent else ''}unknown field '{key}'{_KERAS_KEYS[key]}"
        hint = _suggest(key, allowed) or (f". Hint: the fields here are {', '.join(allowed)}" if allowed else "")
        return f"{parent + ': ' if parent else ''}unknown field '{key}'{hint}"
    if kind == "missing":
        return f"missing required field '{field}'. Hint: add '{field.rpartition('.')[2]}: ...'"
    if field == "type":  # a layer's type
        tag = ctx.get("tag")
        if kind == "union_tag_not_found":
            return "missing 'type'" + _TYPES_HINT
        return f"unknown layer type {tag!r}" + (_suggest(tag, list(LAYERS_BY_TYPE)) or _TYPES_HINT)
    # the type of a nested mapping (an initializer)
    tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
    tags = tags or list(_INITIALIZERS)  # Pydantic names no tags when 'type' is missing
    hint = f". Hint: type is one of {', '.join(tags)}"
    if kind == "union_tag_not_found":
        return f"{field.removesuffix('.type')}: missing 'type'{hint}"
    return f"unknown {field} {ctx.get('tag')!r}" + (_suggest(ctx.get("tag"), tags) or hint)


def _describe_value(error: dict, field: str) -> str:
    """A value of the wrong type or out of its range."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    shown = _received(value)
    if kind.startswith("cnnspec_"):  # cnnspec's own validators already say the rule and the value
        if kind in ("cnnspec_int", "cnnspec_float", "cnnspec_pair"):
            hint = _type_hint(value, kind == "cnnspec_int")
        else:
            hint = _NAME_HINTS.get(kind, lambda v: "")(value)
        hint = hint or _RANGE_HINTS.get(field.rpartition(".")[2], "")
        if field.rpartition(".")[2] == "padding" and isinstance(value, str):
            hint = _suggest(value, ["valid", "same"]) or hint  # Keras's 'SAME' / 'Same'
            if hint.startswith(" (did"):
                return f"{field} {error['msg']}{hint}"
        return f"{field} {error['msg']}" + ("." + hint if hint else "")
    if kind == "literal_error":
        expected = [e.strip().strip("'") for e in ctx.get("expected", "").replace(" or ", ",").split(",")]
        return f"{field} must be one of {ctx.get('expected')}, got {shown}{_suggest(value, expected)}"
    if kind == "string_type":
        return f"{field} must be a string, got {shown}. Hint: put it in quotes"
    if kind == "bool_type":
        return f"{field} must be true or false, got {shown}. Hint: YAML 1.2 reads yes/no/on/off as text"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{field or 'the spec'} must be a mapping (key: value, ...), got {shown}"
    if kind in ("list_type", "tuple_type"):
        return f"{field} must be a list, got {shown}. Hint: write it as [a, b, ...]"
    hint = _LENGTH_HINTS.get(field, "")
    if kind == "too_short":
        return f"{field} must have at least {ctx.get('min_length')} item(s), got {shown}{hint}"
    if kind == "too_long":
        return f"{field} has {ctx.get('actual_length')} items; at most {ctx.get('max_length')}{hint}"
    if kind in ("string_too_long", "string_too_short"):
        return f"{field} {error['msg'].lower()}, got {shown}"
    return f"{field}: {error['msg']}, got {shown}"


_KERAS_KEYS = {  # Keras's names for a field cnnspec spells (or places) differently
    "lr": " (did you mean 'learning_rate'?)",
    "input_shape": ". Hint: the input shape is given once, at the top of the spec: input: {shape: [28, 28, 1]}",
    "batch_input_shape": ". Hint: the input shape is given once, at the top of the spec: input: {shape: [28, 28, 1]}",
    "kernel_initializer_seed": ". Hint: seeds come from `compile --seed` and training.seed",
}
_RANGE_HINTS = {  # what a sensible value looks like, for fields whose range alone does not say it
    "rate": " Hint: rate is the fraction of values dropped while training, e.g. 0.1 to 0.5",
    "momentum": " Hint: BatchNormalization's running averages keep this fraction each step; Keras uses 0.99",
    "learning_rate": " Hint: adam usually takes 0.001, sgd 0.01 to 0.1",
    "filters": " Hint: e.g. 32",
    "units": " Hint: e.g. 64, or the number of classes for the last layer",
}
_NAME_HINTS = {  # the fix for a malformed name, by what is wrong with it
    "cnnspec_name": lambda value: (
        " Hint: dotted names are made by expanding blocks; read a block use through its own name (its output)"
        if isinstance(value, str) and "." in value
        else ""
    ),
}
_INITIALIZERS = {m.model_fields["type"].annotation.__args__[0]: m for m in (RandomNormal, RandomUniform, Constant)}
_TYPES_HINT = ". Hint: type is one of " + ", ".join(LAYERS_BY_TYPE)
_LENGTH_HINTS = {"input.shape": ". Hint: [height, width, channels], e.g. [28, 28, 1]"}


def _wrong_branch(error: dict) -> bool:
    """A field typed `name | {type: ..., ...}` (initializers) fails in both union branches; keep the
    errors of the branch the user wrote: a mapping means the tagged models, anything else the names."""
    parts = [p for p in error["loc"] if isinstance(p, str)]
    if any(p.startswith("literal[") for p in parts):
        return isinstance(error.get("input"), dict)
    tagged = [i for i, p in enumerate(error["loc"]) if isinstance(p, str) and p.startswith("tagged-union[")]
    return bool(tagged) and tagged[-1] == len(error["loc"]) - 1 and error["type"] in _NOT_A_MAPPING


_NOT_A_MAPPING = ("model_attributes_type", "model_type", "dict_type")


def _clean_loc(loc: tuple) -> tuple:
    """The location without Pydantic's union bookkeeping: member names and a nested tagged union's tag."""
    out: list = []
    skip_tag = False
    for part in loc:
        if skip_tag:
            skip_tag = False
            continue
        if isinstance(part, str) and part.startswith("tagged-union["):
            skip_tag = True  # the next part is the tag ('random_normal'), not a field
        elif not _is_union_member(part):
            out.append(part)
    return tuple(out)


def issues_from_validation_error(exc: ValidationError, data: Any) -> list[Issue]:
    """One Issue per (layer, field), with the layer's index and name and a 'did you mean' where it helps.

    Pydantic's location ('layers', 1, 'Conv2D', 'filters') becomes layer=1, field='filters': the
    discriminated union puts the layer's tag in the location, which is not a field.
    """
    raw_layers = data.get("layers") if isinstance(data, dict) else None
    raw_layers = raw_layers if isinstance(raw_layers, list) else []
    names = layer_names(raw_layers)
    issues: dict[tuple, Issue] = {}
    for error in exc.errors(include_url=False):
        if _wrong_branch(error):
            continue
        loc = _clean_loc(error["loc"])
        layer, prefix = None, ""
        if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
            layer = loc[1]
            tagged = len(loc) >= 3 and (loc[2] in LAYERS_BY_TYPE or loc[2] == BLOCK_TAG)
            rest = loc[3:] if tagged else loc[2:]
            raw = raw_layers[layer] if layer < len(raw_layers) else {}
            kind = raw.get("type") if isinstance(raw, dict) else None
            explicit = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else None
            # A layer of no known type has no default name (it would be a made-up 'layer_1').
            known = isinstance(kind, str) and kind in LAYERS_BY_TYPE
            name = names[layer] if known and layer < len(names) else explicit
            prefix = (use_label(layer, raw) if _item_kind(raw) == BLOCK_TAG else layer_label(layer, kind, name)) + ": "
        else:
            rest = loc
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in rest).replace(".[", "[") or None
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field = f"{field}.type" if field else "type"
        message = prefix + _describe(error, field or "")
        issues.setdefault((layer, field), Issue(message, layer, field))
    return _drop_misspelled_missing(list(issues.values()))


def _drop_misspelled_missing(issues: list[Issue]) -> list[Issue]:
    """A misspelled required field gives 'unknown field filtres (did you mean filters?)' and 'missing filters':
    keep only the first, which says both what is wrong and the fix."""
    suggested = {(i.layer, m.group(1)) for i in issues if (m := re.search(r"did you mean '([^']+)'", i.message))}
    return [
        i
        for i in issues
        if not ("missing required field" in i.message and (i.layer, (i.field or "").rpartition(".")[2]) in suggested)
    ]


# ---- loading ------------------------------------------------------------------------------------


def spec_from_data(data: Any, source: str = "spec") -> Spec:
    """Validate parsed data as a Spec; every problem at once in one SpecError."""
    hint = "Hint: start from one of the specs in specs/ (seed.yaml is the smallest)"
    if data is None:
        raise SpecError(f"{source}: spec is empty; it needs at least input and layers. {hint}")
    if not isinstance(data, dict):
        kind = {list: "a list", str: "plain text"}.get(type(data), f"a {type(data).__name__}")
        raise SpecError(f"{source}: a spec must be a mapping (name: ..., input: ..., layers: ...), not {kind}. {hint}")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(issues_from_validation_error(exc, data)) from None


def load_spec(path: str | Path) -> Spec:
    """Read, parse and validate a spec file (YAML or JSON). Shapes are checked by `analyze`.

    Without a top-level `name`, the model is named after the file (its stem, as `digits` for digits.yaml)."""
    data = read_spec_file(path)
    if isinstance(data, dict) and "name" not in data:
        data = {"name": Path(path).stem[:128] or "model", **data}
    return spec_from_data(data, source=str(path))


def spec_json_schema() -> dict:
    schema = Spec.model_json_schema()
    # A block's layers are checked once their `$param`s are replaced, so the schema gives editors the kinds,
    # names and inputs to complete without refusing `$filters` where a number belongs.
    schema["$defs"]["BlockItem"] = {
        "type": "object",
        "description": "A layer {type: ..., ...} or a block use {block: ..., name: ...}; any value may be $param",
        "properties": {
            "type": {"enum": list(LAYERS_BY_TYPE)},
            "block": {"type": "string"},
            "name": {"type": "string"},
            "inputs": schema["$defs"]["Conv2D"]["properties"]["inputs"],
            "repeat": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_REPEAT}, {"type": "string"}]},
        },
        "anyOf": [{"required": ["type"]}, {"required": ["block", "name"]}],
    }
    schema["$defs"]["BlockDef"]["properties"]["layers"]["items"] = {"$ref": "#/$defs/BlockItem"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cnnspec network spec"
    return schema


def normalized(spec: Spec) -> dict:
    """The spec with every default filled in and every layer named: the form embedded in models."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for layer, model in zip(data["layers"], spec.layers, strict=True):
        # exclude_none also drops a *required* None (Activation's `activation: null`): put it back,
        # so the embedded spec validates again (normalized is a fixed point).
        layer.update({k: None for k, f in type(model).model_fields.items() if f.is_required() and k not in layer})
    for i, model in enumerate(spec.layers):
        if isinstance(model, BlockUse):  # `repeat` (even 1) numbers the copies: keep it only where it was written
            data["layers"][i] = model.model_dump(mode="json", exclude_unset=True)
    for layer, name in zip(data["layers"], layer_names(spec.layers), strict=True):
        layer["name"] = name
    return data


__all__ = ["Spec", "InputSpec", "Preprocess", "Training", "Layer", "load_spec", "spec_from_data", "layer_names"]
