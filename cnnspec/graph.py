"""The network as a graph: blocks expanded, references resolved, nodes in topological order.

Built once from a validated spec and read by everything after it (shape analysis, the summary, lowering,
initial weights, the train-step program, checkpoints); nothing else walks `spec.layers`. Pure Python over
Pydantic models, so `cnnspec validate` stays fast.

A chain is the special case where every layer reads the previous item: its nodes are its layers, in order,
under the same names, so sequential specs compile exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import Issue
from .layers import Layer
from .spec import BlockDef, BlockUse, LayerItem, Spec, _suggest, issues_from_validation_error, layer_label, layer_names

INPUT = "input"
"""The reserved name of the model input."""
MAX_NODES = 5000
USE_KEYS = tuple(BlockUse.model_fields)  # block, name, inputs, repeat
MAX_DEPTH = 8


@dataclass(frozen=True)
class Origin:
    """Where the file wrote a node: the top-level `layers[index]` and, for messages, the path to it,
    e.g. "layers[7] block 'basic' 'layer2' (copy 1) -> layers[5] Add 'add'"."""

    index: int
    label: str


@dataclass(frozen=True)
class Node:
    name: str
    """Expanded name: 'stem', or 'layer1.0.conv1' inside a block use (dots join the scopes)."""
    layer: Layer
    inputs: tuple[str, ...]
    """Names of the producing nodes, or INPUT."""
    origin: Origin


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    """Topological order, ties broken by spec order: a chain keeps its order."""
    output: str

    def consumers(self, name: str) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes if name in n.inputs)

    @property
    def is_chain(self) -> bool:
        previous = INPUT
        for node in self.nodes:
            if node.inputs != (previous,):
                return False
            previous = node.name
        return True


class _Items(BaseModel):
    """A block's layers, validated after `$param` substitution (through the same union as the spec's)."""

    layers: list[LayerItem]


@dataclass
class _Scope:
    """One list of items being expanded: the spec's `layers` or one copy of a block."""

    prefix: str
    sources: dict[str, str]
    """Visible input names -> tensors: {'input': 'input'} at the top, the block's inputs inside one."""
    trail: tuple[str, ...]
    index: int | None
    """The top-level item this scope sits in (None at the top level)."""
    stack: tuple[str, ...]
    """Blocks being expanded, outermost first (recursion and depth checks)."""


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.blocks: dict[str, BlockDef] = dict(spec.blocks or {})
        self.nodes: list[Node] = []
        self.issues: list[Issue] = []
        self.too_big = False
        self.unresolved = 0

    def issue(self, scope: _Scope, index: int, label: str | None, message: str, field: str | None = None) -> None:
        where = " -> ".join((*scope.trail, label) if label else scope.trail)
        self.issues.append(Issue(f"{where}: {message}", scope.index if scope.index is not None else index, field))

    def expand(self, items: list[Any], scope: _Scope) -> str | None:
        """Add the nodes of `items`; return the tensor of the last item (None where it could not be built)."""
        names = layer_names(items)
        explicit = {getattr(item, "name", None): i for i, item in enumerate(items) if getattr(item, "name", None)}
        visible: dict[str, str | None] = dict(scope.sources)
        producer: dict[str, int] = {name: -1 - k for k, name in enumerate(scope.sources)}
        used: set[int] = set()
        previous: tuple[str | None, int] = (next(iter(scope.sources.values())), -1)
        self._check_names(items, names, scope)
        unresolved = self.unresolved
        for i, item in enumerate(items):
            label = self._label(i, item, names[i])
            refs = self._resolve(item, i, label, names, explicit, visible, producer, previous, scope, used)
            if isinstance(item, BlockUse):
                out = self._use(item, i, label, refs, scope)
            else:
                out = self._layer(item, i, label, names[i], refs, scope)
            if item.name is not None:
                visible[item.name] = out
                producer[item.name] = i
            previous = (out, i)
            if self.too_big:
                return None
        if self.unresolved > unresolved:
            return previous[0]  # a mistyped reference also leaves its target unused: report only the reference
        for i, item in enumerate(items[:-1]):
            if i not in used:
                hint = "use it in a later layer's inputs (give it name: and list it), or remove it"
                self.issue(
                    scope, i, self._label(i, item, names[i]), f"output of '{names[i]}' is never used. Hint: {hint}"
                )
        for k, name in enumerate(scope.sources):
            if -1 - k not in used and scope.index is not None:
                self.issue(scope, 0, None,
                           f"the block's input '{name}' is never used. Hint: read it in inputs: [...], or drop it "
                           "from the block's inputs")  # fmt: skip
        return previous[0]

    @staticmethod
    def _label(i: int, item: Any, name: str) -> str:
        if isinstance(item, BlockUse):
            return f"layers[{i}] block '{item.block}' '{item.name}'"
        return layer_label(i, item.type, name)

    def _check_names(self, items: list[Any], names: list[str], scope: _Scope) -> None:
        seen: dict[str, int] = {}
        for i, (item, name) in enumerate(zip(items, names, strict=True)):
            if name in scope.sources and getattr(item, "name", None) == name:
                what = "the model input" if scope.index is None else "an input of the block"
                self.issue(scope, i, self._label(i, item, name),
                           f"'{name}' is the name of {what}. Hint: give the layer another name", "name")  # fmt: skip
            elif name in seen:
                message = f"duplicate layer name '{name}' (also layers[{seen[name]}])"
                message += ". Hint: give each layer its own name"
                self.issue(scope, i, self._label(i, item, name), message, "name")
            seen.setdefault(name, i)

    def _resolve(self, item, i, label, names, explicit, visible, producer, previous, scope, used) -> list[str] | None:
        """The tensors `item` reads: its `inputs` by name, else the previous item's output."""
        if item.inputs is None:
            used.add(previous[1])
            return None if previous[0] is None else [previous[0]]
        tensors: list[str] | None = []
        for ref in item.inputs:
            problem = None
            if ref in visible:
                used.add(producer[ref])
                tensor = visible[ref]
                if tensor is None:
                    tensors = None  # its producer failed and was reported
                elif tensors is not None:
                    tensors.append(tensor)
                continue
            if ref in explicit:
                problem = (
                    f"inputs: '{ref}' is defined later (layers[{explicit[ref]}]); a layer can only read earlier ones"
                )
                if explicit[ref] == i:
                    problem = f"inputs: a layer cannot read its own output ('{ref}')"
            elif ref in names[:i]:
                problem = (f"inputs: '{ref}' is a generated name, which moves when a layer is inserted. "
                           f"Hint: give that layer name: {ref}")  # fmt: skip
            else:
                choices = [n for n in visible if n is not None]
                where = (
                    "the model input 'input' or an earlier named layer"
                    if scope.index is None
                    else (
                        "the block's inputs (" + ", ".join(scope.sources) + ") or an earlier named layer of the block"
                    )
                )
                problem = f"inputs: unknown name '{ref}'{_suggest(ref, choices)}. Hint: inputs name {where}"
            self.issue(scope, i, label, problem, "inputs")
            self.unresolved += 1
            tensors = None
        return tensors

    def _layer(self, layer: Layer, i: int, label: str, name: str, refs: list[str] | None, scope: _Scope) -> str | None:
        if refs is None:
            return None
        if len(self.nodes) >= MAX_NODES:
            self._stop(scope, i, label)
            return None
        node = Node(scope.prefix + name, layer, tuple(refs), Origin(scope.index if scope.index is not None else i,
                                                                    " -> ".join((*scope.trail, label))))  # fmt: skip
        self.nodes.append(node)
        return node.name

    def _stop(self, scope: _Scope, i: int, label: str) -> None:
        if not self.too_big:
            self.too_big = True
            self.issue(scope, i, label, f"the spec expands to more than {MAX_NODES:,} layers. Hint: fewer repeats "
                       "or smaller blocks")  # fmt: skip

    def _use(self, use: BlockUse, i: int, label: str, refs: list[str] | None, scope: _Scope) -> str | None:
        block = self.blocks.get(use.block)
        problem = None
        if block is None:
            known = ", ".join(self.blocks) or "none; define them under blocks:"
            problem = (f"unknown block '{use.block}'{_suggest(use.block, list(self.blocks))}. Hint: the blocks are "
                       f"{known}", "block")  # fmt: skip
        elif use.block in scope.stack:
            problem = (f"block '{use.block}' uses itself (through {' -> '.join((*scope.stack, use.block))}). "
                       "Hint: a block may only use other blocks", "block")  # fmt: skip
        elif len(scope.stack) >= MAX_DEPTH:
            problem = f"blocks are nested more than {MAX_DEPTH} deep. Hint: flatten some of them", "block"
        elif "repeat" in use.model_fields_set and len(block.inputs) > 1:
            problem = (f"repeat: {use.repeat} chains copies, so the block needs one input, but '{use.block}' has "
                       f"{len(block.inputs)} ({', '.join(block.inputs)}). Hint: write the copies out",
                       "repeat")  # fmt: skip
        elif use.inputs is not None and len(use.inputs) != len(block.inputs):
            problem = (f"block '{use.block}' takes {len(block.inputs)} input(s) ({', '.join(block.inputs)}), got "
                       f"{len(use.inputs)}. Hint: inputs: [{', '.join(block.inputs)}] with names of earlier layers",
                       "inputs")  # fmt: skip
        elif use.inputs is None and len(block.inputs) > 1:
            problem = (f"block '{use.block}' takes {len(block.inputs)} inputs ({', '.join(block.inputs)}). "
                       "Hint: list them in inputs: [...]", "inputs")  # fmt: skip
        if problem is not None:
            self.issue(scope, i, label, *problem)
            return None
        items = self._instantiate(use, block, i, label, scope)
        if items is None or refs is None:
            return None
        tensors: list[str] = refs
        indexed = "repeat" in use.model_fields_set
        before = len(self.issues)
        for k in range(use.repeat):
            copy = f" (copy {k})" if indexed else ""
            inner = _Scope(
                prefix=f"{scope.prefix}{use.name}." + (f"{k}." if indexed else ""),
                sources=dict(zip(block.inputs, tensors, strict=True)),
                trail=(*scope.trail, label + copy),
                index=scope.index if scope.index is not None else i,
                stack=(*scope.stack, use.block),
            )
            out = self.expand(items, inner)
            if out is None or len(self.issues) > before:
                return None  # every copy would repeat the same problem: one report is enough
            tensors = [out]
        return tensors[0]

    def _instantiate(self, use: BlockUse, block: BlockDef, i: int, label: str, scope: _Scope) -> list[Any] | None:
        """The block's layers with `$param` replaced by this use's values, validated; None after an issue."""
        declared = [*block.params, *(k for k in block.defaults if k not in block.params)]
        args = use.arguments
        problems = [
            (
                f"unknown parameter '{key}' of block '{use.block}'{_suggest(key, [*declared, *USE_KEYS])}. Hint: its "
                "parameters are "
                f"{', '.join(declared) or 'none'}",
                key,
            )  # fmt: skip
            for key in args
            if key not in declared
        ]
        problems += [
            (f"missing parameter '{key}' of block '{use.block}'. Hint: add {key}: ... to the use", key)
            for key in block.params
            if key not in args and key not in block.defaults
        ]
        values = {**block.defaults, **args}
        unknown: list[str] = []
        raw = [_substitute(layer, values, unknown) for layer in block.layers]
        problems += [
            (
                f"block '{use.block}' refers to ${ref}, which it does not declare{_suggest(ref, declared)}. Hint: add "
                f"'{ref}' to its params",
                None,
            )  # fmt: skip
            for ref in dict.fromkeys(unknown)
            if ref not in declared  # a declared one without a value was reported as missing
        ]
        for message, field in problems:
            self.issue(scope, i, label, message, field)
        if problems:
            return None
        try:
            return list(_Items.model_validate({"layers": raw}).layers)
        except ValidationError as exc:
            where = " -> ".join((*scope.trail, label))
            top = scope.index if scope.index is not None else i
            for found in issues_from_validation_error(exc, {"layers": raw}):
                self.issues.append(Issue(f"{where} -> {found.message}", top, found.field))
            return None


