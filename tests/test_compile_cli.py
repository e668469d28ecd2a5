"""`cnnspec compile` and `cnnspec inspect` as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from conftest import ROOT, assert_no_traceback, run_cli
from onnx import TensorProto, helper

from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.spec import load_spec

DIGITS = ROOT / "specs" / "digits.yaml"


def strays(folder: Path) -> list[str]:
    """Temp files a writer left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_compile_writes_the_same_bytes_as_the_api(tmp_path: Path) -> None:
    out = tmp_path / "digits.onnx"
    code, stdout, stderr = run_cli("compile", DIGITS, "-o", out, "--seed", "3")
    assert code == 0, stderr
    assert f"wrote {out}" in stderr
    assert out.read_bytes() == model_bytes(compile_spec(load_spec(DIGITS), seed=3))
    assert strays(tmp_path) == []


def test_compile_seed_and_opset(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run_cli("compile", DIGITS, "-o", a)[0] == 0
    assert run_cli("compile", DIGITS, "-o", b, "--seed", "1", "--opset", "20")[0] == 0
    assert a.read_bytes() != b.read_bytes()
    assert [o.version for o in onnx.load(b).opset_import] == [20]
    onnx.checker.check_model(onnx.load(b), full_check=True)


@pytest.mark.parametrize("opset", ["0", "12", str(onnx.defs.onnx_opset_version() + 1)])
def test_compile_refuses_an_unsupported_opset(tmp_path: Path, opset: str) -> None:
    out = tmp_path / "m.onnx"
    code, _, stderr = run_cli("compile", DIGITS, "-o", out, "--opset", opset)
    assert code == 2
    assert f"error: --opset {opset} is not supported: use 13 to {onnx.defs.onnx_opset_version()}" in stderr
    assert_no_traceback(stderr)
    assert not out.exists()


def test_a_failed_compile_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninput: {shape: [4, 4, 1]}\nlayers:\n  - {type: Conv2D, filters: 2, kernel_size: 5}\n")
    code, _, stderr = run_cli("compile", bad, "-o", out)
    assert code == 1 and stderr.startswith("error:")
    assert_no_traceback(stderr)
    assert out.read_bytes() == b"previous model"
    assert strays(tmp_path) == []


def test_an_interrupted_compile_never_leaves_a_partial_model(tmp_path: Path) -> None:
    """SIGKILL between the temp file's fsync and the rename: the old file stays whole."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")
    env = dict(os.environ, CNNSPEC_TEST_HOOK="pause_before_replace")
    proc = subprocess.Popen([sys.executable, "-m", "cnnspec", "compile", str(DIGITS), "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not strays(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert strays(tmp_path), "the writer never created its temp file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert out.read_bytes() == b"previous model"
    assert run_cli("compile", DIGITS, "-o", out)[0] == 0  # the next writer cleans up the dead one's temp
    assert strays(tmp_path) == []
    onnx.checker.check_model(onnx.load(out), full_check=True)


SMALL = """name: small
input: {shape: [6, 6, 1]}
labels: [cat, dog]
preprocess: {scale: 0.00392156862745098}
layers:
  - {type: Conv2D, name: stem, filters: 4, kernel_size: 3, activation: relu}
  - {type: GlobalAveragePooling2D}
  - {type: Dense, units: 2, activation: softmax}
"""


def test_inspect_a_cnnspec_model_shows_its_summary(tmp_path: Path) -> None:
    spec, out = tmp_path / "small.yaml", tmp_path / "small.onnx"
    spec.write_text(SMALL)
    assert run_cli("compile", spec, "-o", out)[0] == 0
    code, stdout, stderr = run_cli("inspect", out)
    assert code == 0, stderr
    # params: stem 4*1*3*3 + 4 = 40, dense 2*4 + 2 = 10
    for text in ("small", "stem", "4x4x4", "global_average_pooling2d", "dense", "50", "labels: cat, dog",
                 "0.00392156862745098", "made by cnnspec", "opset 17"):  # fmt: skip
        assert text in stdout, text


def test_inspect_a_foreign_model_shows_inputs_outputs_and_op_counts(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"]),
             helper.make_node("Relu", ["y"], ["z"])]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
    )  # fmt: skip
    path = tmp_path / "foreign.onnx"
    path.write_bytes(helper.make_model(graph, producer_name="elsewhere").SerializeToString())
    code, stdout, stderr = run_cli("inspect", path)
    assert code == 0, stderr
    assert "not made by cnnspec (producer elsewhere" in stdout
    assert "input a: float32[N, 3]" in stdout and "input b: float32[1, 3]" in stdout
    assert "output z: float32[N, 3]" in stdout
    assert "ops: Relu x2, Add x1" in stdout


def test_inspect_refuses_junk_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\xffnot a model at all")
    code, stdout, stderr = run_cli("inspect", path)
    assert code == 1 and "not a valid ONNX model" in stderr
    assert_no_traceback(stdout, stderr)
