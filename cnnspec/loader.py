"""Strict, safe loading of spec files (YAML or JSON) into plain Python data.

Specs may come from anyone, so the loader refuses what PyYAML and json accept silently:
duplicate keys, anchors/aliases (billion-laughs), tags (`!!python/...`), several documents,
huge integers, deep nesting and oversized files. YAML scalars follow YAML 1.2's core schema,
so `1e-3` is a float, `010` is 10, and `yes`/`on`/`1:30` stay strings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError, UsageError

MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_INT_DIGITS = 18


class _Refused(Exception):
    """Raised inside the parsers; turned into a SpecError with the position."""


def _check_int_text(text: str) -> None:
    if len(text.lstrip("+-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer too large ({len(text)} digits; at most {MAX_INT_DIGITS})")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and the refusals listed in the module docstring."""

    yaml_implicit_resolvers: dict = {}
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(f"anchors/aliases are not allowed (line {event.start_mark.line + 1})")
        if getattr(event, "tag", None) is not None:
            raise _Refused(f"unsupported YAML tag {event.tag!r} (line {event.start_mark.line + 1})")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"spec is nested too deeply (more than {MAX_DEPTH} levels)")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise _Refused(f"mapping keys must be strings, got {key!r} (line {line})")
            if key in first_line:
                raise _Refused(f"duplicate key {key!r} (first at line {first_line[key]}, again at line {line})")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: StrictLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    _check_int_text(text)
    if text.lower().startswith(("0o", "+0o", "-0o")):
        return int(text.replace("o", "").replace("O", ""), 8)
    if text.lower().lstrip("+-").startswith("0x"):
        return int(text, 16)
    return int(text, 10)  # NOTE: YAML 1.1 reads 010 as octal 8; 1.2 (and users) mean 10.


def _construct_float(loader: StrictLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    specials = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}
    return float(specials.get(text, text))


_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")

StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def parse_yaml(text: str) -> Any:
    loader = StrictLoader(text)
    try:
        loader.get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None
        node = loader.compose_document()
        if not loader.check_event(yaml.StreamEndEvent):
            raise _Refused("a spec file must hold exactly one document (found a second '---')")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"duplicate key {key!r}")
        result[key] = value
    return result


def _json_constant(name: str) -> float:
    raise _Refused(f"{name} is not allowed: numbers must be finite")


def _json_int(text: str) -> int:
    _check_int_text(text)
    return int(text)


def parse_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_json_pairs, parse_constant=_json_constant, parse_int=_json_int)


def parse_spec_text(data: bytes, *, json_format: bool, source: str = "spec") -> Any:
    """Parse spec bytes to plain data; every failure is a SpecError naming `source`."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: file is larger than 1 MiB ({len(data):,} bytes); a spec is a few KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text (byte {exc.start}); is this really a spec file?") from None
    try:
        return parse_json(text) if json_format else parse_yaml(text)
    except _Refused as exc:
        raise SpecError(f"{source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source}: YAML syntax error{where}: {exc.problem or exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SpecError(f"{source}: spec is nested too deeply") from None
    # PyYAML also raises plain ValueError/IndexError on some malformed input.
    except (yaml.YAMLError, ValueError, IndexError, TypeError, OverflowError) as exc:
        raise SpecError(f"{source}: cannot parse: {exc}") from None


def read_spec_file(path: str | Path) -> Any:
    """Read and parse a spec file (JSON when it ends in .json, YAML otherwise)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"spec file '{path}' does not exist")
    if path.is_dir():
        raise UsageError(f"spec path '{path}' is a directory")
    if not path.is_file():
        raise UsageError(f"spec path '{path}' is not a regular file")
    with path.open("rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    return parse_spec_text(data, json_format=path.suffix.lower() == ".json", source=str(path))