def _substitute(value: Any, values: dict[str, Any], unknown: list[str]) -> Any:
    """`$name` -> the parameter's value, keeping its type (int, list, string, ...), at any depth."""
    if isinstance(value, str) and value.startswith("$") and len(value) > 1:
        if value[1:] in values:
            return values[value[1:]]
        unknown.append(value[1:])
        return value
    if isinstance(value, list):
        return [_substitute(v, values, unknown) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, values, unknown) for k, v in value.items()}
    return value


def expanded_size(spec: Spec) -> int:
    """How many layers the spec expands to, counted on the block definitions with each use's parameter values
    (nothing is built), so a block bomb (nested repeats, also through `repeat: $n`) is refused before any work.
    The count stops as soon as it passes the cap; every item adds at least 1, so it stays cheap."""
    blocks = spec.blocks or {}

    def size_of(items: list[Any], values: dict[str, Any], stack: tuple[str, ...]) -> int:
        total = 0
        for item in items:
            raw = item if isinstance(item, dict) else item.model_dump(exclude_unset=True)
            block = raw.get("block")
            if not isinstance(block, str) or block not in blocks or block in stack or len(stack) >= MAX_DEPTH:
                total += 1
                continue
            args = _substitute({k: v for k, v in raw.items() if k not in USE_KEYS}, values, [])
            repeat = _substitute(raw.get("repeat", 1), values, [])
            repeat = repeat if isinstance(repeat, int) and not isinstance(repeat, bool) and repeat > 0 else 1
            inner = {**blocks[block].defaults, **args}
            total += repeat * size_of(blocks[block].layers, inner, (*stack, block))
            if total > MAX_NODES:
                return total
        return total

    return size_of(list(spec.layers), {}, ())


def build_graph(spec: Spec) -> tuple[Graph, list[Issue]]:
    """Expand the blocks, resolve every reference and collect every problem as an Issue (all at once)."""
    size = expanded_size(spec)
    if size > MAX_NODES:
        message = (f"the spec expands to more than {MAX_NODES:,} layers (blocks and repeats multiply). Hint: fewer "
                   "repeats or smaller blocks")  # fmt: skip
        return Graph((), INPUT), [Issue(message, None, "layers")]
    builder = _Builder(spec)
    top = _Scope(prefix="", sources={INPUT: INPUT}, trail=(), index=None, stack=())
    output = builder.expand(list(spec.layers), top)
    return Graph(tuple(builder.nodes), output or INPUT), builder.issues


def param_name(node: str, key: str) -> str:
    """A parameter's full name, as in a PyTorch state dict: 'layer1.0.conv1.weight'."""
    return f"{node}.{key}"
