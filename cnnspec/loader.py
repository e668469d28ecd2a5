"""Strict, safe loading of spec files (YAML or JSON) into plain Python data.

Specs may come from anyone, so the loader refuses what PyYAML and json accept silently:
duplicate keys, anchors/aliases (billion-laughs), tags (`!!python/...`), several documents,
huge integers, deep nesting and oversized files. YAML scalars follow YAML 1.2's core schema,
so `1e-3` is a float, `010` is 10, and `yes`/`on`/`1:30` stay strings.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import os
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
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)

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


def _json_constant(name: str) -> float:
    raise _Refused(f"{name} is not allowed: numbers must be finite")


def _json_int(text: str) -> int:
    _check_int_text(text)
    return int(text)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _StrictJSONDecoder(json.JSONDecoder):
    """json.JSONDecoder that refuses duplicate keys (with both line numbers) and deep nesting.

    NOTE: the C scanner cannot report where an object starts, so this uses the pure-Python scanner;
    specs are capped at 1 MiB, which it parses in well under a second.
    """

    def __init__(self) -> None:
        super().__init__(parse_constant=_json_constant, parse_int=_json_int)
        self._depth = 0
        self.parse_object = self._object
        self.parse_array = self._array
        self.scan_once = json.scanner.py_make_scanner(self)

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"spec is nested too deeply (more than {MAX_DEPTH} levels)")

    def _array(self, s_and_end: tuple[str, int], scan_once: Any) -> tuple[list, int]:
        self._enter()
        try:
            return json.decoder.JSONArray(s_and_end, scan_once)
        finally:
            self._depth -= 1

    def _object(self, s_and_end: tuple[str, int], strict: bool, scan_once: Any, hook: Any, _pairs: Any, memo: Any):
        text, start = s_and_end
        self._enter()
        try:
            pairs_hook = lambda pairs: self._unique(pairs, text, start)  # noqa: E731
            return json.decoder.JSONObject(s_and_end, strict, scan_once, hook, pairs_hook, memo)
        finally:
            self._depth -= 1

    def _unique(self, pairs: list[tuple[str, Any]], text: str, start: int) -> dict:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                first, again = self._key_lines(text, start, key)[:2]
                raise _Refused(f"duplicate key {key!r} (first at line {first}, again at line {again})")
            result[key] = value
        return result

    def _key_lines(self, text: str, pos: int, key: str) -> list[int]:
        """Lines of `key` among the keys of the (valid) object whose body starts at `pos`."""
        lines = []
        pos = _skip_ws(text, pos)
        while pos < len(text) and text[pos] == '"':
            name, after = json.decoder.scanstring(text, pos + 1)
            if name == key:
                lines.append(text.count("\n", 0, pos) + 1)
            _, pos = self.scan_once(text, _skip_ws(text, _skip_ws(text, after) + 1))  # skip ':' and the value
            pos = _skip_ws(text, pos)
            pos = _skip_ws(text, pos + 1) if pos < len(text) and text[pos] == "," else pos
        return lines


def parse_json(text: str) -> Any:
    return _StrictJSONDecoder().decode(text)


def _check_strings(data: Any) -> None:
    """Refuse lone surrogates (from escapes like \\ud800): they cannot be printed or written as UTF-8."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused(f"text {value[:40]!r} holds an invalid escape (a lone UTF-16 surrogate)") from None
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def parse_spec_text(data: bytes, *, json_format: bool, source: str = "spec", size: int | None = None) -> Any:
    """Parse spec bytes to plain data; every failure is a SpecError naming `source`.

    `size` is the file's real size when `data` holds only its first MAX_SPEC_BYTES + 1 bytes.
    """
    if len(data) > MAX_SPEC_BYTES:
        size = max(size or 0, len(data))
        raise SpecError(f"{source}: file is larger than 1 MiB ({size:,} bytes); a spec is a few KiB")
    try:
        text = data.decode("utf-8-sig")  # an editor's byte-order mark is harmless
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text (byte {exc.start}); is this really a spec file?") from None
    try:
        parsed = parse_json(text) if json_format else parse_yaml(text)
        _check_strings(parsed)
        return parsed
    except _Refused as exc:
        raise SpecError(f"{source}: {exc}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError(f"{source}: character {char} at line {line} is not allowed in YAML text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if "'\\t'" in str(exc.problem) and mark is not None:
            raise SpecError(
                f"{source}: YAML indents with spaces, not tabs: line {mark.line + 1} has a tab. "
                "Hint: replace the tab with spaces (set your editor to insert spaces)"
            ) from None
        raise SpecError(f"{source}: YAML syntax error{where}: {exc.problem or exc}") from None
    except json.JSONDecodeError as exc:
        if _json_comment_at(text, exc.pos):
            raise SpecError(
                f"{source}: JSON has no comments (line {exc.lineno}): remove them, or write the spec as YAML "
                "(.yaml), where # starts a comment"
            ) from None
        raise SpecError(f"{source}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SpecError(f"{source}: spec is nested too deeply") from None
    # PyYAML also raises plain ValueError/IndexError on some malformed input.
    except (yaml.YAMLError, ValueError, IndexError, TypeError, OverflowError, KeyError) as exc:
        raise SpecError(f"{source}: cannot parse: {' '.join(str(exc).split())}") from None


def _json_comment_at(text: str, pos: int) -> bool:
    """Whether a JSON syntax error sits on a // or /* comment (or a # one) that JSON does not allow."""
    rest = text[pos:].lstrip()
    return rest.startswith(("//", "/*", "#"))


def read_spec_file(path: str | Path) -> Any:
    """Read and parse a spec file (JSON when it ends in .json, YAML otherwise)."""
    path = Path(path)
    try:
        if not path.exists():
            raise UsageError(f"spec file '{path}' does not exist")
        if path.is_dir():
            raise UsageError(f"spec path '{path}' is a directory")
        if not path.is_file():  # a FIFO or /dev/zero would block or never end
            raise UsageError(f"spec path '{path}' is not a regular file")
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read spec '{path}': {exc.strerror or exc}") from None
    return parse_spec_text(data, json_format=path.suffix.lower() == ".json", source=str(path), size=size)
