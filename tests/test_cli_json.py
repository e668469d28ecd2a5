"""`--json` on the commands that report: exactly one JSON document on stdout, messages on stderr, and every
number checked against the file itself (hashlib, os.stat, onnx) rather than against cnnspec."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SPECS_DIR, assert_no_traceback, run_cli
from onnx import TensorProto, helper

from cnnspec import cli


def one_document(stdout: str):
    """The whole of stdout is one JSON document (json.loads refuses trailing text)."""
    return json.loads(stdout)


def param_count(model: onnx.ModelProto) -> int:
    """The layers' weights (`layer.weight`, `layer.bias`, ...), not the running statistics of BatchNormalization
    (the contract's count) nor the graph's constants (`preprocess/const`)."""
    return sum(
        math.prod(t.dims)
        for t in model.graph.initializer
        if "/" not in t.name and not t.name.endswith(("running_mean", "running_var"))
    )


def file_facts(path: Path) -> dict:
    data = path.read_bytes()
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m") / "seed.onnx"
    code, _, err = run_cli("compile", SPECS_DIR / "seed.yaml", "-o", out, "--seed", "3")
    assert code == 0, err
    return out


def test_compile_json(tmp_path):
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli("compile", SPECS_DIR / "lenet5.yaml", "-o", out, "--seed", "2", "--json")
    assert code == 0, err
    doc = one_document(stdout)
    model = onnx.load(str(out))
    assert {k: doc[k] for k in ("path", "bytes", "sha256")} == file_facts(out)
    assert doc["params"] == param_count(model) == 61_706  # LeNet-5 for 28x28x1 as Keras counts it
    assert doc["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert doc["seed"] == 2 and doc["name"] == "lenet5"
    assert f"wrote {out}" in err  # the message stays on stderr


def test_inspect_json_of_a_cnnspec_model(seed_model):
    code, stdout, err = run_cli("inspect", seed_model, "--json")
    assert code == 0, err
    doc = one_document(stdout)
    model = onnx.load(str(seed_model))
    meta = {p.key: p.value for p in model.metadata_props}
    assert {k: doc[k] for k in ("path", "bytes", "sha256")} == file_facts(seed_model)
    assert doc["made_by_cnnspec"] is True and doc["valid"] is True
    assert doc["labels"] == json.loads(meta["cnnspec.labels"])
    assert doc["preprocess"] == json.loads(meta["cnnspec.preprocess"])
    assert doc["cnnspec_version"] == meta["cnnspec.version"]
    assert doc["opset"] == model.opset_import[0].version
    assert doc["total_params"] == param_count(model)
    # the table's rows: one per layer, the last one's output is the classes
    assert [layer["name"] for layer in doc["layers"]][:2] == ["conv2d", "max_pooling2d"]
    assert doc["layers"][-1]["output_shape"] == [len(doc["labels"])]
    table_code, table, _ = run_cli("inspect", seed_model)
    assert table_code == 0 and f"{doc['total_params']:,}" in table


def test_inspect_json_of_a_foreign_model(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4, 4])],
    )
    path = tmp_path / "foreign.onnx"
    model = helper.make_model(graph, producer_name="elsewhere", opset_imports=[helper.make_opsetid("", 13)])
    path.write_bytes(model.SerializeToString())
    code, stdout, err = run_cli("inspect", path, "--json")
    assert code == 0, err
    doc = one_document(stdout)
    assert doc["made_by_cnnspec"] is False and doc["producer"] == "elsewhere" and doc["opset"] == 13
    assert doc["inputs"] == [{"name": "x", "type": "float32[n, 3, 4, 4]"}]
    assert doc["outputs"] == [{"name": "y", "type": "float32[n, 3, 4, 4]"}]
    assert doc["ops"] == {"Relu": 2}


def test_inspect_json_error_is_one_line_on_stderr_and_nothing_on_stdout(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, stdout, err = run_cli("inspect", bad, "--json")
    assert code == 1 and stdout == "" and err.startswith("error: ")
    assert_no_traceback(err)


SPEC = """
name: halves
input: {shape: [8, 8, 1]}
labels: [left, right]
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3, padding: same, activation: relu}
  - {type: MaxPooling2D}
  - {type: Flatten}
  - {type: Dense, units: 2, activation: softmax}
training: {optimizer: adam, learning_rate: 0.01, epochs: 3, batch_size: 16}
"""


def test_train_json_is_the_final_summary_and_the_human_one_goes_to_stderr(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64)
    x = rng.integers(0, 80, (64, 8, 8)).astype(np.uint8)
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "spec.yaml").write_text(SPEC)
    out, metrics = tmp_path / "m.onnx", tmp_path / "metrics.json"
    code, stdout, err = run_cli(
        "train", tmp_path / "spec.yaml", "--data", tmp_path / "data.npz", "-o", out, "--val-split", "0.25",
        "--metrics-json", metrics, "--json", "--threads", "1", timeout=300,
    )  # fmt: skip
    assert code == 0, err
    doc = one_document(stdout)
    history = json.loads(metrics.read_text())
    rows = history["epochs"] if isinstance(history, dict) else history
    assert doc["epochs"] == len(rows) == 3
    best = min(rows, key=lambda r: r["val_loss"])
    assert doc["best_epoch"] == best["epoch"]
    assert doc["best"]["val_loss"] == pytest.approx(best["val_loss"]) and doc["best"]["epoch"] == best["epoch"]
    assert doc["final"]["epoch"] == 3 and doc["model_epoch"] == 3  # no early stopping: the last epoch's weights
    assert doc["train_samples"] == 48  # 64 images, 25% held out
    assert doc["images_per_second"] == pytest.approx(48 * 3 / sum(r["seconds"] for r in rows), rel=0.01)
    assert doc["wall_seconds"] >= doc["train_seconds"] > 0
    assert doc["outputs"] == {"model": str(out), "metrics_json": str(metrics)}
    assert out.is_file()
    # the same summary for people, at the end of stderr
    assert f"best epoch {best['epoch']}:" in err and f"model: {out}" in err and "img/s" in err


def test_train_without_json_prints_the_summary_and_nothing_on_stdout(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (32, 8, 8)).astype(np.uint8), y=np.arange(32) % 2)
    (tmp_path / "spec.yaml").write_text(SPEC)
    code, stdout, err = run_cli(
        "train", tmp_path / "spec.yaml", "--data", tmp_path / "d.npz", "-o", tmp_path / "m.onnx", "--epochs", "1",
        timeout=300,
    )  # fmt: skip
    assert code == 0, err
    assert stdout == ""
    assert "trained 1 epoch(s)" in err and "best epoch 1: loss" in err and "val_loss" not in err.splitlines()[-2]


def test_export_artifacts_json(tmp_path, monkeypatch, capsys):
    """The ort-training artifacts need onnxruntime-training (its own environment, tests/ort_training): here the
    writer is replaced by one that writes four small files, and the document is checked against them."""
    from cnnspec.training import ort_artifacts

    def fake_export(spec, folder: Path, seed: int = 0) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / name for name in ort_artifacts.ARTIFACTS]
        for i, path in enumerate(paths):
            path.write_bytes(bytes([i]) * (10 + i))
        return paths

    monkeypatch.setattr(ort_artifacts, "export_artifacts", fake_export)
    folder = tmp_path / "art"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export-artifacts", str(SPECS_DIR / "digits.yaml"), str(folder), "--json"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    doc = one_document(captured.out)
    assert doc["folder"] == str(folder)
    assert doc["files"] == [file_facts(folder / name) for name in ort_artifacts.ARTIFACTS]
    assert captured.err.count("wrote ") == 4
