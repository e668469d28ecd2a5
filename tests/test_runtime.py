"""Classifier, sessions, devices, model pre-checks, the sandboxed probe and evaluate, against numpy references."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.errors import ModelError, UsageError
from cnnspec.foreign import Preprocess, preprocess_from_options
from cnnspec.modelfile import check_runnable, parse_model
from cnnspec.runtime import Classifier, evaluate
from cnnspec.sessions import resolve_device
from cnnspec.spec import spec_from_data

SMALL = {
    "name": "small",
    "input": {"shape": [8, 8, 1]},
    "labels": ["a", "b", "c"],
    "preprocess": {"scale": 1 / 255},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 3, "activation": "softmax"},
    ],
}


def write_small(tmp_path, seed: int = 0, **meta) -> str:
    model = compile_spec(spec_from_data(SMALL), seed=seed)
    for key, value in meta.items():
        next(p for p in model.metadata_props if p.key == key).value = value
    path = tmp_path / "small.onnx"
    path.write_bytes(model_bytes(model))
    return str(path)


def foreign_model(path, classes: int = 5, chw=(3, 4, 4), seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """input 'pixels' [N,C,H,W] -> Flatten -> Gemm -> logits [N, classes] (no softmax, no preprocessing)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((classes, int(np.prod(chw)))).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "foreign",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", *chw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return str(path), w, b


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Classifier:
    return Classifier(write_small(tmp_path_factory.mktemp("m")))


