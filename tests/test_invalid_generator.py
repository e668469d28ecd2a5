"""Invalid specs by the thousand: field mutations of valid specs (out of range, wrong type, bool-for-int, NaN,
extra key, wrong discriminator, deleted required key, shape-infeasible stacks). Each must be rejected with
structured Issues that point at the layer and field; nothing may escape as an uncaught exception.

CNNSPEC_INVALID_EXAMPLES sets the number of in-process examples (2,000 in CI; 50,000 for the long profile,
which also draws whole documents from Spec's JSON Schema with hypothesis-jsonschema).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import feasible_specs

from cnnspec.analysis import analyze
from cnnspec.errors import Issue, SpecError
from cnnspec.layers import LAYERS_BY_TYPE
from cnnspec.spec import Spec, spec_from_data

EXAMPLES = int(os.environ.get("CNNSPEC_INVALID_EXAMPLES", "2000"))
SCHEMA_EXAMPLES = max(100, EXAMPLES // 20)
HAS_JSONSCHEMA = importlib.util.find_spec("hypothesis_jsonschema") is not None
INT_FIELDS = {"filters", "units", "groups", "kernel_size", "strides", "pool_size", "dilation_rate"}


def fast(examples: int) -> settings:
    return settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
                    max_examples=examples)  # fmt: skip


# A mutation returns the spec and where an Issue must point: (layer index or None, field or None for "any").
Expect = tuple[int | None, str | None]


def _layer_field(draw, spec: dict, fields=None) -> tuple[int, str] | None:
    """A (layer index, field) present in the spec, other than type and name."""
    choices = [(i, k) for i, layer in enumerate(spec["layers"]) for k in layer
               if k not in ("type", "name") and (fields is None or k in fields)]  # fmt: skip
    return draw(st.sampled_from(choices)) if choices else None


def _set(spec: dict, index: int, field: str, value: Any) -> tuple[dict, Expect]:
    spec["layers"][index][field] = value
    return spec, (index, field)


def bad_value(draw, spec: dict) -> tuple[dict, Expect] | None:
    """Wrong type, NaN/inf or a string of digits: invalid for every layer field except the name."""
    where = _layer_field(draw, spec)
    value = draw(st.sampled_from([math.nan, math.inf, -math.inf, "32", {"x": 1}, ["a", "b", "c"], [[1, 2]]]))
    return _set(spec, *where, value) if where else None


def out_of_range(draw, spec: dict) -> tuple[dict, Expect] | None:
    where = _layer_field(draw, spec, INT_FIELDS | {"rate"})
    if where is None:
        return None
    if where[1] == "rate":
        return _set(spec, *where, draw(st.sampled_from([1.0, 1.5, -0.1, 1e300])))
    return _set(spec, *where, draw(st.sampled_from([0, -1, -(10**17), 10**17, [1, 0], [0, 3], [1, 2, 3], []])))


def bool_for_int(draw, spec: dict) -> tuple[dict, Expect] | None:
    where = _layer_field(draw, spec, INT_FIELDS)
    return _set(spec, *where, draw(st.sampled_from([True, False, [True, 2]]))) if where else None


def extra_key(draw, spec: dict) -> tuple[dict, Expect]:
    key = draw(st.sampled_from(["filter", "unit", "Strides", "bias", "x", "kernel"]))
    where = draw(st.sampled_from(["layer", "top", "input"]))
    if where == "top":
        spec[key] = 1
        return spec, (None, key)
    if where == "input":
        spec["input"][key] = 1
        return spec, (None, f"input.{key}")
    index = draw(st.integers(0, len(spec["layers"]) - 1))
    spec["layers"][index][key] = 1
    return spec, (index, key)


def wrong_type_tag(draw, spec: dict) -> tuple[dict, Expect]:
    index = draw(st.integers(0, len(spec["layers"]) - 1))
    tag = draw(st.sampled_from(["Conv2d", "conv2d", "Dense2D", "", "Pooling", 3, None, True, ["Dense"]]))
    spec["layers"][index]["type"] = tag
    return spec, (index, "type")


def deleted_key(draw, spec: dict) -> tuple[dict, Expect]:
    index = draw(st.integers(0, len(spec["layers"]) - 1))
    layer = spec["layers"][index]
    kind = LAYERS_BY_TYPE[layer["type"]]
    required = ["type"] + [k for k, f in kind.model_fields.items() if f.is_required() and k != "type"]
    choice = draw(st.sampled_from(required + ["<top>"]))
    if choice == "<top>":
        key = draw(st.sampled_from(["input", "layers"]))  # `name` is optional (Keras: the file's stem)
        del spec[key]
        return spec, (None, key)
    del layer[choice]
    return spec, (index, choice)


def bad_top_level(draw, spec: dict) -> tuple[dict, Expect]:
    field, value = draw(st.sampled_from([
        ("input.shape", [0, 8, 1]), ("input.shape", [8, 8]), ("input.shape", [8, 8, 1.5]),
        ("input.shape", [True, 8, 1]), ("input.shape", "8x8x1"), ("name", ""), ("name", 5), ("name", "n" * 200),
        ("labels", [1, 2]), ("labels", "a,b"), ("labels", [""]), ("preprocess.scale", math.nan),
        ("preprocess.scale", 0), ("preprocess.std", ["a"]), ("training.learning_rate", math.nan),
        ("training.epochs", 0), ("training.optimizer", "sgdd"), ("training.batch_size", True),
    ]))  # fmt: skip
    head, _, tail = field.partition(".")
    if tail:
        section = spec.setdefault(head, {})
        section[tail] = value
    else:
        spec[head] = value
    return spec, (None, head)


def infeasible(draw, spec: dict) -> tuple[dict, Expect]:
    """Stacks whose fields are fine but whose shapes are not."""
    h, w, c = spec["input"]["shape"]
    kind = draw(st.sampled_from(["big-kernel", "dense-first", "groups", "no-flatten", "labels", "big-pool"]))
    layers = spec["layers"]
    if kind == "big-kernel":
        layers.insert(0, {"type": "Conv2D", "filters": 2, "kernel_size": max(h, w) + draw(st.integers(1, 50))})
    elif kind == "big-pool":
        layers.insert(0, {"type": "MaxPooling2D", "pool_size": [h + 1, 1]})
    elif kind == "dense-first":
        layers.insert(0, {"type": "Dense", "units": 4})
    elif kind == "groups":
        layers.insert(0, {"type": "Conv2D", "filters": c + 1, "kernel_size": 1, "groups": c + 1})
    elif kind == "no-flatten":
        flat = next(i for i, layer in enumerate(layers) if layer["type"].startswith(("Flatten", "Global")))
        spec["layers"] = layers[:flat] or [{"type": "Activation", "activation": "relu"}]
        spec.pop("labels", None)
        return spec, (len(spec["layers"]) - 1, None)
    else:  # one label too many or too few for the last layer's units
        outputs = analyze(spec_from_data(spec)).output_shape[0]
        spec["labels"] = [f"c{i}" for i in range(outputs + draw(st.sampled_from([-1, 1, 2])))] or ["a", "b"]
        return spec, (None, "labels")
    return spec, (0, None)


MUTATIONS = [bad_value, out_of_range, bool_for_int, extra_key, wrong_type_tag, deleted_key, bad_top_level, infeasible]


@st.composite
def invalid_specs(draw) -> tuple[dict, Expect, str]:
    spec = copy.deepcopy(draw(feasible_specs()))
    mutation = draw(st.sampled_from(MUTATIONS))
    result = mutation(draw, spec)
    if result is None:  # the spec has no field of that kind; fall back to one that always applies
        mutation = extra_key
        result = extra_key(draw, spec)
    return result[0], result[1], mutation.__name__


def issues_of(data: Any) -> list[Issue]:
    try:
        spec = spec_from_data(data)
    except SpecError as err:
        return err.issues
    return analyze(spec).issues


def _under(actual: str | None, expected: str) -> bool:
    """'input.shape[0]' is under 'input' and 'input.shape'; 'kernel_size' is under itself."""
    actual = actual or ""
    return actual == expected or actual.startswith((expected + ".", expected + "["))


def assert_rejected(data: Any, expect: Expect, mutation: str) -> None:
    issues = issues_of(data)
    assert issues, f"{mutation}: accepted {json.dumps(data, default=str)[:400]}"
    assert all(isinstance(i, Issue) and i.message for i in issues)
    layer, field = expect
    hits = [i for i in issues if i.layer == layer and (field is None or _under(i.field, field))]
    assert hits, f"{mutation}: no issue at layer={layer} field={field}: {[i.as_dict() for i in issues]}"


@fast(EXAMPLES)
@given(invalid_specs())
def test_mutated_specs_are_rejected_with_located_issues(case: tuple[dict, Expect, str]) -> None:
    assert_rejected(*case)


def test_the_mutations_are_all_exercised() -> None:
    seen: set[str] = set()

    @fast(100)
    @given(invalid_specs())
    def collect(case):
        seen.add(case[2])

    collect()
    assert seen == {m.__name__ for m in MUTATIONS}


@functools.cache
def _schema_layer() -> st.SearchStrategy:
    from hypothesis_jsonschema import from_schema  # converting the schemas is slow: once per session

    return st.one_of([from_schema(kind.model_json_schema()) for kind in LAYERS_BY_TYPE.values()])


@st.composite
def schema_layer_specs(draw) -> dict:
    """Layers drawn by hypothesis-jsonschema from each layer kind's JSON Schema, on a random input."""
    layer = _schema_layer()
    shape = draw(st.lists(st.integers(1, 32), min_size=3, max_size=3))
    return {"name": "schema", "input": {"shape": shape}, "layers": draw(st.lists(layer, min_size=1, max_size=4))}


