"""`cnnspec export --to int8|fp16` on trained digits models: agreement with the fp32 model, the contract of the
exported file, the accuracy gate, bad calibration data, foreign models, determinism.

References: the fp32 model's own predictions (onnxruntime on the file `compile`/`train` wrote) and, for the
int8 file's arithmetic, onnx's reference evaluator (numpy QuantizeLinear/DequantizeLinear/Conv).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from cnnspec.cli import _run
from cnnspec.export import export
from cnnspec.export.quantize import needs_reduce_range
from cnnspec.runtime import Classifier
from cnnspec.train_command import train_command

ROOT = Path(__file__).resolve().parents[1]

# BatchNormalization (folded and not), a grouped convolution and global average pooling at the digits' 8x8x1.
BN_GROUPED = {
    "name": "digits-bn-grouped",
    "input": {"shape": [8, 8, 1]},
    "labels": [str(i) for i in range(10)],
    "preprocess": {"scale": 1 / 255},
    "layers": [
        {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same", "use_bias": False},
        {"type": "BatchNormalization"},
        {"type": "Activation", "activation": "relu"},
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same", "groups": 4, "activation": "relu"},
        {"type": "MaxPooling2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    ],
    "training": {"optimizer": "adam", "learning_rate": 0.004, "epochs": 8, "batch_size": 32, "seed": 0},
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """sklearn's digits as the examples write them: train.npz / test.npz of raw 0..255 pixels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("digits")
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    xa, xb, ya, yb = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    np.savez(folder / "train.npz", x=xa, y=ya)
    np.savez(folder / "test.npz", x=xb, y=yb)
    return folder


@pytest.fixture(scope="module")
def trained(digits) -> dict[str, Path]:
    """Three specs trained briefly on digits (a few seconds together)."""
    spec = digits / "bn_grouped.yaml"
    spec.write_text(yaml.safe_dump(BN_GROUPED))
    runs = {"digits": (ROOT / "specs/digits.yaml", 6), "residual": (ROOT / "specs/digits_residual.yaml", 10),
            "bn_grouped": (spec, 5)}  # fmt: skip
    models = {}
    for name, (path, epochs) in runs.items():
        models[name] = digits / f"{name}.onnx"
        train_command(path, digits / "train.npz", models[name], epochs=epochs)
    return models


