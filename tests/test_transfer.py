"""Transfer learning and Keras habits: `train --init-from`, `trainable: false`, `--data *.csv`, `--val-split 0`
and the optional top-level `name`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper
from PIL import Image

from cnnspec.analysis import check
from cnnspec.compiler import initial_params
from cnnspec.spec import load_spec, spec_from_data
from cnnspec.summary import format_report
from cnnspec.training.loop import Data
from cnnspec.training.program import build_train_step
from cnnspec.training.trainer import resolve_settings, train_model

ROOT = Path(__file__).resolve().parents[1]

NET = {
    "name": "net",
    "input": {"shape": [8, 8, 1]},
    "preprocess": {"scale": 1 / 255},
    "layers": [
        {"type": "Conv2D", "name": "stem", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "BatchNormalization", "name": "bn"},
        {"type": "MaxPooling2D"},
        {"type": "Flatten"},
        {"type": "Dense", "name": "head", "units": 2, "activation": "softmax"},
    ],
    "training": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 2, "batch_size": 16},
}


def data(n=64, classes=2, seed=0) -> Data:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.uniform(0, 80, (n, 1, 8, 8)).astype(np.float32)
    for k in range(classes):
        x[y == k, :, :, k * 8 // classes : (k + 1) * 8 // classes] += 150
    return Data(x, y.astype(np.int64))


def cnnspec(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnspec", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip


class Run:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


def cli(capsys, *args) -> Run:
    """The CLI in this process (no interpreter start): its exit code and what it printed on stderr."""
    from cnnspec.cli import _run

    capsys.readouterr()
    code = _run([str(a) for a in args])
    return Run(code, capsys.readouterr().err)


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- trainable: false -----------------------------------------------------------------------------------------


def frozen_net() -> dict:
    layers = [dict(item) for item in NET["layers"]]
    layers[0]["trainable"] = False
    layers[1]["trainable"] = False
    return NET | {"layers": layers}


def test_frozen_layers_get_no_updates_and_no_optimizer_state():
    spec = spec_from_data(frozen_net())
    report = check(spec)
    settings = resolve_settings(spec)
    program = build_train_step(spec, report, settings.optimizer, 0.0)
    assert program.trainable == ["head.weight", "head.bias"]
    start = initial_params(spec, report)
    result = train_model(spec, data(), None, settings, log=lambda line: None)
    for name in ("stem.weight", "stem.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        assert np.array_equal(result.params[name], start[name]), name  # BN statistics too: inference mode
    assert not np.array_equal(result.params["head.weight"], start["head.weight"])
    state = settings.optimizer.initial_state({p: start[p] for p in program.trainable})
    assert not any("stem" in k or "bn." in k for k in state)


def test_frozen_batch_norm_is_not_a_batch_mixing_layer_and_summary_counts():
    report = check(spec_from_data(frozen_net()))
    assert not report.mixes_batch and check(spec_from_data(NET)).mixes_batch
    text = format_report(report)
    stem_bn = 4 * 9 + 4 + 4 * 4  # conv weight + bias, BN gamma, beta, mean, var
    assert f"trainable {report.trainable_params:,}" in text and report.trainable_params == (4 * 4 * 4) * 2 + 2
    assert f"Frozen (trainable: false): {stem_bn:,} params in stem, bn" in text


def test_trainable_is_strict_and_absent_from_the_normalized_spec_by_default():
    from cnnspec.errors import SpecError
    from cnnspec.spec import normalized

    assert "trainable" not in normalized(spec_from_data(NET))["layers"][0]
    with pytest.raises(SpecError, match="trainable"):
        spec_from_data(NET | {"layers": [NET["layers"][0] | {"trainable": "no"}, *NET["layers"][1:]]})


# ---- --init-from ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("init")
    d = data()
    np.savez(work / "data.npz", x=d.x[:, 0], y=d.y)
    from cnnspec.cli import _run

    assert _run(["train", str(write(work / "net.yaml", NET)), "--data", str(work / "data.npz"), "-o",
                 str(work / "net.onnx")]) == 0  # fmt: skip
    return work


def test_init_from_loads_matching_layers_and_keeps_a_new_head_fresh(trained: Path, capsys):
    three = NET | {"layers": [*NET["layers"][:-1], NET["layers"][-1] | {"units": 3}]}
    d = data(classes=3, seed=1)
    np.savez(trained / "three.npz", x=d.x[:, 0], y=d.y)
    out = trained / "three.onnx"
    r = cli(capsys, "train", write(trained / "three.yaml", three), "--data", trained / "three.npz", "-o", out,
                "--init-from", trained / "net.onnx", "--epochs", 1)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "loaded 2 layer(s): stem, bn" in r.stderr
    assert "fresh head (head.weight is [2, 64] there, [3, 64] here; head.bias is [2] there, [3] here)" in r.stderr
    # one epoch from the loaded weights; BN statistics came along (they differ from the fresh 0 / 1)
    source, start = weights(trained / "net.onnx"), initial_params(spec_from_data(three), check(spec_from_data(three)))
    assert not np.allclose(source["bn.running_mean"], start["bn.running_mean"])
    frozen = three | {"layers": [dict(x, trainable=False) if x.get("name") in ("stem", "bn") else x
                                 for x in three["layers"]]}  # fmt: skip
    r = cli(capsys, "train", write(trained / "frozen.yaml", frozen), "--data", trained / "three.npz", "-o", out,
                "--init-from", trained / "net.onnx", "--epochs", 1)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = weights(out)
    for name in ("stem.weight", "bn.running_mean", "bn.running_var", "bn.weight"):
        assert np.array_equal(got[name], source[name]), name  # loaded and frozen: exactly the source's


def test_init_from_refuses_when_nothing_matches(trained: Path):
    other = NET | {"layers": [dict(x, name=f"x{i}") for i, x in enumerate(NET["layers"])]}
    r = cnnspec("train", write(trained / "other.yaml", other), "--data", trained / "data.npz", "-o",
                trained / "o.onnx", "--init-from", trained / "net.onnx")  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no layer of the spec matches the model's weights" in r.stderr and "no x0.weight" in r.stderr
    assert not (trained / "o.onnx").exists()


def test_init_from_a_foreign_onnx_with_the_same_initializer_layout(tmp_path: Path):
    """Initializers named like cnnspec's state dict (PyTorch layouts) load, whatever graph holds them."""
    spec = spec_from_data(NET)
    report = check(spec)
    rng = np.random.default_rng(3)
    conv_w = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(conv_w, "stem.weight"),
             numpy_helper.from_array(np.ones(4, np.float32), "stem.bias"),
             numpy_helper.from_array(np.zeros((2, 2), np.float32), "something.else")]  # fmt: skip
    graph = helper.make_graph([helper.make_node("Conv", ["x", "stem.weight", "stem.bias"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)  # fmt: skip
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    from cnnspec.transfer import init_from

    lines: list[str] = []
    apply = init_from(tmp_path / "foreign.onnx", report, lines.append)
    params = apply(initial_params(spec, report))
    assert np.array_equal(params["stem.weight"], conv_w) and np.array_equal(params["stem.bias"], np.ones(4))
    assert lines[0].endswith("loaded 1 layer(s): stem") and any("fresh bn (no bn.weight" in x for x in lines)


# ---- --data *.csv -----------------------------------------------------------------------------------------------


def test_csv_rows_resolve_against_the_csv_folder_and_bad_rows_are_reported(tmp_path: Path):
    from cnnspec.data import load_dataset
    from cnnspec.errors import DataError

    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good = "path,label\nimg/0.png,cat\nimg/1.png,dog\n\nimg/2.png,cat\n"
    (tmp_path / "train.csv").write_text(good)
    ds = load_dataset(tmp_path / "train.csv", (8, 8, 1), ["dog", "cat"])
    assert ds.y.tolist() == [1, 0, 1] and ds.x[:, 0, 0, 0].tolist() == [0, 40, 80]  # by the model's labels
    ds = load_dataset(tmp_path / "train.csv", (8, 8, 1), None, 2)
    assert ds.y.tolist() == [0, 1, 0] and ds.class_names == ["cat", "dog"]  # sorted names
    (tmp_path / "bad.csv").write_text(good + "broken.png,dog\nnowhere.png,cat\nimg/0.png,bird\nimg/1.png\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "bad.csv", (8, 8, 1), ["dog", "cat"])
    text = str(err.value)
    assert "4 row(s) cannot be used (skip them with --skip-bad-images)" in text
    assert text.index("line 6:") < text.index("line 7:") < text.index("line 8:") < text.index("line 9:")
    assert "broken.png" in text and "nowhere.png' does not exist" in text and "label 'bird'" in text
    ds = load_dataset(tmp_path / "bad.csv", (8, 8, 1), ["dog", "cat"], skip_bad_images=True)
    assert len(ds) == 3


def test_train_from_csv(tmp_path: Path, capsys):
    d = data(n=32)
    rows = ["path,label"]
    for i, (x, y) in enumerate(zip(d.x, d.y, strict=True)):
        Image.fromarray(np.clip(x[0], 0, 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{int(y)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    r = cli(capsys, "train", write(tmp_path / "net.yaml", NET), "--data", tmp_path / "train.csv", "-o",
                tmp_path / "m.onnx", "--epochs", 1)  # fmt: skip
    assert r.returncode == 0, r.stderr


# ---- Keras habits -----------------------------------------------------------------------------------------------


def test_val_split_zero_means_no_validation(tmp_path: Path, capsys):
    spec = spec_from_data(NET | {"training": NET["training"] | {"val_split": 0}})
    assert resolve_settings(spec).val_split is None
    assert resolve_settings(spec_from_data(NET), val_split=0.0).val_split is None
    d = data()
    np.savez(tmp_path / "d.npz", x=d.x[:, 0], y=d.y)
    r = cli(capsys, "train", write(tmp_path / "n.yaml", NET), "--data", tmp_path / "d.npz", "-o",
            tmp_path / "m.onnx", "--val-split", 0, "--epochs", 1)  # fmt: skip
    assert r.returncode == 0 and "val_loss" not in r.stderr, r.stderr
    r = cli(capsys, "train", tmp_path / "n.yaml", "--data", tmp_path / "d.npz", "-o", tmp_path / "m.onnx",
            "--val-split", 1)  # fmt: skip
    assert r.returncode == 2 and "0: no validation" in r.stderr


def test_name_is_optional_and_defaults_to_the_file_stem(tmp_path: Path, capsys):
    spec = {k: v for k, v in NET.items() if k != "name"}
    assert load_spec(write(tmp_path / "my_net.yaml", spec)).name == "my_net"
    assert spec_from_data(spec).name == "model"
    r = cli(capsys, "compile", tmp_path / "my_net.yaml", "-o", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert onnx.load(tmp_path / "m.onnx").graph.name == "my_net"
