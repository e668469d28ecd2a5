"""A parsed Keras model as spec data: names, wiring, blocks for nested models, and the preprocessing.

The spec reads like a hand-written one: a chain has no `inputs:` and no names where Keras's default names
are cnnspec's too; a layer gets `name:` only where the graph refers to it or where its Keras name differs from
the name cnnspec would give it. Nested models become blocks, used once under their own name, so their
layers' weights are `<model>.<layer>.weight` (dotted names). InputLayer and Activation('linear') vanish,
and a leading Rescaling/Normalization becomes `preprocess:`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import Issue
from ..spec import layer_names
from .archive import KerasFile
from .layers import cnnspec_kind, convert_args, refusal
from .topology import KLayer, KModel

TOP_INPUT, BLOCK_INPUT = "input", "in"
RESERVED = (TOP_INPUT, BLOCK_INPUT)
KERAS_EPSILON = 1e-7  # Normalization divides by max(sqrt(variance), epsilon)


@dataclass
class Origin:
    """Where a cnnspec layer came from: its Keras layer and the key of its weights."""

    layer: KLayer
    weights_key: str


@dataclass
class Conversion:
    data: dict
    origins: dict[str, Origin] = field(default_factory=dict)
    """Expanded cnnspec layer name ('block.conv2d') -> its Keras layer."""
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def convert(model: KModel, source: KerasFile, labels: list[str] | None) -> Conversion:
    conv = Conversion({})
    shape = _input_shape(model, conv)
    affine = _Affine(shape[2] if shape else 1)
    blocks: dict[str, dict] = {}
    items = _Scope(conv, source, blocks, "", "").convert(model, TOP_INPUT, affine)
    conv.data = {"name": _spec_name(model.name), "input": {"shape": shape or [1, 1, 1]}}
    if labels is not None:
        conv.data["labels"] = labels
    if not affine.identity:
        conv.data["preprocess"] = affine.preprocess()
    if blocks:
        conv.data["blocks"] = blocks
    conv.data["layers"] = items
    return conv


def _input_shape(model: KModel, conv: Conversion) -> list[int] | None:
    shape = model.input_shape
    if not isinstance(shape, list) or not shape:
        conv.issues.append(Issue("the model's input shape is not in its config. Hint: build it with "
                                 "keras.Input(shape=(H, W, C)) before saving"))  # fmt: skip
        return None
    dims = shape[1:]
    if len(dims) != 3 or not all(isinstance(d, int) and d >= 1 for d in dims):
        shown = ", ".join("None" if d is None else str(d) for d in dims)
        conv.issues.append(Issue(
            f"the input is ({shown}); cnnspec takes one image of fixed size (height, width, channels). Hint: build "
            "the model with keras.Input(shape=(H, W, C))"
        ))  # fmt: skip
        return None
    return [int(d) for d in dims]


def _spec_name(name: str) -> str:
    return (name or "imported")[:128]


class _Affine:
    """x * a + b per channel: what a leading Rescaling/Normalization does, folded."""

    def __init__(self, channels: int) -> None:
        self.a = [1.0] * channels
        self.b = [0.0] * channels

    @property
    def identity(self) -> bool:
        return all(a == 1 for a in self.a) and all(b == 0 for b in self.b)

    def rescale(self, scale: list[float], offset: list[float]) -> None:
        self.a = [a * s for a, s in zip(self.a, _per_channel(scale, len(self.a)), strict=True)]
        self.b = [b * s + o for b, s, o in zip(self.b, _per_channel(scale, len(self.b)),
                                              _per_channel(offset, len(self.b)), strict=True)]  # fmt: skip

    def normalize(self, mean: list[float], variance: list[float]) -> None:
        sd = [max(math.sqrt(max(v, 0.0)), KERAS_EPSILON) for v in _per_channel(variance, len(self.a))]
        mean = _per_channel(mean, len(self.a))
        self.a = [a / s for a, s in zip(self.a, sd, strict=True)]
        self.b = [(b - m) / s for b, m, s in zip(self.b, mean, sd, strict=True)]

    def preprocess(self) -> dict:
        """cnnspec's x * scale, then (x - mean) / std, equal to x * a + b."""
        if len(set(self.a)) == 1:
            return _compact({"scale": self.a[0], "mean": [-b for b in self.b], "std": [1.0]})
        return _compact({"scale": 1.0, "mean": [-b / a for a, b in zip(self.a, self.b, strict=True)],
                         "std": [1.0 / a for a in self.a]})  # fmt: skip


