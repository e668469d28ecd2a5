"""A Keras model config as a small graph: each layer with the names of the layers it reads.

Both config dialects are read: Keras 3 (`inbound_nodes: [{"args": [<keras tensors>], "kwargs": {}}]`) and
Keras 2 (`inbound_nodes: [[["name", node, tensor, {kwargs}], ...]]`), Sequential and Functional, with nested
models kept as sub-graphs. Only structure is read here; what each layer means is layers.py's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import Issue

MODEL_CLASSES = ("Sequential", "Functional", "Model")


@dataclass
class KLayer:
    name: str
    kind: str
    config: dict
    inputs: list[str]
    module: str | None = None
    registered: str | None = None
    sub: KModel | None = None
    """A nested model, flattened into a block."""


@dataclass
class KModel:
    name: str
    layers: list[KLayer]
    input_names: list[str]
    output_names: list[str]
    input_shape: list[Any] | None = None
    """The batch shape of the input ([None, H, W, C]) where the config says it."""
    issues: list[Issue] = field(default_factory=list)


def parse_model(entry: dict, where: str = "") -> KModel:
    """The graph of a serialized model (`{"class_name": "Sequential" | "Functional", "config": {...}}`)."""
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = str(config.get("name") or entry.get("class_name") or "model")
    raw_layers = config.get("layers")
    if not isinstance(raw_layers, list):
        return KModel(name, [], [], [], issues=[Issue(f"{where}model '{name}' has no layers list in its config")])
    if entry.get("class_name") == "Sequential":
        return _sequential(name, config, raw_layers, where)
    return _functional(name, config, raw_layers, where)


def _layer(raw: Any, inputs: list[str], where: str) -> KLayer:
    raw = raw if isinstance(raw, dict) else {}
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    kind = str(raw.get("class_name", "?"))
    name = str(raw.get("name") or config.get("name") or kind.lower())
    layer = KLayer(name, kind, config, inputs, raw.get("module"), raw.get("registered_name"))
    if kind in MODEL_CLASSES:
        layer.sub = parse_model(raw, f"{where}{name}.")
    return layer


def _sequential(name: str, config: dict, raw_layers: list, where: str) -> KModel:
    layers: list[KLayer] = []
    input_shape = config.get("build_input_shape")
    previous = "__input__"
    input_names = [previous]
    for raw in raw_layers:
        layer = _layer(raw, [previous], where)
        if layer.kind == "InputLayer":
            input_shape = layer.config.get("batch_shape") or layer.config.get("batch_input_shape")
            input_names = [layer.name]
            previous = layer.name
            continue
        if not layers and input_shape is None:  # Keras 2: the first layer carries the input's shape
            input_shape = layer.config.get("batch_input_shape")
        layer.inputs = [previous]
        layers.append(layer)
        previous = layer.name
    if input_names == ["__input__"] or (layers and layers[0].inputs == ["__input__"]):
        input_names = ["__input__"]
    return KModel(name, layers, input_names, [previous], input_shape)


def _functional(name: str, config: dict, raw_layers: list, where: str) -> KModel:
    issues: list[Issue] = []
    layers: list[KLayer] = []
    input_shape = None
    for raw in raw_layers:
        nodes = raw.get("inbound_nodes", []) if isinstance(raw, dict) else []
        nodes = nodes if isinstance(nodes, list) else []
        layer = _layer(raw, [], where)
        if len(nodes) > 1:
            issues.append(Issue(
                f"layer '{where}{layer.name}' ({layer.kind}) is called {len(nodes)} times (shared weights); cnnspec "
                "gives every layer its own weights. Hint: use separate layers"
            ))  # fmt: skip
        refs: list[tuple[str, int, int]] = []
        kwargs: dict = {}
        if nodes:
            refs, kwargs = _node_refs(nodes[0])
        for ref, _node, tensor in refs:
            if tensor != 0:
                issues.append(Issue(f"layer '{where}{layer.name}' reads output {tensor} of '{ref}'; cnnspec layers "
                                    "have one output"))  # fmt: skip
        extra = {k: v for k, v in kwargs.items() if v is not None and k not in ("mask", "training")}
        if extra:
            issues.append(Issue(f"layer '{where}{layer.name}' ({layer.kind}) is called with arguments "
                                f"{', '.join(sorted(extra))}, which cnnspec does not support"))  # fmt: skip
        layer.inputs = [ref for ref, _, _ in refs]
        if layer.kind == "InputLayer":
            input_shape = layer.config.get("batch_shape") or layer.config.get("batch_input_shape")
        layers.append(layer)
    return KModel(
        name,
        layers,
        _endpoints(config.get("input_layers")),
        _endpoints(config.get("output_layers")),
        input_shape,
        issues,
    )


def _endpoints(value: Any) -> list[str]:
    """`input_layers`/`output_layers`: [name, 0, 0] (Keras 3, one tensor) or [[name, 0, 0], ...]."""
    if not isinstance(value, list) or not value:
        return []
    if isinstance(value[0], str):
        return [value[0]]
    return [str(v[0]) for v in value if isinstance(v, list) and v]


def _node_refs(node: Any) -> tuple[list[tuple[str, int, int]], dict]:
    """The (layer, node index, tensor index) a call reads, and its keyword arguments."""
    if isinstance(node, dict):  # Keras 3
        refs: list[tuple[str, int, int]] = []
        _tensors(node.get("args", []), refs)
        kwargs = node.get("kwargs") if isinstance(node.get("kwargs"), dict) else {}
        nested: list[tuple[str, int, int]] = []
        _tensors(list(kwargs.values()), nested)
        if nested:
            kwargs = {**kwargs, "tensor arguments": True}
        return refs, kwargs
    if isinstance(node, list):  # Keras 2
        refs, kwargs = [], {}
        for item in node:
            if isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str):
                refs.append((item[0], int(item[1]), int(item[2])))
                if len(item) > 3 and isinstance(item[3], dict):
                    kwargs.update(item[3])
        return refs, kwargs
    return [], {}


def _tensors(value: Any, out: list[tuple[str, int, int]]) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = (value.get("config") or {}).get("keras_history") or ["?", 0, 0]
            out.append((str(history[0]), int(history[1]), int(history[2])))
            return
        for child in value.values():
            _tensors(child, out)
    elif isinstance(value, list):
        for child in value:
            _tensors(child, out)