@pytest.mark.skipif(not HAS_JSONSCHEMA, reason="hypothesis-jsonschema is not installed (pip install -e .[test])")
@fast(SCHEMA_EXAMPLES)
@given(schema_layer_specs())
def test_schema_generated_layers_never_crash(doc: dict) -> None:
    """Schema-valid layers are often shape-invalid: either verdict is fine, a crash is not."""
    for issue in issues_of(doc):
        assert isinstance(issue, Issue) and issue.message


@pytest.mark.skipif(EXAMPLES < 10_000, reason="long profile only (CNNSPEC_INVALID_EXAMPLES >= 10000): ~0.5 s a draw")
@pytest.mark.skipif(not HAS_JSONSCHEMA, reason="hypothesis-jsonschema is not installed (pip install -e .[test])")
@fast(EXAMPLES // 20)
@given(st.data())
def test_whole_schema_documents_never_crash(data) -> None:
    from hypothesis_jsonschema import from_schema

    for issue in issues_of(data.draw(from_schema(Spec.model_json_schema()))):
        assert isinstance(issue, Issue) and issue.message


def test_cli_subset_gives_json_errors(tmp_path: Path) -> None:
    """50 mutated specs through `validate --json` in subprocesses: exit 1, no traceback, JSON with errors."""
    cases: list[tuple[dict, Expect, str]] = []

    @fast(50)
    @given(invalid_specs())
    def collect(case):
        cases.append(case)

    collect()
    paths = []
    for n, (data, _, _) in enumerate(cases):
        paths.append(tmp_path / f"s{n}.json")
        paths[-1].write_text(json.dumps(data, allow_nan=True))  # NaN as the JSON extension: the loader refuses it

    def validate(path: Path) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "cnnspec", "validate", "--json", str(path)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(validate, paths))
    assert len(results) >= 40
    for path, result in zip(paths, results, strict=True):
        assert result.returncode == 1, (path.read_text()[:300], result.stderr)
        assert "Traceback" not in result.stderr
        report = json.loads(result.stdout)
        assert report["valid"] is False and report["errors"], report