def _per_channel(value: Any, channels: int) -> list[float]:
    values = [float(v) for v in (value if isinstance(value, list) else [value])]
    return values * channels if len(values) == 1 else values


def _compact(p: dict) -> dict:
    out: dict[str, Any] = {}
    if p["scale"] != 1.0:
        out["scale"] = p["scale"]
    for key, neutral in (("mean", 0.0), ("std", 1.0)):
        values = p[key]
        if len(set(values)) == 1:
            values = [values[0]]
        if values != [neutral]:
            out[key] = values if len(values) > 1 else values[0]
    return out


def _flat(value: Any) -> list[float]:
    out: list[float] = []
    if isinstance(value, list):
        for v in value:
            out += _flat(v)
    elif isinstance(value, (int, float)):
        out.append(float(value))
    else:
        import numpy as np

        out += [float(v) for v in np.asarray(value).reshape(-1)]
    return out


class _Scope:
    """One model (the top one or a nested one) converted to a list of spec items."""

    def __init__(self, conv: Conversion, source: KerasFile, blocks: dict, prefix: str, keras_prefix: str) -> None:
        self.conv, self.source, self.blocks = conv, source, blocks
        self.prefix, self.keras_prefix = prefix, keras_prefix
        self.alias: dict[str, str] = {}
        self.taken: set[str] = set(RESERVED)

    def issue(self, layer: KLayer, message: str) -> None:
        self.conv.issues.append(Issue(f"layer '{self.keras_prefix}{layer.name}' ({layer.kind}): {message}"))

    def convert(self, model: KModel, scope_input: str, affine: _Affine | None) -> list[dict]:
        self.conv.issues += model.issues
        where = f"model '{model.name}'"
        if len(model.input_names) != 1:
            self.conv.issues.append(Issue(f"{where} has {len(model.input_names)} inputs; cnnspec models take one "
                                          "image"))  # fmt: skip
        if len(model.output_names) != 1:
            self.conv.issues.append(Issue(f"{where} has {len(model.output_names)} outputs; cnnspec models have "
                                          "one. Hint: import a model per output"))  # fmt: skip
        if len(model.input_names) != 1 or len(model.output_names) != 1:
            return []
        self.alias[model.input_names[0]] = scope_input
        layers = _in_order(model)
        if affine is not None:
            layers = self._preprocess(layers, scope_input, affine)
        items: list[dict] = []
        for layer in layers:
            item = self._item(layer)
            if item is not None:
                items.append(item)
        output = self.alias.get(model.output_names[0])
        if items and output is not None and output != items[-1]["name"]:  # an aliased output (a linear tail)
            items.append({"type": "Identity", "name": self._name("identity"), "_refs": [output]})
        return _finish(items, scope_input)

    def _preprocess(self, layers: list[KLayer], scope_input: str, affine: _Affine) -> list[KLayer]:
        """Fold leading Rescaling/Normalization layers (the only readers of the input) into x * a + b."""
        for layer in layers:
            if layer.kind == "InputLayer":
                self.alias[layer.name] = scope_input
        layers = [layer for layer in layers if layer.kind != "InputLayer"]
        while layers:
            layer = layers[0]
            readers = [other for other in layers if any(self.alias.get(r) == scope_input for r in other.inputs)]
            if readers != [layer] or len(layer.inputs) != 1:
                break
            if layer.kind == "Rescaling" and refusal(layer) is None and not convert_args(layer)[1]:
                affine.rescale(_flat(layer.config.get("scale", 1.0)), _flat(layer.config.get("offset", 0.0)))
            elif layer.kind == "Normalization" and not layer.config.get("invert"):
                stats = self._normalization_stats(layer)
                if stats is None:
                    break
                affine.normalize(*stats)
            else:
                break
            self.alias[layer.name] = scope_input
            layers = layers[1:]
        return layers

    def _normalization_stats(self, layer: KLayer) -> tuple[list[float], list[float]] | None:
        config = layer.config
        if config.get("axis", -1) not in (-1, [-1], 3, [3]):
            return None
        if config.get("mean") is not None and config.get("variance") is not None:
            return _flat(config["mean"]), _flat(config["variance"])
        arrays = self.source.weights.get(self.keras_prefix + layer.name, [])
        if len(arrays) < 2:
            return None
        return _flat(arrays[0]), _flat(arrays[1])

    def _item(self, layer: KLayer) -> dict | None:
        refs = [self.alias.get(r) for r in layer.inputs]
        if layer.kind == "InputLayer":
            self.alias[layer.name] = refs[0] if refs and refs[0] else TOP_INPUT
            return None
        if any(r is None for r in refs) or not refs:
            self.issue(layer, "reads a tensor that is not another layer's output")
            return None
        if layer.sub is not None:
            return self._block(layer, refs)
        why = refusal(layer)
        if why is not None:
            self.issue(layer, why)
            self.alias[layer.name] = refs[0]  # its readers are checked as if it were not there
            return None
        args, problems, warnings = convert_args(layer)
        for problem in problems:
            self.issue(layer, problem)
        for warning in warnings:
            self.conv.warnings.append(f"layer '{self.keras_prefix}{layer.name}' ({layer.kind}): {warning}")
        if layer.kind == "Activation" and "activation" not in args:  # linear: the identity
            self.alias[layer.name] = refs[0]
            return None
        name = self._name(layer.name)
        self.alias[layer.name] = name
        self.conv.origins[self.prefix + name] = Origin(layer, self.keras_prefix + layer.name)
        return {"type": cnnspec_kind(layer), "name": name, "_refs": refs, "_keras": layer.name, **args}

    def _block(self, layer: KLayer, refs: list[str]) -> dict | None:
        name = self._name(layer.name)
        block_name = name
        while block_name in self.blocks:
            block_name += "_"
        prefixes = f"{self.prefix}{name}.", f"{self.keras_prefix}{layer.name}."
        inner = _Scope(self.conv, self.source, self.blocks, *prefixes)
        assert layer.sub is not None
        items = inner.convert(layer.sub, BLOCK_INPUT, None)
        if not items:
            return None
        self.blocks[block_name] = {"layers": items}
        self.alias[layer.name] = name
        return {"block": block_name, "name": name, "_refs": refs, "_keras": layer.name}

    def _name(self, keras_name: str) -> str:
        """A valid cnnspec name (letters, digits, '_', '-'; at most 64), unique in this scope."""
        name = re.sub(r"[^A-Za-z0-9_-]", "_", keras_name)[:60] or "layer"
        base, n = name, 1
        while name in self.taken:
            name = f"{base}_{n}"
            n += 1
        self.taken.add(name)
        return name


