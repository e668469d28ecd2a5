"""`cnnspec export --to triton`: config.pbtxt parsed with the ModelConfig message that tritonclient ships, and every
name, data type and dimension cross-checked against the ONNX file read with onnx."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
import tritonclient
from conftest import assert_no_traceback, run_cli
from google.protobuf import text_format
from test_serve import LABELS, compile_model


def model_config_pb2():
    """tritonclient's generated model_config_pb2, loaded by path: importing it as tritonclient.grpc.* would need
    the grpc extra, and the message itself needs only protobuf."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PB2 = model_config_pb2()
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32"}


def parse_config(text: str):
    return text_format.Parse(text, PB2.ModelConfig())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return compile_model(tmp_path_factory.mktemp("triton"))


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("device,kind", [("cpu", "KIND_CPU"), ("cuda", "KIND_GPU")])
def test_repository_matches_the_onnx_file(tmp_path, model, device, kind):
    repo = tmp_path / "repo"
    code, out, err = run_cli("export", model, "--to", "triton", "-o", repo, "--name", "mnist", "--max-batch-size", "32",
                             "--instances", "2", "--device", device, "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["name"] == "mnist" and doc["max_batch_size"] == 32 and doc["repository"] == str(repo)
    assert sorted(doc["files"]) == sorted(
        str(repo / "mnist" / f) for f in ("config.pbtxt", "labels.txt", "1/model.onnx")
    )
    assert (repo / "mnist" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert (repo / "mnist" / "labels.txt").read_text().splitlines() == LABELS

    config = parse_config((repo / "mnist" / "config.pbtxt").read_text())
    onnx_model = onnx.load(str(model))
    (onnx_in,), (onnx_out,) = onnx_model.graph.input, onnx_model.graph.output
    assert config.name == "mnist" and config.backend == "onnxruntime"
    assert config.max_batch_size == 32
    assert isinstance(_dims(onnx_in)[0], str) and isinstance(_dims(onnx_out)[0], str)  # a symbolic batch
    (cin,), (cout,) = config.input, config.output
    assert cin.name == onnx_in.name and cout.name == onnx_out.name
    assert PB2.DataType.Name(cin.data_type) == ONNX_TO_TRITON[onnx_in.type.tensor_type.elem_type]
    assert PB2.DataType.Name(cout.data_type) == ONNX_TO_TRITON[onnx_out.type.tensor_type.elem_type]
    assert list(cin.dims) == _dims(onnx_in)[1:] and list(cout.dims) == _dims(onnx_out)[1:]
    assert cout.label_filename == "labels.txt"
    assert config.HasField("dynamic_batching")
    (group,) = config.instance_group
    assert group.count == 2 and PB2.ModelInstanceGroup.Kind.Name(group.kind) == kind


def test_the_parser_refuses_misspellings_and_bad_enums():
    """The check above is only as strict as this: the message rejects what Triton would reject."""
    with pytest.raises(text_format.ParseError):
        parse_config('name: "m"\nmax_batch_sise: 4\n')
    with pytest.raises(text_format.ParseError):
        parse_config('name: "m"\ninput [ { name: "x" data_type: TYPE_FLOAT32 dims: [1] } ]\n')


def test_default_name_and_plain_output(tmp_path, model):
    repo = tmp_path / "r"
    code, out, err = run_cli("export", model, "--to", "triton", "-o", repo)
    assert code == 0 and out == "" and "wrote" in err
    config = parse_config((repo / model.stem / "config.pbtxt").read_text())
    assert config.name == model.stem and config.max_batch_size == 64
    assert PB2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"


def test_fixed_batch_model_needs_max_batch_size_zero(tmp_path, model):
    fixed = onnx.load(str(model))
    for value in (fixed.graph.input[0], fixed.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed, str(path))
    code, _, err = run_cli("export", path, "--to", "triton", "-o", tmp_path / "r")
    assert code == 1 and "--max-batch-size 0" in err
    assert_no_traceback(err)
    code, _, err = run_cli("export", path, "--to", "triton", "-o", tmp_path / "r", "--max-batch-size", "0")
    assert code == 0, err
    config = parse_config((tmp_path / "r" / "fixed" / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 1, 28, 28]
    assert not config.HasField("dynamic_batching")


@pytest.mark.parametrize(
    "args,message,exit_code",
    [
        (["--name", "a/b"], "--name must be", 2),
        (["--to", "tensorrt"], "Invalid value for '--to'", 2),
        (["--instances", "0"], "Invalid value for '--instances'", 2),
    ],
)
def test_bad_options(tmp_path, model, args, message, exit_code):
    base = ["export", model, "-o", tmp_path / "r"] + ([] if "--to" in args else ["--to", "triton"])
    code, _, err = run_cli(*base, *args)
    assert code == exit_code and message in err
    assert_no_traceback(err)
    assert not (tmp_path / "r").exists()


def test_output_is_a_file(tmp_path, model):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = run_cli("export", model, "--to", "triton", "-o", target)
    assert code == 2 and "is a file" in err
