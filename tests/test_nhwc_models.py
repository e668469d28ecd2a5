"""Issue 19: models made elsewhere with channels-last input (Keras, tf2onnx) are detected, said so, and fed NHWC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cnnspec.runtime import Classifier


@pytest.fixture(scope="module")
def nhwc(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """[N, 6, 5, 3] -> Flatten -> Gemm(90 x 2) -> Softmax, the way a Keras export flattens (H, W, C order)."""
    work = tmp_path_factory.mktemp("nhwc")
    weights = np.random.default_rng(0).normal(0, 0.01, (90, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["y"], axis=1),
        ],
        "keras_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 5, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(work / "keras.onnx"))
    pixels = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "rgb.png")
    z = pixels.reshape(1, -1).astype(np.float64) @ weights.astype(np.float64)
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return work, expected[0]


def test_channels_last_input_is_detected_and_fed_as_nhwc(nhwc):
    work, expected = nhwc
    clf = Classifier(work / "keras.onnx")
    assert clf.chw == (3, 6, 5) and clf.info.layout == "nhwc"
    assert "channels-last input [N, 6, 5, 3]" in clf.warnings[0]
    (result,) = clf.predict(work / "rgb.png", top_k=2)
    scores = sorted((p.index, p.score) for p in result.predictions)
    np.testing.assert_allclose([s for _, s in scores], expected, rtol=1e-4)


def test_layout_can_be_forced(nhwc):
    work, _ = nhwc
    clf = Classifier(work / "keras.onnx", layout="nchw")
    assert clf.chw == (6, 5, 3) and clf.warnings == []


def test_run_says_it_read_the_model_as_channels_last(nhwc):
    work, expected = nhwc
    code, out, err = run_cli("run", work / "keras.onnx", work / "rgb.png", "--json", "--top-k", "1")
    assert code == 0, err
    assert "warning: the model takes channels-last input" in err
    code, _, err = run_cli("run", work / "keras.onnx", work / "rgb.png", "--layout", "nchw")
    assert code == 1 and "warning" not in err


def test_cnnspec_models_are_never_guessed_channels_last(tmp_path: Path):
    from cnnspec.compiler import compile_to_file
    from cnnspec.spec import spec_from_data

    narrow = {  # 8 channels of 8 x 4: [N, 8, 8, 4] would read as NHWC if it were guessed
        "name": "narrow",
        "input": {"shape": [8, 4, 8]},
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}],
    }
    clf = Classifier(compile_to_file(spec_from_data(narrow), tmp_path / "n.onnx"))
    assert clf.chw == (8, 8, 4) and clf.info.layout == "nchw" and clf.warnings == []
