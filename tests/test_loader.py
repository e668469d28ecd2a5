"""The strict spec loader: YAML 1.2 scalars, refusals (aliases, tags, documents, duplicates, size, depth,
huge integers, bad text) and the rule that every parser failure becomes a SpecError, never a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnspec.errors import SpecError, UsageError
from cnnspec.loader import MAX_DEPTH, MAX_SPEC_BYTES, parse_spec_text, read_spec_file


def load(text: str | bytes, json_format: bool = False):
    data = text.encode() if isinstance(text, str) else text
    return parse_spec_text(data, json_format=json_format, source="spec.yaml")


def refused(text: str | bytes, json_format: bool = False) -> str:
    with pytest.raises(SpecError) as info:
        load(text, json_format)
    message = str(info.value)
    assert message.startswith("spec.yaml: "), message
    return message


# ---- YAML 1.2 scalars ---------------------------------------------------------------------------

YAML12 = [
    ("1e-3", 0.001),
    ("1E3", 1000.0),
    ("1.5e3", 1500.0),
    (".5", 0.5),
    ("1.", 1.0),
    ("010", 10),  # YAML 1.1 (PyYAML's default) reads octal 8
    ("+5", 5),
    ("0x1F", 31),
    ("0o17", 15),
    ("true", True),
    ("False", False),
    ("null", None),
    ("~", None),
    ("yes", "yes"),  # YAML 1.1 reads True
    ("no", "no"),
    ("on", "on"),
    ("off", "off"),
    ("y", "y"),
    ("1:30", "1:30"),  # YAML 1.1 reads sexagesimal 90
    ("190:20:30", "190:20:30"),
    ("1_000", "1_000"),  # YAML 1.1 reads 1000
    ("2001-12-14", "2001-12-14"),  # YAML 1.1 reads a date
    ("=", "="),
    ("<<", "<<"),
]


@pytest.mark.parametrize(("scalar", "expected"), YAML12)
def test_yaml_12_core_scalars(scalar: str, expected) -> None:
    value = load(f"a: {scalar}\n")["a"]
    assert value == expected and type(value) is type(expected)


def test_yaml_specials_are_floats_and_left_to_the_models() -> None:
    data = load("a: .inf\nb: -.inf\nc: .nan\n")
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


def test_pyyaml_safe_load_differs_so_the_custom_loader_matters() -> None:
    # The independent reference: PyYAML's own YAML 1.1 reading of the same text.
    assert yaml.safe_load("a: [010, yes, 1:30, 1e-3]")["a"] == [8, True, 90, "1e-3"]
    assert load("a: [010, yes, 1:30, 1e-3]")["a"] == [10, "yes", "1:30", 0.001]


# ---- duplicates and keys -------------------------------------------------------------------------


def test_yaml_duplicate_key_names_both_lines() -> None:
    text = "name: x\nlayers:\n  - type: Conv2D\n    filters: 4\n    filters: 8\n"
    assert "duplicate key 'filters' (first at line 4, again at line 5)" in refused(text)


def test_json_duplicate_key_names_both_lines() -> None:
    text = '{\n "layers": [\n  {"type": "Dense",\n   "units": 2,\n\n   "units": 3}\n ],\n "units": 1\n}'
    assert "duplicate key 'units' (first at line 4, again at line 6)" in refused(text, json_format=True)


def test_json_duplicate_top_level_key() -> None:
    assert "duplicate key 'a' (first at line 1, again at line 2)" in refused('{"a": {"b": [1]},\n"a": 2}', True)


def test_same_key_in_different_objects_is_fine() -> None:
    assert load('{"l": [{"units": 1}, {"units": 2}]}', json_format=True) == {"l": [{"units": 1}, {"units": 2}]}
    assert load("l:\n  - units: 1\n  - units: 2\n") == {"l": [{"units": 1}, {"units": 2}]}


@pytest.mark.parametrize("text", ["1: a\n", "? [a]\n: 1\n", "? \n: 1\n", "true: 1\n"])
def test_non_string_keys_refused(text: str) -> None:
    assert "mapping keys must be strings" in refused(text)


# ---- aliases, tags, documents -----------------------------------------------------------------------

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)


@pytest.mark.parametrize("text", ["a: &x 1\nb: *x\n", "a: &x {b: 1}\n", BILLION_LAUGHS, "a: {<<: *x}\n"])
def test_anchors_and_aliases_refused(text: str) -> None:
    assert "anchors/aliases are not allowed" in refused(text)


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system [touch /tmp/cnnspec-pwn]\n",
        "a: !!python/object/apply:os.system [touch /tmp/cnnspec-pwn]\n",
        "a: !!python/name:os.system\n",
        "a: !!binary aGVsbG8=\n",
        "a: !!str 1\n",
        "a: !custom 1\n",
        "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
    ],
)
def test_tags_refused_and_never_run(text: str) -> None:
    pwn = Path("/tmp/cnnspec-pwn")
    pwn.unlink(missing_ok=True)
    assert "unsupported YAML tag" in refused(text)
    assert not pwn.exists()


@pytest.mark.parametrize("text", ["a: 1\n---\nb: 2\n", "---\na: 1\n---\n", "a: 1\n...\n---\nb: 2\n"])
def test_multiple_documents_refused(text: str) -> None:
    assert "exactly one document" in refused(text)


def test_one_explicit_document_is_fine() -> None:
    assert load("---\na: 1\n...\n") == {"a": 1}


# ---- size, depth, integers --------------------------------------------------------------------------


def test_size_cap_before_parsing() -> None:
    # Not even valid YAML: the cap must trigger before the parser sees it.
    assert "larger than 1 MiB" in refused(b"[" * (MAX_SPEC_BYTES + 1))
    assert load(b"a: " + b"x" * (MAX_SPEC_BYTES - 10)) is not None


def test_size_cap_reports_the_real_size(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (5 << 20))
    with pytest.raises(SpecError, match="larger than 1 MiB \\(5,242,880 bytes\\)"):
        read_spec_file(path)


@pytest.mark.parametrize("json_format", [False, True])
@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deep_nesting_refused(json_format: bool, opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    text = opening * 10_000 + "1" + closing * 10_000
    assert "nested too deeply" in refused(text, json_format)


def test_yaml_block_nesting_refused() -> None:
    text = "".join("  " * i + "a:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "b: 1\n"
    assert "nested too deeply" in refused(text)


def test_nesting_within_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 1
    assert load("[" * depth + "]" * depth, json_format=True) is not None
    assert load("[" * depth + "]" * depth) is not None


@pytest.mark.parametrize("json_format", [False, True])
@pytest.mark.parametrize("digits", ["9" * 5000, "-" + "9" * 19, "1" + "0" * 18])
def test_huge_integers_refused(json_format: bool, digits: str) -> None:
    text = f'{{"filters": {digits}}}' if json_format else f"filters: {digits}\n"
    assert "integer too large" in refused(text, json_format)


def test_eighteen_digits_allowed() -> None:
    assert load("a: 999999999999999999")["a"] == 999_999_999_999_999_999
    assert load('{"a": -999999999999999999}', json_format=True)["a"] == -999_999_999_999_999_999


# ---- text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00", b"a: \xff\xfe", "a: é".encode("latin-1")])
def test_non_utf8_refused(data: bytes) -> None:
    assert "not UTF-8 text" in refused(data)


def test_byte_order_mark_accepted() -> None:
    assert load(b'\xef\xbb\xbf{"a": 1}', json_format=True) == {"a": 1}
    assert load(b"\xef\xbb\xbfa: 1") == {"a": 1}


@pytest.mark.parametrize(("text", "json_format"), [('a: "\\ud800"', False), ('{"a": "\\udfff"}', True)])
def test_lone_surrogates_refused(text: str, json_format: bool) -> None:
    assert "lone UTF-16 surrogate" in refused(text, json_format)


def test_surrogate_pair_is_one_character() -> None:
    assert load('{"a": "\\ud83d\\ude00"}', json_format=True) == {"a": "\U0001f600"}


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b"])
def test_control_characters_refused_in_yaml(char: str) -> None:
    assert "is not allowed in YAML text" in refused(f"a: 1\nb: x{char}y\n")


@pytest.mark.parametrize(("text", "where"), [("a: [1, 2\nb: 3", "line 2, column 2"), ("a:\n\tb: 1", "line 2")])
def test_yaml_syntax_error_has_position(text: str, where: str) -> None:
    assert where in refused(text)


@pytest.mark.parametrize(("text", "where"), [('{"a": }', "line 1, column 7"), ('{"a": 1,\n}', "line 2, column 1")])
def test_json_syntax_error_has_position(text: str, where: str) -> None:
    assert where in refused(text, json_format=True)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_non_finite_constants_refused(constant: str) -> None:
    assert "numbers must be finite" in refused(f'{{"a": {constant}}}', json_format=True)


# ---- top level ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("", None), ("# only a comment\n", None), ("null", None)])
def test_empty_documents_parse_to_none(text: str, expected) -> None:
    assert load(text) is expected


def test_top_level_kinds_reach_the_spec_check() -> None:
    from cnnspec.spec import spec_from_data

    for text, message in (("", "spec is empty"), ("null", "spec is empty"), ("- 1\n", "must be a mapping")):
        with pytest.raises(SpecError, match=message):
            spec_from_data(load(text))
    with pytest.raises(SpecError, match="must be a mapping"):
        spec_from_data(load("[1]", json_format=True))


def test_json_round_trip_of_a_real_spec() -> None:
    spec = {"name": "x", "input": {"shape": [8, 8, 1]}, "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 2}]}
    assert load(json.dumps(spec, indent=2), json_format=True) == spec
    assert load(yaml.safe_dump(spec)) == spec


# ---- files ---------------------------------------------------------------------------------------------


def test_read_spec_file_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_spec_file(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="is a directory"):
        read_spec_file(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    import os

    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        read_spec_file(fifo)  # must not block on the FIFO
    with pytest.raises(UsageError, match="not a regular file"):
        read_spec_file("/dev/zero")


def test_json_chosen_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "s.JSON").write_text('{"a": 010}')  # invalid JSON, valid YAML
    with pytest.raises(SpecError, match="JSON syntax error"):
        read_spec_file(tmp_path / "s.JSON")
    (tmp_path / "s.yml").write_text("a: 010")
    assert read_spec_file(tmp_path / "s.yml") == {"a": 10}


# ---- every parser exception is mapped -------------------------------------------------------------

ODD_INPUTS = [
    "a: 1\n b: 2", "- a\nb: 1", "a: [}", "{a: 1", '"a', "? |\n  x\n: 1", "a: !", "&a", "*a", "a: 1\n\x85",
    "%YAML 1.1\n%YAML 1.1\n---\na: 1", "%FOO\n---\na", "a: 'x\n", "[a, b]: 1", "a: |\n x\n  y\n z", "\ufeff\ufeff",
    "a:\n- b\n -c", "a: 0x", "a: 0o8", "a: -", "a: 1e", ": :", "a: @x", "a: `x", "!!", "{{}}", "[[[", "\t", "\r\r\n",
]  # fmt: skip


@pytest.mark.parametrize("text", ODD_INPUTS)
@pytest.mark.parametrize("json_format", [False, True])
def test_odd_inputs_give_a_spec_error_or_data(text: str, json_format: bool) -> None:
    try:
        load(text, json_format)
    except SpecError as exc:
        assert str(exc).startswith("spec.yaml: ") and "\n" not in str(exc)


YAMLISH = st.text(alphabet=st.sampled_from(list("ab01:-[]{},&*!?|>'\"#%@`~.eE+\\ \t\n")), max_size=60)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.one_of(YAMLISH, st.binary(max_size=60).map(lambda b: b.decode("latin-1"))), st.booleans())
def test_random_text_gives_data_or_a_spec_error(text: str, json_format: bool) -> None:
    try:
        load(text.encode("utf-8", "surrogatepass"), json_format)
    except SpecError as exc:
        assert str(exc).startswith("spec.yaml: ")
