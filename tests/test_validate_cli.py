"""`cnnspec validate` and `cnnspec schema` as a user runs them: exit codes, the --json contract, the human
table, the order of errors (every field error at once, then only the first shape failure), no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_no_traceback, run_cli

JSON_KEYS = {  # the documented keys first, then the extras
    "valid", "name", "input_shape", "layers", "total_params", "errors",
    "trainable_params", "total_flops", "warnings",
}  # fmt: skip
LAYER_KEYS = {
    "name", "type", "inputs", "output_shape", "params", "trainable_params", "flops", "padding", "receptive_field",
}  # fmt: skip


def write(tmp_path: Path, data: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def validate_json(*args) -> tuple[int, dict, str]:
    code, out, err = run_cli("validate", "--json", *args)
    assert_no_traceback(out, err)
    assert out.count("\n") == 1, out  # exactly one JSON object, on one line
    return code, json.loads(out), err


# ---- exit 0: the shipped specs --------------------------------------------------------------------


def test_seed_json_is_exactly_the_contract(specs_dir: Path) -> None:
    code, doc, err = validate_json(specs_dir / "seed.yaml")
    assert code == 0 and err == ""
    assert set(doc) == JSON_KEYS
    assert (doc["valid"], doc["name"], doc["input_shape"], doc["errors"]) == (True, "seed", [28, 28, 1], [])
    assert all(set(layer) == LAYER_KEYS for layer in doc["layers"])
    assert [layer["output_shape"] for layer in doc["layers"]] == [
        [28, 28, 32], [14, 14, 32], [10, 10, 64], [6, 6, 128], [2, 2, 64], [1, 1, 64], [64], [1024], [1024], [10],
    ]  # fmt: skip
    assert [layer["params"] for layer in doc["layers"]] == [832, 0, 51264, 204928, 204864, 0, 0, 66560, 0, 10250]
    assert doc["total_params"] == sum(layer["params"] for layer in doc["layers"]) == 538_698
    assert doc["layers"][0] | {"flops": 0} == {
        "name": "conv2d", "type": "Conv2D", "output_shape": [28, 28, 32], "params": 832, "trainable_params": 832,
        "flops": 0, "padding": "2,2,2,2", "receptive_field": [5, 5], "inputs": ["input"],
    }  # fmt: skip
    assert doc["layers"][1]["padding"] is None
    assert [layer["inputs"] for layer in doc["layers"][1:3]] == [["conv2d"], ["max_pooling2d"]]


def test_human_table_of_the_seed(specs_dir: Path) -> None:
    code, out, err = run_cli("validate", specs_dir / "seed.yaml")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "Model: seed  (input 28x28x1, H x W x C)"
    header = next(line for line in lines if line.startswith("#"))
    for column in ("layer", "type", "output", "params", "FLOPs", "act. mem", "padding t,b,l,r", "RF"):
        assert column in header
    row = dict(zip(["index", "name", "type", "output", "params"], lines[lines.index(header) + 2].split(), strict=False))
    assert row == {"index": "0", "name": "conv2d", "type": "Conv2D", "output": "28x28x32", "params": "832"}
    first = lines[lines.index(header) + 2]
    assert "1.25M" in first and "98.0 KiB" in first and "2,2,2,2" in first and first.endswith("5x5")
    assert any(line.split()[:3] == ["9", "dense_1", "Dense"] and line.endswith("32x32") for line in lines)
    assert "Total params: 538,698 (trainable 538,698, non-trainable 0)" in out
    assert "FLOPs per image: 28.06M" in out and "classes: 10" in out
    assert all(ord(ch) < 128 for ch in out)  # plain ASCII: any terminal or pipe takes it


def test_batchnorm_totals_show_non_trainable(specs_dir: Path) -> None:
    code, out, _ = run_cli("validate", specs_dir / "bn_gap.yaml")
    assert code == 0
    assert "non-trainable 192" in out  # running mean and variance: 2 x (32 + 64)


def test_json_spec_files_validate_too(tmp_path: Path, specs_dir: Path) -> None:
    data = yaml.safe_load((specs_dir / "lenet5.yaml").read_text(encoding="utf-8"))
    code, doc, _ = validate_json(write(tmp_path, json.dumps(data), "lenet5.json"))
    assert code == 0 and doc["total_params"] == 61_706


def test_warning_goes_to_stderr_and_keeps_exit_0(tmp_path: Path) -> None:
    softmax = {"type": "Dense", "units": 4, "activation": "softmax"}
    layers = [{"type": "Flatten"}, softmax, {"type": "Dense", "units": 2}]
    spec = {"name": "w", "input": {"shape": [4, 4, 1]}, "layers": layers}
    code, out, err = run_cli("validate", write(tmp_path, spec))
    assert code == 0
    assert err.startswith("warning: layers[1] Dense 'dense': softmax")
    code, doc, _ = validate_json(write(tmp_path, spec))
    assert code == 0 and doc["valid"] and [w["layer"] for w in doc["warnings"]] == [1]


# ---- exit 1: invalid specs ------------------------------------------------------------------------

MANY_FIELD_ERRORS = {
    "name": "bad",
    "input": {"shape": [28, 28, 1]},
    "layers": [
        {"type": "Conv2D", "filters": 0, "kernel_size": 3, "activaton": "relu"},
        {"type": "MaxPooling2D", "pool_size": "2"},
        {"type": "Dense", "units": 10, "use_bias": "no"},
    ],
    "training": {"optimizer": "sgdd"},
}

TWO_SHAPE_FAILURES = {
    "name": "bad",
    "input": {"shape": [8, 8, 1]},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3},  # 6x6
        {"type": "Conv2D", "filters": 4, "kernel_size": 7},  # does not fit
        {"type": "Conv2D", "filters": 4, "kernel_size": 9},  # would not fit either, but is not reached
        {"type": "Dense", "units": 10},
    ],
}


def test_every_field_error_is_reported_at_once(tmp_path: Path) -> None:
    code, doc, _ = validate_json(write(tmp_path, MANY_FIELD_ERRORS))
    assert code == 1 and doc["valid"] is False
    where = {(e["layer"], e["field"]) for e in doc["errors"]}
    assert where == {(0, "filters"), (0, "activaton"), (1, "pool_size"), (2, "use_bias"), (None, "training.optimizer")}
    assert doc["layers"] == [] and doc["input_shape"] is None  # nothing can be walked yet


def test_then_only_the_first_shape_failure(tmp_path: Path) -> None:
    code, doc, _ = validate_json(write(tmp_path, TWO_SHAPE_FAILURES))
    assert code == 1
    assert [(e["layer"], e["field"]) for e in doc["errors"]] == [(1, "kernel_size")]
    assert "out = floor((6-7)/1)+1 = 0" in doc["errors"][0]["message"]
    assert [layer["output_shape"] for layer in doc["layers"]] == [[6, 6, 4]]  # the layers before the failure
    assert doc["name"] == "bad" and doc["input_shape"] == [8, 8, 1]


def test_human_output_of_an_invalid_spec(tmp_path: Path) -> None:
    code, out, err = run_cli("validate", write(tmp_path, MANY_FIELD_ERRORS))
    assert code == 1 and out == ""
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 5 and all(line.startswith("error: ") for line in lines)
    assert "error: layers[0] Conv2D 'conv2d': unknown field 'activaton' (did you mean 'activation'?)" in lines
    code, out, err = run_cli("validate", write(tmp_path, TWO_SHAPE_FAILURES))
    assert code == 1
    assert out.startswith("Model: bad")  # the table of the layers that fit...
    assert err.startswith("error: layers[1] Conv2D 'conv2d_1': kernel 7x7 does not fit the 6x6 input")  # ...then why
    assert "Hint: " in err


BROKEN = [
    "",  # empty file
    "name: x\ninput: {shape: [1, 2\n",  # YAML syntax error
    "- just\n- a list\n",
    "name: x\nname: y\n",  # duplicate key
    "a: &x [1]\nb: *x\n",  # alias
    "\x00\x01\x02 binary",
    '{"name": "x", "input": {"shape": [8, 8, 1]}, "layers": [{"type": "Dense", "units": 1e400}]}',
    "name: x\ninput: {shape: [99999999, 99999999, 4096]}\nlayers: [{type: Flatten}]\n",
]


@pytest.mark.parametrize("text", BROKEN)
def test_broken_files_exit_1_with_one_json_object(tmp_path: Path, text: str) -> None:
    code, doc, _ = validate_json(write(tmp_path, text))
    assert code == 1 and doc["valid"] is False and doc["errors"]


@pytest.mark.parametrize("text", BROKEN[:3])
def test_broken_files_exit_1_with_error_lines(tmp_path: Path, text: str) -> None:
    code, out, err = run_cli("validate", write(tmp_path, text))
    assert code == 1 and err.startswith("error: ")
    assert_no_traceback(out, err)


# ---- exit 2: usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["validate"],  # missing SPEC
        ["validate", "does-not-exist.yaml"],
        ["validate", "--json", "does-not-exist.yaml"],
        ["validate", "."],  # a directory
        ["validate", "--bogus", "specs/seed.yaml"],
        ["validate", "specs/seed.yaml", "extra"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    assert err.startswith("error: ")
    assert_no_traceback(out, err)


def test_help_exits_0() -> None:
    code, out, err = run_cli("validate", "--help")
    assert code == 0 and "--json" in out
    assert_no_traceback(out, err)


# ---- schema ------------------------------------------------------------------------------------------


def test_schema_command_prints_the_committed_schema(specs_dir: Path) -> None:
    code, out, err = run_cli("schema")
    assert code == 0 and err == ""
    schema = json.loads(out)
    assert schema == json.loads((specs_dir / "schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["required"]) == {"input", "layers"}  # name is optional: the file's stem