def _in_order(model: KModel) -> list[KLayer]:
    """The layers that lead to the output, in the config's order, the output layer last."""
    by_name = {layer.name: layer for layer in model.layers}
    needed: set[str] = set()
    stack = list(model.output_names)
    while stack:
        name = stack.pop()
        if name in needed or name not in by_name:
            continue
        needed.add(name)
        stack += by_name[name].inputs
    ordered = [layer for layer in model.layers if layer.name in needed]
    output = model.output_names[0]
    return [layer for layer in ordered if layer.name != output] + [layer for layer in ordered if layer.name == output]


def _finish(items: list[dict], scope_input: str) -> list[dict]:
    """Drop `inputs:` where a layer reads the previous item, and `name:` where cnnspec's default name is the
    same and nothing refers to it by name."""
    previous = scope_input
    referenced: set[str] = set()
    for item in items:
        refs = item.pop("_refs")
        if refs != [previous]:
            item["inputs"] = refs[0] if len(refs) == 1 else refs
            referenced.update(r for r in refs if r != scope_input)
        previous = item["name"]
    keep = {i for i, item in enumerate(items) if "block" in item or item["name"] in referenced}
    while True:
        trial = [item if i in keep else {k: v for k, v in item.items() if k != "name"} for i, item in enumerate(items)]
        names = layer_names(trial)
        wrong = {i for i, item in enumerate(items) if i not in keep and names[i] != item["name"]}
        if not wrong:
            break
        keep |= wrong
    out = []
    for i, item in enumerate(items):
        item.pop("_keras", None)
        ordered = {"type": item.pop("type")} if "type" in item else {"block": item.pop("block")}
        name = item.pop("name")
        if i in keep:
            ordered["name"] = name
        if "inputs" in item:
            ordered["inputs"] = item.pop("inputs")
        ordered.update(item)
        out.append(ordered)
    return out