def test_scores_of_a_softmax_model_sum_to_one(small):
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 8, 8)).astype(np.float32)
    probs = small.scores(x, batch_size=7)
    assert probs.shape == (50, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_top_k_larger_than_classes_gives_all_sorted(small):
    (result,) = small.predict(np.full((1, 8, 8), 100, np.float32), top_k=10)
    assert sorted(p.index for p in result.predictions) == [0, 1, 2]
    scores = [p.score for p in result.predictions]
    assert scores == sorted(scores, reverse=True)
    assert [p.label for p in result.predictions] == [["a", "b", "c"][p.index] for p in result.predictions]


def test_paths_pil_images_and_arrays_agree(small, tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    by_path = small.predict([str(tmp_path / "x.png")], top_k=3)[0]
    by_image = small.predict(Image.fromarray(arr), top_k=3)[0]
    by_array = small.predict(arr[None].astype(np.float32), top_k=3)[0]
    assert by_path.predictions == by_image.predictions == by_array.predictions
    assert by_path.path.endswith("x.png") and by_path.error is None


def test_many_chunks_keep_order_and_errors_in_place(small, tmp_path):
    paths = []
    for i in range(11):
        path = tmp_path / f"{i:02d}.png"
        Image.new("L", (8, 8), i * 20).save(path) if i != 5 else path.write_text("bad")
        paths.append(str(path))
    results = small.predict(paths, top_k=1, batch_size=1)  # chunks of 4: three chunks, pipelined
    assert [r.path for r in results] == paths and [r.error is not None for r in results].index(True) == 5
    for r, p in zip(results, paths, strict=True):
        if r.error is None:
            assert r.predictions == small.predict([p], top_k=1)[0].predictions


def test_bad_inputs_get_their_own_error(small, tmp_path):
    (tmp_path / "bad.png").write_text("text")
    results = small.predict([str(tmp_path / "bad.png"), np.zeros((1, 8, 8), np.float32)], top_k=1)
    assert "cannot identify image file" in results[0].error and not results[0].predictions
    assert results[1].error is None and len(results[1].predictions) == 1


def test_foreign_model_with_labels_and_preprocess_matches_numpy(tmp_path):
    path, w, b = foreign_model(tmp_path / "f.onnx")
    pre = Preprocess(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    clf = Classifier(path, labels=list("vwxyz"), preprocess=pre)
    x = np.random.default_rng(2).integers(0, 256, (6, 3, 4, 4)).astype(np.float32)
    xn = (x / 255 - np.array(pre.mean).reshape(1, 3, 1, 1)) / np.array(pre.std).reshape(1, 3, 1, 1)
    want = softmax(xn.reshape(6, -1) @ w.T + b)  # logits get a softmax
    np.testing.assert_allclose(clf.scores(x), want, rtol=1e-4, atol=1e-6)
    top = clf.predict(x[0], top_k=1)[0].predictions[0]
    assert top.label == "vwxyz"[int(want[0].argmax())]


def test_nan_scores_are_an_error_entry_not_invalid_json(tmp_path):
    path, w, b = foreign_model(tmp_path / "f.onnx")
    x = np.full((1, 3, 4, 4), np.inf, np.float32)  # inf pixels -> inf - inf logits -> NaN scores
    (result,) = Classifier(path).predict(x)
    assert "NaN or infinite scores" in result.error and result.predictions == []


def test_foreign_model_without_labels_uses_indices(tmp_path):
    clf = Classifier(foreign_model(tmp_path / "f.onnx")[0])
    assert clf.labels == ["0", "1", "2", "3", "4"] and not clf.is_cnnspec


def test_preprocess_options_are_refused_for_cnnspec_models(tmp_path):
    with pytest.raises(UsageError, match="preprocesses inside the graph"):
        Classifier(write_small(tmp_path), preprocess=Preprocess(scale=2.0))


def test_labels_count_must_match_outputs(tmp_path):
    with pytest.raises(UsageError, match="--labels gives 2 labels but the model has 5 outputs"):
        Classifier(foreign_model(tmp_path / "f.onnx")[0], labels=["a", "b"])


@pytest.mark.parametrize("labels", ['["a", "b"]', "{not json", json.dumps(["x" * 100] * 20000)])
def test_bad_metadata_labels_warn_and_use_indices(tmp_path, labels):
    clf = Classifier(write_small(tmp_path, **{"cnnspec.labels": labels}))
    assert clf.labels == ["0", "1", "2"]
    assert "showing class indices instead" in clf.warnings[0]


def test_preprocess_from_options():
    assert preprocess_from_options(None, None, None) is None
    p = preprocess_from_options(0.5, "1,2,3", "4")
    assert p == Preprocess(0.5, (1.0, 2.0, 3.0), (4.0,))
    for args in [(0.0, None, None), (None, "a,b", None), (None, None, "0"), (None, "nan", None)]:
        with pytest.raises(UsageError, match="Invalid value for '--"):
            preprocess_from_options(*args)


def test_devices_never_fall_back_silently(monkeypatch):
    import cnnspec.sessions as sessions

    monkeypatch.setattr(sessions, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=r"CUDA requested but CUDAExecutionProvider is not available \(available: CPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(sessions, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_device("auto") == "cuda"


def test_sandbox_turns_a_native_crash_into_one_error(tmp_path, monkeypatch):
    path = write_small(tmp_path)
    monkeypatch.setenv("CNNSPEC_TEST_HOOK", "crash_inference_worker")
    clf = Classifier(path)  # the probe runs in the background while images would be decoded
    with pytest.raises(ModelError, match=r"the inference worker crashed \(signal 11"):
        clf.predict(np.zeros((1, 8, 8), np.float32))


def test_evaluate_matches_a_numpy_reference(small):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    ev = evaluate(small, x, y, batch_size=16)
    probs = small.scores(x)
    assert ev.n == 40 and ev.accuracy == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert ev.loss == pytest.approx(float(-np.log(np.clip(probs[np.arange(40), y], 1e-7, 1 - 1e-7)).mean()), rel=1e-6)
    confusion = np.array(ev.confusion)
    assert confusion.sum() == 40 and np.trace(confusion) == round(ev.accuracy * 40)
    assert [c["n"] for c in ev.per_class] == np.bincount(y, minlength=3).tolist()


# ---- model pre-checks (RELIABILITY rows 33-35), on protos, before onnxruntime ------------------------------------


def mutated(tmp_path, edit) -> onnx.ModelProto:
    model = onnx.load(write_small(tmp_path))
    edit(model)
    return model


def _set_conv_strides(m):
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [0, 1]


def _short_raw(m):
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]


def _both_fields(m):
    m.graph.initializer[0].float_data.append(1.0)


def _custom_domain(m):
    m.graph.node[-1].domain = "com.evil"


def _loop(m):
    m.graph.node.append(helper.make_node("Loop", ["a", "b"], ["c"], body=helper.make_graph([], "g", [], [])))


def _constant_of_shape(m):
    m.graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["huge"]))


def _function(m):
    m.functions.append(onnx.FunctionProto(name="f", domain="local"))


def _nhwc(m):
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[3].dim_value = 8, 1


def _dynamic(m):
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"


def _int_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64


def _two_inputs(m):
    m.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 1, 8, 8]))


def _rank3_output(m):
    m.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 1


def _conv_transpose_output_padding(m):
    m.graph.node.append(helper.make_node("ConvTranspose", ["a", "w"], ["y"], strides=[2, 2], output_padding=[0, 5]))


def _conv_transpose_output_shape(m):
    m.graph.node.append(helper.make_node("ConvTranspose", ["a", "w"], ["y"], output_shape=[9999, 9999]))


CHECKS = [
    (_set_conv_strides, "invalid attribute strides"),
    (_conv_transpose_output_padding, "invalid attribute output_padding=\\[0, 5\\]"),
    (_conv_transpose_output_shape, "ConvTranspose output_shape is not supported"),
    (_short_raw, "initializer size mismatch"),
    (_both_fields, "ambiguous initializer"),
    (_custom_domain, "operator com.evil::Softmax is not supported by cnnspec run"),
    (_loop, "operator Loop is not supported"),
    (_constant_of_shape, "operator ConstantOfShape is not supported"),
    (_function, "model-local functions are not supported"),
    (_nhwc, None),
    (_dynamic, "model input must be float32 \\[N,C,H,W\\] with fixed C,H,W"),
    (_int_input, "model input must be float32 \\[N,C,H,W\\] with fixed C,H,W"),
    (_two_inputs, "model input must be float32 \\[N,C,H,W\\] with fixed C,H,W"),
    (_rank3_output, "model output must be float32 \\[N, classes\\]"),
]