def _test_set(digits: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(digits / "test.npz")
    return data["x"][:, None].astype(np.float32), data["y"]


@pytest.mark.parametrize("name", ["digits", "residual", "bn_grouped"])
@pytest.mark.parametrize("to", ["int8", "fp16"])
def test_exported_model_agrees_with_fp32_and_keeps_the_contract(trained, digits, tmp_path, name, to):
    source = trained[name]
    out = tmp_path / f"{name}-{to}.onnx"
    options = {"calibration": digits / "train.npz"} if to == "int8" else {}
    result = export(source, to, out, eval_data=digits / "test.npz", **options)
    x, y = _test_set(digits)
    ref = Classifier(source).scores(x)
    got = Classifier(out).scores(x)  # through run's checks: allowlist, sandbox, softmax detection
    agreement = (ref.argmax(1) == got.argmax(1)).mean()
    assert agreement >= 0.99, (name, to, agreement)
    assert 100 * ((ref.argmax(1) == y).mean() - (got.argmax(1) == y).mean()) <= 1.0
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # the final Softmax is float32
    assert len(np.unique(got)) > 1000  # not a handful of quantized probability levels
    assert result.accuracy is not None and result.accuracy.agreement >= 0.99
    # the compile contract: names, shapes, metadata, plus the precision
    a, b = onnx.load(source), onnx.load(out)
    onnx.checker.check_model(b, full_check=True)
    assert [v.SerializeToString() for v in a.graph.input] == [v.SerializeToString() for v in b.graph.input]
    assert [v.SerializeToString() for v in a.graph.output] == [v.SerializeToString() for v in b.graph.output]
    meta_a, meta_b = ({p.key: p.value for p in m.metadata_props} for m in (a, b))
    assert {k: meta_b[k] for k in meta_a} == meta_a
    assert meta_b["cnnspec.precision"] == to
    assert (b.producer_name, b.graph.name) == (a.producer_name, a.graph.name)
    weights = {t.data_type for t in b.graph.initializer if np.prod(t.dims) > 64}  # kernels, not the constants
    assert weights == ({onnx.TensorProto.INT8} if to == "int8" else {onnx.TensorProto.FLOAT16})
    weight_bytes = [sum(len(t.raw_data) for t in m.graph.initializer) for m in (a, b)]
    assert weight_bytes[1] < weight_bytes[0] * (0.3 if to == "int8" else 0.55), weight_bytes
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()


def test_int8_arithmetic_matches_onnx_reference(trained, digits, tmp_path):
    """onnxruntime's int8 kernels compute what the QDQ file says (onnx's numpy reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "q.onnx"
    export(trained["digits"], "int8", out, calibration=digits / "train.npz", samples=256)
    x = _test_set(digits)[0][:16]
    model = onnx.load(out)
    # NOTE: onnx's reference evaluator implements DequantizeLinear from opset 19 on; 13..19 changed only the types
    model.opset_import[0].version = max(model.opset_import[0].version, 19)
    want = ReferenceEvaluator(model).run(None, {"input": x})[0]
    got = Classifier(out).scores(x)
    np.testing.assert_allclose(got, want, atol=2e-2)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 15 / 16


def test_int8_calibration_summary_and_held_out_accuracy(trained, digits, tmp_path):
    out = tmp_path / "q.onnx"
    result = export(trained["digits"], "int8", out, calibration=digits / "train.npz", samples=300, method="percentile")
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    summary = json.loads(meta["cnnspec.calibration"])
    assert summary["method"] == "percentile" and summary["samples"] == 300 and summary["format"] == "QDQ"
    assert summary["reduce_range"] == needs_reduce_range()
    # no --eval: scored on the calibration data's samples not used for calibration
    assert result.accuracy.n == len(np.load(digits / "train.npz")["y"]) - 300
    assert "held out" in result.accuracy.data


def test_export_is_deterministic(trained, digits, tmp_path):
    for to, options in (("int8", {"calibration": digits / "train.npz", "samples": 200}), ("fp16", {})):
        first, second = tmp_path / f"a-{to}.onnx", tmp_path / f"b-{to}.onnx"
        export(trained["residual"], to, first, **options)
        export(trained["residual"], to, second, **options)
        assert first.read_bytes() == second.read_bytes(), to


# ---- the command: gate, errors, --json, foreign models ------------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    code = _run([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_gate_refuses_a_tiny_calibration_set_and_writes_nothing(trained, digits, tmp_path, capsys):
    np.savez(tmp_path / "tiny.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    out = tmp_path / "q.onnx"
    code, stdout, err = cli(capsys, "export", trained["digits"], "--to", "int8", "--calibration",
                            tmp_path / "tiny.npz", "--eval", digits / "test.npz", "-o", out, "--json")  # fmt: skip
    assert code == 1 and not out.exists()
    assert "exceeds --max-drop 1" in err and "nothing written" in err
    doc = json.loads(stdout)
    assert doc["path"] is None and doc["accuracy"]["drop_points"] > 1.0
    # a looser gate lets the same model through
    code, _, err = cli(capsys, "export", trained["digits"], "--to", "int8", "--calibration", tmp_path / "tiny.npz",
                       "--eval", digits / "test.npz", "-o", out, "--max-drop", "100")  # fmt: skip
    assert code == 0 and out.exists(), err


def test_json_document(trained, digits, tmp_path, capsys):
    out = tmp_path / "h.onnx"
    code, stdout, _ = cli(capsys, "export", trained["digits"], "--to", "fp16", "--eval", digits / "test.npz",
                          "-o", out, "--json")  # fmt: skip
    assert code == 0
    doc = json.loads(stdout)
    assert doc["path"] == str(out) and doc["precision"] == "fp16" and doc["bytes"] == out.stat().st_size
    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert set(doc["accuracy"]) >= {"fp32", "exported", "agreement", "drop_points", "n"}


def _bad_data(tmp_path: Path, kind: str) -> Path:
    if kind == "wrong channels":
        np.savez(tmp_path / "rgb.npz", x=np.zeros((8, 8, 8, 3), np.uint8), y=np.zeros(8, np.int64))
        return tmp_path / "rgb.npz"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((8, 8, 8), np.uint8))
    return tmp_path / "nolabels.npz"


@pytest.mark.parametrize("kind", ["wrong channels", "empty folder", "labels missing"])
def test_bad_calibration_data_is_one_clear_error(trained, tmp_path, capsys, kind):
    out = tmp_path / "q.onnx"
    code, _, err = cli(capsys, "export", trained["digits"], "--to", "int8", "--calibration", _bad_data(tmp_path, kind),
                       "-o", out)  # fmt: skip
    assert code == 1 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: calibration data:"), err
    expected = {"wrong channels": "channel", "empty folder": "no class subfolders", "labels missing": "'y'"}[kind]
    assert expected in lines[0]


def test_usage_errors(trained, digits, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    half = tmp_path / "half.onnx"
    export(trained["digits"], "fp16", half)
    code, _, err = cli(capsys, "export", half, "--to", "int8", "--calibration", digits / "train.npz", "-o", out)
    assert code == 2 and "already holds fp16 weights" in err
    cases = [
        (["--to", "int8"], "needs --calibration"),
        (["--to", "fp16", "--samples", "3"], "--samples does not apply to --to fp16"),
        (["--to", "fp16", "--max-drop", "2"], "--max-drop needs labelled data"),
        (["--to", "int4"], "'int4' is not one of 'int8', 'fp16', 'triton'"),
        (["--to", "fp16", "--max-batch-size", "8"], "--max-batch-size does not apply to --to fp16"),
        (["--to", "triton", "--calibration", str(digits / "train.npz")], "--calibration does not apply to --to triton"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, "export", trained["digits"], *args, "-o", out)
        assert code == 2 and message in err, (args, err)
    assert not out.exists()


def test_foreign_model_needs_its_preprocessing(trained, digits, tmp_path, capsys):
    model = onnx.load(trained["digits"])
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, foreign)
    out = tmp_path / "q.onnx"
    code, _, err = cli(capsys, "export", foreign, "--to", "int8", "--calibration", digits / "train.npz", "-o", out)
    assert code == 2 and "--scale/--mean/--std" in err and not out.exists()
    # its graph still divides by 255 itself: raw pixels in, so --scale 1
    code, _, err = cli(capsys, "export", foreign, "--to", "int8", "--calibration", digits / "train.npz", "-o", out,
                       "--scale", "1", "--eval", digits / "test.npz")  # fmt: skip
    assert code == 0, err
    assert "top-1 agreement" in err
    # and a cnnspec model refuses them, as run does
    code, _, err = cli(capsys, "export", trained["digits"], "--to", "fp16", "-o", out, "--scale", "2")
    assert code == 2 and "preprocesses inside the graph" in err


def test_inspect_shows_the_precision_and_the_export_summary(trained, digits, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    export(trained["digits"], "int8", out, calibration=digits / "train.npz", samples=200)
    code, stdout, _ = cli(capsys, "inspect", out)
    assert code == 0
    assert "graph: int8 weights" in stdout and "quantization ops: DequantizeLinear" in stdout
    assert "calibration: minmax on 200 samples of train.npz" in stdout
    assert "this file holds int8 weights" in stdout and "no longer matches" not in stdout


@pytest.mark.parametrize(
    ("machine", "flags", "reduce"),
    [("x86_64", {"avx2", "fma"}, True), ("x86_64", {"avx2", "avx512_vnni"}, False),
     ("AMD64", {"avx_vnni"}, False), ("aarch64", set(), False)],
)  # fmt: skip
def test_reduce_range_only_on_x86_without_vnni(machine, flags, reduce):
    assert needs_reduce_range(machine, flags) is reduce
