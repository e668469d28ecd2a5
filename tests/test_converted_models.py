"""Models converted by other tools, as `run`/`evaluate`/`inspect` meet them (issue 19's items for converted
models): probabilities recognised through Cast/Identity/Reshape after the Softmax, quantized models (QDQ and
dynamic quantization) through the operator allowlist, and `inspect` describing the graph rather than the spec.

References: the fp32 model run by onnxruntime, and onnx's reference evaluator for a hand-built QLinearConv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnspec.cli import _run
from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.modelfile import check_runnable
from cnnspec.runtime import Classifier
from cnnspec.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC_OPS = ["Conv", "MatMul", "Gemm"]  # quantize_dynamic: ConvInteger, MatMulInteger, DynamicQuantizeLinear


@pytest.fixture(scope="module")
def peaky(tmp_path_factory) -> Path:
    """specs/digits.yaml compiled, its last Dense scaled up so that the softmax is confident (as after training)."""
    model = compile_spec(load_spec(ROOT / "specs/digits.yaml"), seed=0)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "dense.weight":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 100, t.name))
    path = tmp_path_factory.mktemp("converted") / "peaky.onnx"
    path.write_bytes(model_bytes(model))
    return path


def _pixels(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 8, 8)).astype(np.float32)


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_fp16_converter_output_is_not_softmaxed_twice(peaky, tmp_path):
    """onnxruntime's float16 converter with keep_io_types ends the graph in Softmax -> Cast."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(peaky), keep_io_types=True)
    producer = {o: n.op_type for n in half.graph.node for o in n.output}
    assert producer["output"] == "Cast"
    path = tmp_path / "half.onnx"
    onnx.save(half, path)
    x = _pixels()
    want = _reference(peaky, x)
    assert want.max(axis=1).mean() > 0.8  # confident: a second softmax would flatten these to ~0.2
    np.testing.assert_allclose(Classifier(path).scores(x), want, atol=1e-2)


def test_identity_and_reshape_after_softmax_are_still_probabilities(peaky, tmp_path):
    model = onnx.load(peaky)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs"
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 10], np.int64), "shape"))
    model.graph.node.extend(
        [helper.make_node("Identity", ["probs"], ["same"]), helper.make_node("Reshape", ["same", "shape"], ["output"])]
    )
    path = tmp_path / "wrapped.onnx"
    onnx.save(model, path)
    x = _pixels()
    np.testing.assert_allclose(Classifier(path).scores(x), _reference(peaky, x), atol=1e-6)


def test_dynamically_quantized_model_passes_the_allowlist_and_runs(peaky, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(peaky), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=DYNAMIC_OPS)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops
    check_runnable(onnx.load(path), str(path))
    x = _pixels()
    got, want = Classifier(path).scores(x), _reference(peaky, x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_qdq_model_from_onnxruntime_passes_the_allowlist_and_runs(peaky, tmp_path):
    """A plain quantize_static QDQ model (not cnnspec's export): QuantizeLinear/DequantizeLinear around each op."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{"input": _pixels(16)}])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path / "qdq.onnx"
    quantize_static(str(peaky), str(path), Reader(), quant_format=QuantFormat.QDQ)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(path).graph.node}
    x = _pixels()
    got, want = Classifier(path).scores(x), _reference(peaky, x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def _qlinear_model() -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConv -> DequantizeLinear -> GlobalAveragePool -> Flatten: 4 channels out."""
    w = np.arange(-8, 28, dtype=np.int8).reshape(4, 1, 3, 3)
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"), numpy_helper.from_array(np.array(0.25, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        helper.make_node("GlobalAveragePool", ["y"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "qlinear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_qlinear_ops_pass_the_allowlist_and_compute_what_onnx_says(tmp_path):
    from onnx.reference import ReferenceEvaluator

    model = _qlinear_model()
    check_runnable(model, "qlinear")
    path = tmp_path / "qlinear.onnx"
    onnx.save(model, path)
    x = _pixels(4) / 4
    logits = Classifier(path, labels=list("abcd"))._run(x)
    np.testing.assert_allclose(logits, ReferenceEvaluator(model).run(None, {"input": x})[0], atol=0.26)


# ---- inspect ----------------------------------------------------------------------------------------------------


def _inspect(capsys, path: Path) -> str:
    assert _run(["inspect", str(path)]) == 0
    return capsys.readouterr().out


def test_inspect_describes_an_fp32_model_that_matches_its_spec(peaky, capsys):
    out = _inspect(capsys, peaky)
    assert "graph: fp32 weights" in out and "float32 " in out
    assert "no longer matches" not in out and "quantization ops" not in out


def test_inspect_describes_a_dynamically_quantized_model(peaky, tmp_path, capsys):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(peaky), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=DYNAMIC_OPS)
    out = _inspect(capsys, path)
    assert "graph: int8 weights" in out and "uint8 " in out
    assert "ConvInteger x2" in out and "DynamicQuantizeLinear x" in out
    assert "this file holds int8 weights" in out and "no longer matches" not in out


def test_inspect_says_when_the_graph_no_longer_matches_its_spec(tmp_path, capsys):
    """The embedded spec says 32 filters; the graph was compiled from 16 (metadata copied onto another graph)."""
    spec = load_spec(ROOT / "specs/digits.yaml")
    model = compile_spec(spec)
    other = compile_spec(spec.model_copy(update={"layers": [spec.layers[0].model_copy(update={"filters": 16}),
                                                            *spec.layers[1:]]}))  # fmt: skip
    del other.metadata_props[:]
    other.metadata_props.extend(model.metadata_props)
    path = tmp_path / "tampered.onnx"
    path.write_bytes(model_bytes(other))
    out = _inspect(capsys, path)
    assert "warning: the graph no longer matches its embedded spec" in out
    assert "weight tensors are not in the graph" in out
