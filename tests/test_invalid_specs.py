"""Every file in tests/invalid_specs/ states the errors it must produce, in leading comments:

    # expect: layer=2 field=kernel_size message=does not fit

`layer` is the 0-based index into `layers` or `none`; `field` the dotted field or `none`; `message` a
fragment of the message (the rest of the line). Lines with the same (layer, field) describe one error
whose message holds every fragment. The errors must match the expectations one to one:
nothing missing and nothing extra (so "all field errors at once, then only the first shape failure"
is pinned too). Each file runs in-process, and a handful through the CLI's `validate --json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import assert_no_traceback, run_cli

from cnnspec.analysis import analyze
from cnnspec.errors import Issue, SpecError
from cnnspec.spec import load_spec

FOLDER = Path(__file__).parent / "invalid_specs"
FILES = sorted(FOLDER.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: layer=(?P<layer>\S+) field=(?P<field>\S+) message=(?P<message>.+)$")


@dataclass(frozen=True)
class Expected:
    layer: int | None
    field: str | None
    messages: tuple[str, ...]

    def matches(self, issue: Issue | dict) -> bool:
        got = issue if isinstance(issue, dict) else issue.as_dict()
        return (
            got["layer"] == self.layer
            and got["field"] == self.field
            and all(m in got["message"] for m in self.messages)
        )


def expectations(path: Path) -> list[Expected]:
    found: dict[tuple, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = EXPECT.match(line.strip())
        if m:
            layer = None if m["layer"] == "none" else int(m["layer"])
            field = None if m["field"] == "none" else m["field"]
            found.setdefault((layer, field), []).append(m["message"])
    return [Expected(layer, field, tuple(messages)) for (layer, field), messages in found.items()]


def issues_of(path: Path) -> list[Issue]:
    """The errors `cnnspec validate` reports: field errors from loading, else the shape walk's."""
    try:
        spec = load_spec(path)
    except SpecError as err:
        return err.issues
    return analyze(spec).issues


def assert_one_to_one(expected: list[Expected], got: list) -> None:
    remaining = list(got)
    for exp in expected:
        match = next((g for g in remaining if exp.matches(g)), None)
        assert match is not None, f"no error matches {exp}; got:\n" + "\n".join(map(str, remaining))
        remaining.remove(match)
    assert not remaining, "unexpected extra errors:\n" + "\n".join(map(str, remaining))


def test_the_folder_holds_at_least_25_specs_each_with_an_expectation() -> None:
    assert len(FILES) >= 25
    for path in FILES:
        assert expectations(path), f"{path.name} states no '# expect:' line"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_spec_gives_exactly_the_stated_errors(path: Path) -> None:
    assert_one_to_one(expectations(path), issues_of(path))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_layer_errors_name_the_layer_in_the_message(path: Path) -> None:
    # "layers[i] Type 'name': ..." so a reader of the plain message finds the spot too.
    for issue in issues_of(path):
        if issue.layer is not None:
            assert issue.message.startswith(f"layers[{issue.layer}] "), issue.message


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_shape_errors_carry_a_hint(path: Path) -> None:
    for issue in issues_of(path):
        if "does not fit" in issue.message or "needs" in issue.message:
            assert "Hint: " in issue.message, issue.message


# The CLI path costs a subprocess each (~0.3 s): a spread of kinds, not every file.
CLI_SAMPLE = [
    "unknown_layer_type",
    "unknown_layer_field",
    "bool_for_int",
    "kernel_too_large",
    "dense_on_image",
    "labels_count_mismatch",
]


@pytest.mark.parametrize("stem", CLI_SAMPLE)
def test_cli_validate_json_reports_the_same_errors(stem: str) -> None:
    path = FOLDER / f"{stem}.yaml"
    code, out, err = run_cli("validate", "--json", path)
    assert code == 1, err
    assert_no_traceback(out, err)
    doc = json.loads(out)  # exactly one JSON object on stdout
    assert doc["valid"] is False
    for entry in doc["errors"]:
        assert set(entry) == {"layer", "field", "message"}
    assert_one_to_one(expectations(path), doc["errors"])


@pytest.mark.parametrize("stem", ["kernel_too_large", "unknown_layer_type"])
def test_cli_human_output_prints_each_error_on_stderr(stem: str) -> None:
    path = FOLDER / f"{stem}.yaml"
    code, out, err = run_cli("validate", path)
    assert code == 1
    assert_no_traceback(out, err)
    assert err.startswith("error: ")
    for exp in expectations(path):
        assert all(m in err for m in exp.messages)