@pytest.mark.parametrize("edit,match", CHECKS, ids=[e.__name__ for e, _ in CHECKS])
def test_model_prechecks(tmp_path, edit, match):
    model = mutated(tmp_path, edit)
    if match is None:  # NHWC [N,8,8,1] is a valid [N,C,H,W] declaration: the mismatch shows in onnxruntime
        return
    with pytest.raises(ModelError, match=match):
        check_runnable(model, "m.onnx")


def test_every_layer_kind_and_activation_compiles_to_allowed_ops():
    """`cnnspec run` pre-checks models against an operator allowlist: cnnspec's own models always pass it."""
    from cnnspec.compiler import compile_spec
    from cnnspec.layers.base import Activation
    from cnnspec.spec import spec_from_data

    conv = {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"}
    layers = [
        {"type": "UpSampling2D"}, {"type": "UpSampling2D", "interpolation": "bilinear"},
        {"type": "Cropping2D", "cropping": 1}, {"type": "Reshape", "target_shape": [-1, 4, 2]},
        {"type": "Identity"}, {"type": "Rescaling", "scale": 0.5, "offset": 1}, {"type": "ReLU"},
        {"type": "ReLU", "max_value": 6}, {"type": "ReLU", "negative_slope": 0.1},
        {"type": "ReLU", "max_value": 1, "negative_slope": 0.1, "threshold": 0.5}, {"type": "LeakyReLU"},
        {"type": "PReLU"}, {"type": "ELU"}, {"type": "Softmax", "axis": 1},
    ]  # fmt: skip
    layers += [conv | {"activation": name} for name in Activation.__args__]
    layers += [{"type": "Reshape", "target_shape": [-1]}, {"type": "Dense", "units": 3}, {"type": "Softmax"}]
    spec = spec_from_data({"name": "all", "input": {"shape": [4, 4, 2]}, "layers": layers})
    check_runnable(compile_spec(spec), "all.onnx")


def test_sparse_initializer_refused(tmp_path):
    model = mutated(tmp_path, lambda m: m.graph.sparse_initializer.add())
    with pytest.raises(ModelError, match="sparse initializers are not supported"):
        check_runnable(model, "m.onnx")


# ---- mutation fuzzing of the pre-checks: junk models end in ModelError, never in another exception ---------------


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_models_fail_only_with_model_error(data):
    raw = bytearray(SMALL_BYTES())
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at : at + data.draw(st.integers(1, 32))]
    try:
        info = check_runnable(parse_model(bytes(raw), "fuzz.onnx"), "fuzz.onnx")
    except ModelError:
        return
    assert len(info.chw) == 3 and all(d > 0 for d in info.chw)


_CACHE: dict[str, bytes] = {}


def SMALL_BYTES() -> bytes:  # noqa: N802 - a lazily built constant
    if "small" not in _CACHE:
        _CACHE["small"] = model_bytes(compile_spec(spec_from_data(SMALL), seed=0))
    return _CACHE["small"]


def test_reader_classifies_while_a_writer_recompiles(tmp_path):
    """atomic_write replaces the file in one rename: every read sees the old or the new model, whole."""
    import threading

    from cnnspec.files import atomic_write

    models = [model_bytes(compile_spec(spec_from_data(SMALL), seed=s)) for s in (1, 2)]
    path = tmp_path / "live.onnx"
    atomic_write(path, models[0])
    x = np.random.default_rng(4).integers(0, 256, (2, 1, 8, 8)).astype(np.float32)
    expected = []
    for i, data in enumerate(models):
        (tmp_path / f"{i}.onnx").write_bytes(data)
        expected.append(Classifier(tmp_path / f"{i}.onnx", sandbox=False).scores(x))
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            atomic_write(path, models[i % 2])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(30):
            got = Classifier(path, sandbox=False).scores(x)
            assert any(np.allclose(got, want, atol=1e-6) for want in expected)
    finally:
        stop.set()
        thread.join()


def test_models_with_the_conv_variants_pass_the_prechecks_and_run(tmp_path):
    layers = [
        {"type": "DepthwiseConv2D", "kernel_size": 3, "depth_multiplier": 2, "padding": "same", "strides": 2},
        {"type": "SeparableConv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
        {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 2, "strides": 3, "output_padding": 1},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 3, "activation": "softmax"},
    ]
    spec = spec_from_data({"name": "variants", "input": {"shape": [8, 8, 1]}, "layers": layers})
    path = tmp_path / "variants.onnx"
    path.write_bytes(model_bytes(compile_spec(spec)))
    check_runnable(onnx.load(str(path)), "variants.onnx")
    scores = Classifier(str(path)).scores(np.zeros((2, 1, 8, 8), np.float32))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
