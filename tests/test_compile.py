"""The compiled model's contract (issue 3): names, layouts, attributes, metadata, opsets, determinism,
initializer statistics and a golden text form.

Regenerate the golden files after an intended change with: CNNSPEC_REGEN_GOLDEN=1 pytest tests/test_compile.py
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.printer
import onnxruntime as ort
import pytest
from test_compile_properties import inferred_shapes, layer_output_tensors, old_runtime_outputs

from cnnspec import __version__
from cnnspec.analysis import analyze, check
from cnnspec.compiler import DEFAULT_OPSET, compile_spec, initial_params, model_bytes
from cnnspec.errors import SpecError, UsageError
from cnnspec.initializers import TRUNCATED_STDDEV, initialize, layer_rng
from cnnspec.shapes import hwc_to_chw
from cnnspec.spec import load_spec, normalized, spec_from_data

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
SPEC_FILES = sorted(
    p for p in (ROOT / "specs").glob("*") if p.suffix in (".yaml", ".yml", ".json") and p.name != "schema.json"
)

# Every layer kind and the options whose defaults differ between ONNX and Keras.
FULL = {
    "name": "full",
    "input": {"shape": [9, 7, 4]},
    "labels": ["a", "b", "c"],
    "preprocess": {"scale": 0.00392156862745098, "mean": [0.5, 0.4, 0.3, 0.2], "std": 0.25},
    "layers": [
        {"type": "Conv2D", "filters": 6, "kernel_size": [3, 2], "strides": 2, "padding": "same", "groups": 2,
         "activation": "leaky_relu"},
        {"type": "BatchNormalization", "momentum": 0.9, "epsilon": 0.01},
        {"type": "ZeroPadding2D", "padding": [[1, 0], [0, 2]]},
        {"type": "MaxPooling2D", "pool_size": 2, "padding": "same"},
        {"type": "Conv2D", "name": "dilated", "filters": 4, "kernel_size": 2, "dilation_rate": 2, "padding": 1,
         "activation": "gelu"},
        {"type": "AveragePooling2D", "pool_size": 3, "strides": 1, "padding": "same"},
        {"type": "Activation", "activation": "elu"},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.5},
        {"type": "Dense", "units": 8, "activation": "silu"},
        {"type": "BatchNormalization", "center": False},
        {"type": "Dense", "units": 3, "activation": "softmax", "use_bias": False},
    ],
}  # fmt: skip
GAP = {
    "name": "gap",
    "input": {"shape": [6, 6, 1]},
    "layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "GlobalMaxPooling2D"},
               {"type": "Dense", "units": 2}],
}  # fmt: skip


def compiled(data: dict, **kwargs) -> onnx.ModelProto:
    return compile_spec(spec_from_data(data), **kwargs)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def nodes_of(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def full() -> onnx.ModelProto:
    return compiled(FULL)


# ---- inputs, outputs, initializers ------------------------------------------------------------------


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_one_float_input_and_output_with_a_symbolic_batch(full) -> None:
    (inp,), (out,) = full.graph.input, full.graph.output
    assert (inp.name, dims(inp)) == ("input", ["batch", 4, 9, 7])
    assert (out.name, dims(out)) == ("output", ["batch", 3])
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for batch in (1, 5):
        assert run(full, np.zeros((batch, 4, 9, 7), np.float32)).shape == (batch, 3)


def test_initializer_names_and_pytorch_layouts(full) -> None:
    shapes = {t.name: list(t.dims) for t in full.graph.initializer if "/" not in t.name}
    assert shapes == {
        "conv2d.weight": [6, 2, 3, 2], "conv2d.bias": [6],  # [out, in/groups, kh, kw]
        "batch_normalization.weight": [6], "batch_normalization.bias": [6],
        "batch_normalization.running_mean": [6], "batch_normalization.running_var": [6],
        "dilated.weight": [4, 6, 2, 2], "dilated.bias": [4],
        "dense.weight": [8, 3 * 3 * 4], "dense.bias": [8],  # [out, in]
        "batch_normalization_1.weight": [8],
        "batch_normalization_1.running_mean": [8], "batch_normalization_1.running_var": [8],
        "dense_1.weight": [3, 8],
    }  # fmt: skip
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in full.graph.initializer if "/" not in t.name)
    names = [t.name for t in full.graph.initializer]
    assert len(names) == len(set(names))


def test_batch_norm_starts_as_identity_statistics(full) -> None:
    values = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    np.testing.assert_array_equal(values["batch_normalization.weight"], 1.0)
    np.testing.assert_array_equal(values["batch_normalization.bias"], 0.0)
    np.testing.assert_array_equal(values["batch_normalization.running_mean"], 0.0)
    np.testing.assert_array_equal(values["batch_normalization.running_var"], 1.0)


# ---- attributes: explicit pads, Keras defaults written ----------------------------------------------


def test_explicit_pads_and_never_auto_pad(full) -> None:
    for node in full.graph.node:
        assert "auto_pad" not in attrs(node), node.name
    pads = {n.name: attrs(n)["pads"] for n in full.graph.node if n.op_type in ("Conv", "MaxPool", "AveragePool")}
    # conv2d: 9x7, kernel 3x2, stride 2, same -> out 5x4: pad h (3-1)... total 2 -> (1, 1); w total 1 -> (0, 1)
    assert pads == {
        "conv2d/Conv": [1, 0, 1, 1],
        "max_pooling2d/MaxPool": [0, 0, 0, 0],  # 6x6 -> 3x3 needs no pad
        "dilated/Conv": [1, 1, 1, 1],
        "average_pooling2d/AveragePool": [1, 1, 1, 1],
    }
    (pad,) = nodes_of(full, "Pad")
    values = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    assert values[pad.input[1]].tolist() == [0, 0, 1, 0, 0, 0, 0, 2]  # [x1_begin..., x1_end...] in NCHW


def test_same_padding_puts_the_odd_pixel_bottom_right() -> None:
    model = compiled(
        {"name": "odd", "input": {"shape": [5, 6, 1]}, "layers": [
            {"type": "Conv2D", "filters": 1, "kernel_size": 2, "strides": 2, "padding": "same"},
            {"type": "MaxPooling2D", "pool_size": 2, "strides": 1, "padding": "same"}, {"type": "Flatten"}]}
    )  # fmt: skip
    conv, pool = nodes_of(model, "Conv")[0], nodes_of(model, "MaxPool")[0]
    assert attrs(conv)["pads"] == [0, 0, 1, 0]  # h: 5 -> 3 needs 1 (bottom); w: 6 -> 3 needs 0
    assert attrs(pool)["pads"] == [0, 0, 1, 1]  # k 2 stride 1 needs 1 per axis, at the end


def test_keras_defaults_are_written_explicitly(full) -> None:
    (avg,) = nodes_of(full, "AveragePool")
    assert attrs(avg)["count_include_pad"] == 0
    (leaky,) = nodes_of(full, "LeakyRelu")
    assert attrs(leaky)["alpha"] == pytest.approx(0.2)
    (elu,) = nodes_of(full, "Elu")
    assert attrs(elu)["alpha"] == pytest.approx(1.0)
    bn = {n.name: attrs(n) for n in nodes_of(full, "BatchNormalization")}
    assert bn["batch_normalization/BatchNormalization"]["epsilon"] == pytest.approx(0.01)
    assert bn["batch_normalization/BatchNormalization"]["momentum"] == pytest.approx(0.9)
    assert bn["batch_normalization_1/BatchNormalization"]["epsilon"] == pytest.approx(0.001)
    assert bn["batch_normalization_1/BatchNormalization"]["momentum"] == pytest.approx(0.99)
    (softmax,) = nodes_of(full, "Softmax")
    assert attrs(softmax)["axis"] == 1
    assert {attrs(g)["transB"] for g in nodes_of(full, "Gemm")} == {1}


def test_no_dropout_and_a_lean_graph(full) -> None:
    ops = [n.op_type for n in full.graph.node]
    assert "Dropout" not in ops
    assert not {"Identity", "Cast", "Transpose", "Reshape", "Shape"} & set(ops)
    assert ops[:2] == ["Mul", "Add"]  # preprocess comes first
    small = {"name": "small", "input": {"shape": [8, 8, 1]}, "preprocess": {"scale": 0.00392156862745098},
             "layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
                        {"type": "MaxPooling2D"}, {"type": "GlobalAveragePooling2D"},
                        {"type": "Dense", "units": 8, "activation": "relu"}, {"type": "Dropout", "rate": 0.2},
                        {"type": "Dense", "units": 3, "activation": "softmax"}]}  # fmt: skip
    assert [n.op_type for n in compiled(small).graph.node] == [
        "Mul", "Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Relu", "Gemm", "Softmax",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("prep", "ops"),
    [(None, []), ({"scale": 1.0}, []), ({"scale": 0.5}, ["Mul"]), ({"mean": 3.0}, ["Add"]), ({"std": 2.0}, ["Mul"]),
     ({"scale": 0.5, "mean": [0.1, 0.2]}, ["Mul", "Add"])],
)  # fmt: skip
def test_preprocess_is_the_first_computation_and_only_what_it_needs(prep, ops) -> None:
    data = {"name": "p", "input": {"shape": [2, 2, 2]}, "layers": [{"type": "Flatten"}]}
    model = compiled(data | ({"preprocess": prep} if prep else {}))
    pre = [n for n in model.graph.node if n.name.startswith("preprocess/")]
    assert [n.op_type for n in pre] == ops
    assert model.graph.node[0].input[0] == "input"
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    p = {"scale": 1.0, "mean": [0.0], "std": [1.0]} | (prep or {})
    mean = np.broadcast_to(np.asarray(p["mean"], np.float64), (2,)).reshape(1, 2, 1, 1)
    expected = ((x * p["scale"] - mean) / np.asarray(p["std"])).reshape(1, -1)
    np.testing.assert_allclose(run(model, x), expected, rtol=1e-6)


def test_node_names_carry_layer_names(full) -> None:
    names = [row.name for row in check(spec_from_data(FULL)).layers]
    for node in full.graph.node:
        scope = node.name.split("/")[0]
        assert scope in names or scope == "preprocess", node.name
    scopes = {n.name.split("/")[0] for n in full.graph.node}
    assert scopes == {"preprocess", *names} - {"dropout"}  # Dropout emits nothing at inference


def test_layers_named_like_graph_tensors_do_not_collide() -> None:
    # ('input' itself is reserved for the model input: graph specs refer to it by that name)
    layers = [{"type": "Conv2D", "name": "labels", "filters": 2, "kernel_size": 1},
              {"type": "Conv2D", "name": "preprocess", "filters": 2, "kernel_size": 1},
              {"type": "Flatten", "name": "output"}, {"type": "Dense", "name": "const", "units": 2}]  # fmt: skip
    model = compiled({"name": "names", "input": {"shape": [2, 2, 1]}, "preprocess": {"scale": 0.5}, "layers": layers})
    onnx.checker.check_model(model, full_check=True)
    assert run(model, np.ones((2, 1, 2, 2), np.float32)).shape == (2, 2)


# ---- checker, shape inference, metadata, opsets --------------------------------------------------------


def test_full_checker_and_shape_inference_agree_with_the_validator(full) -> None:
    onnx.checker.check_model(full, full_check=True)
    report = check(spec_from_data(FULL))
    shapes = inferred_shapes(full)
    for row, tensor in zip(report.layers, layer_output_tensors(full, [r.name for r in report.layers]), strict=True):
        assert shapes[tensor] == ["batch", *hwc_to_chw(row.output_shape)], row.name


def test_metadata_props(full) -> None:
    meta = {p.key: p.value for p in full.metadata_props}
    assert set(meta) >= {"cnnspec.spec", "cnnspec.labels", "cnnspec.preprocess", "cnnspec.version",
                         "cnnspec.input_layout"}  # fmt: skip
    spec = spec_from_data(FULL)
    assert json.loads(meta["cnnspec.spec"]) == normalized(spec)
    assert normalized(spec_from_data(json.loads(meta["cnnspec.spec"]))) == normalized(spec)  # a fixed point
    assert json.loads(meta["cnnspec.labels"]) == ["a", "b", "c"]
    assert json.loads(meta["cnnspec.preprocess"]) == {"scale": 1 / 255, "mean": [0.5, 0.4, 0.3, 0.2], "std": [0.25]}
    assert meta["cnnspec.version"] == __version__
    assert meta["cnnspec.input_layout"] == "NCHW"
    assert (full.producer_name, full.graph.name) == ("cnnspec", "full")


def test_metadata_defaults_and_a_null_activation_round_trip() -> None:
    data = {"name": "n", "input": {"shape": [2, 2, 1]}, "layers": [{"type": "Activation", "activation": None},
                                                                    {"type": "Flatten"}]}  # fmt: skip
    meta = {p.key: p.value for p in compiled(data).metadata_props}
    assert json.loads(meta["cnnspec.labels"]) == ["0", "1", "2", "3"]
    assert json.loads(meta["cnnspec.preprocess"]) == {"scale": 1.0, "mean": [0.0], "std": [1.0]}
    embedded = json.loads(meta["cnnspec.spec"])
    assert analyze(spec_from_data(embedded)).valid  # Activation(null) survives exclude_none


def test_default_opset_and_ir_version_load_in_older_runtimes(full) -> None:
    assert DEFAULT_OPSET == 17
    assert [(o.domain, o.version) for o in full.opset_import] == [("", 17)]
    assert full.ir_version <= 10  # onnxruntime-training 1.19.2 reads IR <= 10


def zero_padding_then(pool: str) -> dict:
    layers = [
        {"type": "ZeroPadding2D", "padding": [[1, 2], [2, 1]]},
        {"type": pool, "pool_size": 2},
        {"type": "Flatten"},
    ]
    return {"name": "zp", "input": {"shape": [5, 4, 2]}, "layers": layers}


def test_models_run_the_same_in_onnxruntime_training_1_19(tmp_path: Path) -> None:
    """The IR/opset choice is for this runtime too (.ci/ort_training_env.sh builds it; skipped where absent).

    Its PadFusion would fold ZeroPadding2D into a following pool (wrong values, or a load failure when
    the pad reaches the kernel): all-negative inputs show it.
    """
    rng = np.random.default_rng(0)
    cases = {"full": (compiled(FULL), rng.uniform(0, 255, (3, 4, 9, 7)).astype(np.float32))}
    for pool in ("MaxPooling2D", "AveragePooling2D"):
        cases[pool] = (compiled(zero_padding_then(pool)), -rng.uniform(1, 2, (2, 2, 5, 4)).astype(np.float32))
    outputs = old_runtime_outputs(cases, tmp_path)
    for stem, (model, x) in cases.items():
        np.testing.assert_allclose(outputs[stem], run(model, x), rtol=1e-5, atol=1e-6, err_msg=stem)


def test_a_pad_before_a_pool_keeps_its_zeros_explicit() -> None:
    """-0.0 (== 0, not all-zero bytes) stops onnxruntime <= 1.19 folding it into the pool; before a Conv
    the plain zero Pad stays, so onnxruntime folds it into the Conv's pads (correct there)."""
    for pool in ("MaxPooling2D", "AveragePooling2D"):
        model = compiled(zero_padding_then(pool))
        (pad,) = nodes_of(model, "Pad")
        values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        assert len(pad.input) == 3 and values[pad.input[2]] == 0 and np.signbit(values[pad.input[2]])
    layers = [{"type": "ZeroPadding2D"}, {"type": "Conv2D", "filters": 1, "kernel_size": 2}, {"type": "Flatten"}]
    (pad,) = nodes_of(compiled(zero_padding_then("MaxPooling2D") | {"layers": layers}), "Pad")
    assert len(pad.input) == 2


@pytest.mark.parametrize("opset", [13, 18, 20, onnx.defs.onnx_opset_version()])
def test_every_supported_opset_compiles_checks_and_runs(opset) -> None:
    model = compiled(FULL, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [opset]
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 9, 7)).astype(np.float32)
    np.testing.assert_allclose(run(model, x), run(compiled(FULL), x), rtol=1e-5, atol=1e-6)  # same network


@pytest.mark.parametrize("opset", [0, 12, onnx.defs.onnx_opset_version() + 1])
def test_unsupported_opsets_are_refused_with_the_range(opset) -> None:
    with pytest.raises(
        UsageError, match=rf"--opset {opset} is not supported: use 13 to {onnx.defs.onnx_opset_version()}"
    ):
        compiled(FULL, opset=opset)


def test_weights_over_the_protobuf_limit_are_refused_before_allocating() -> None:
    data = {"name": "huge", "input": {"shape": [512, 512, 3]},
            "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 1000}]}  # fmt: skip
    with pytest.raises(SpecError, match="2 GiB"):
        compiled(data)


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_every_shipped_spec_compiles_checks_and_runs(path: Path) -> None:
    spec = load_spec(path)
    report = check(spec)
    model = compile_spec(spec)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, *hwc_to_chw(spec.input_shape))).astype(np.float32)
    out = run(model, x)
    assert out.shape == (2, *report.output_shape)
    assert np.isfinite(out).all()


# ---- determinism -------------------------------------------------------------------------------------

COMPILE_AND_HASH = (
    "import hashlib, json, sys\n"
    "from cnnspec.compiler import compile_spec, model_bytes\n"
    "from cnnspec.spec import spec_from_data\n"
    "print(hashlib.sha256(model_bytes(compile_spec(spec_from_data(json.loads(sys.argv[1])), seed=7))).hexdigest())\n"
)


def test_compiling_twice_gives_identical_bytes() -> None:
    assert model_bytes(compiled(FULL, seed=3)) == model_bytes(compiled(FULL, seed=3))
    assert model_bytes(compiled(FULL, seed=3)) != model_bytes(compiled(FULL, seed=4))


def test_same_bytes_in_processes_with_different_hash_seeds() -> None:
    digests = set()
    for hash_seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-c", COMPILE_AND_HASH, json.dumps(FULL)], capture_output=True,
                              text=True, env=env, check=True, timeout=60)  # fmt: skip
        digests.add(proc.stdout.strip())
    digests.add(hashlib.sha256(model_bytes(compiled(FULL, seed=7))).hexdigest())
    assert len(digests) == 1


def weights(data: dict) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in compiled(data).graph.initializer if "/" not in t.name}


def test_changing_one_layer_leaves_the_others_weights_unchanged() -> None:
    before = weights(FULL)
    changed = copy.deepcopy(FULL)
    changed["layers"][4]["kernel_initializer"] = "he_normal"  # 'dilated'
    changed["layers"][0]["activation"] = "relu"
    changed["layers"].insert(3, {"type": "Dropout", "rate": 0.1})
    after = weights(changed)
    assert set(after) == set(before)
    assert not np.array_equal(after["dilated.weight"], before["dilated.weight"])
    for name in set(before) - {"dilated.weight"}:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_weight_streams_are_keyed_by_seed_and_layer_name() -> None:
    spec = spec_from_data(FULL)
    report = check(spec)
    a, b = initial_params(spec, report, seed=1), initial_params(spec, report, seed=2)
    assert not np.array_equal(a["conv2d.weight"], b["conv2d.weight"])
    np.testing.assert_array_equal(a["conv2d.weight"], initial_params(spec, report, seed=1)["conv2d.weight"])
    first = layer_rng(1, "conv2d").uniform(size=4)
    assert not np.array_equal(first, layer_rng(1, "conv2d_1").uniform(size=4))


# ---- initializer statistics (Keras's definitions and fans) ---------------------------------------------

FAN_IN, FAN_OUT, SHAPE = 300, 500, (500, 300)


@pytest.mark.parametrize(
    ("name", "limit"),
    [("glorot_uniform", np.sqrt(6 / (FAN_IN + FAN_OUT))), ("he_uniform", np.sqrt(6 / FAN_IN)),
     ("lecun_uniform", np.sqrt(3 / FAN_IN))],
)  # fmt: skip
def test_uniform_initializers_use_the_exact_limit(name, limit) -> None:
    values = initialize(name, SHAPE, FAN_IN, FAN_OUT, layer_rng(0, name))
    assert values.dtype == np.float32 and values.shape == SHAPE
    assert np.abs(values).max() <= np.float32(limit)
    assert np.abs(values).max() > 0.999 * limit
    assert values.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)
    assert abs(values.mean()) < 0.01 * limit


@pytest.mark.parametrize(
    ("name", "std"),
    [("glorot_normal", np.sqrt(2 / (FAN_IN + FAN_OUT))), ("he_normal", np.sqrt(2 / FAN_IN)),
     ("lecun_normal", np.sqrt(1 / FAN_IN))],
)  # fmt: skip
def test_truncated_normal_initializers_have_the_intended_std(name, std) -> None:
    values = initialize(name, SHAPE, FAN_IN, FAN_OUT, layer_rng(0, name)).astype(np.float64)
    # Keras draws N(0, s) with s = std / 0.8796 truncated at 2 s, so the std comes out as intended
    assert values.std() == pytest.approx(std, rel=0.01)
    bound = 2 * std / TRUNCATED_STDDEV
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.99 * bound
    assert abs(values.mean()) < 0.01 * std


def test_parametrized_and_constant_initializers() -> None:
    rng = layer_rng(0, "x")
    normal = initialize({"type": "random_normal", "mean": 0.5, "stddev": 0.2}, SHAPE, 1, 1, rng)
    assert (normal.mean(), normal.std()) == (pytest.approx(0.5, abs=0.002), pytest.approx(0.2, rel=0.01))
    uniform = initialize({"type": "random_uniform", "minval": -0.1, "maxval": 0.3}, SHAPE, 1, 1, rng)
    assert -0.1 <= uniform.min() < -0.099 and 0.299 < uniform.max() <= 0.3
    default = initialize("random_normal", SHAPE, 1, 1, rng)
    assert default.std() == pytest.approx(0.05, rel=0.01)
    assert np.all(initialize("zeros", (3,), 1, 1, rng) == 0) and np.all(initialize("ones", (3,), 1, 1, rng) == 1)
    assert np.all(initialize({"type": "constant", "value": 0.25}, (3,), 1, 1, rng) == 0.25)


def test_conv_and_dense_use_keras_fans() -> None:
    data = {"name": "fans", "input": {"shape": [8, 8, 8]}, "layers": [
        {"type": "Conv2D", "filters": 64, "kernel_size": [3, 5], "groups": 2, "kernel_initializer": "he_uniform"},
        {"type": "Flatten"}, {"type": "Dense", "units": 40}]}  # fmt: skip
    w = weights(data)
    fan_in = 8 // 2 * 3 * 5  # in/groups x receptive field
    assert np.abs(w["conv2d.weight"]).max() <= np.float32(np.sqrt(6 / fan_in))
    assert np.abs(w["conv2d.weight"]).max() > 0.99 * np.sqrt(6 / fan_in)
    dense_in = 64 * 6 * 4
    assert np.abs(w["dense.weight"]).max() <= np.float32(np.sqrt(6 / (dense_in + 40)))
    assert np.abs(w["dense.weight"]).max() > 0.99 * np.sqrt(6 / (dense_in + 40))
    np.testing.assert_array_equal(w["conv2d.bias"], 0.0)


# ---- golden text form -----------------------------------------------------------------------------------

TINY = {
    "tiny_conv": {"name": "tiny_conv", "input": {"shape": [3, 3, 1]}, "labels": ["no", "yes"],
                  "preprocess": {"scale": 0.00392156862745098},
                  "layers": [{"type": "Conv2D", "filters": 1, "kernel_size": 2, "padding": "same",
                              "activation": "relu"},
                             {"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}]},
    "tiny_pool": {"name": "tiny_pool", "input": {"shape": [4, 4, 2]},
                  "layers": [{"type": "AveragePooling2D", "padding": "same", "pool_size": 3, "strides": 2},
                             {"type": "BatchNormalization"}, {"type": "GlobalMaxPooling2D"}]},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TINY))
def test_golden_text_form(name: str) -> None:
    text = onnx.printer.to_text(compiled(TINY[name]))
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("CNNSPEC_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run CNNSPEC_REGEN_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(encoding="utf-8"), f"regenerate with CNNSPEC_REGEN_GOLDEN=1 if intended: {path}"


# ---- what onnxruntime makes of the graph (speed: fusions, not timings) -----------------------------------


def optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model_bytes(model), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]


def test_onnxruntime_fuses_the_lowering(tmp_path: Path) -> None:
    """Conv+BN+Relu become one Conv, Dense+Relu one FusedGemm, the erf Gelu below opset 20 one Gelu."""
    layers = [{"type": "Conv2D", "filters": 8, "kernel_size": 3}, {"type": "BatchNormalization"},
              {"type": "Activation", "activation": "relu"}, {"type": "Conv2D", "filters": 4, "kernel_size": 3,
              "activation": "gelu"}, {"type": "Flatten"}, {"type": "Dense", "units": 6, "activation": "relu"},
              {"type": "Dense", "units": 2, "activation": "gelu"}]  # fmt: skip
    ops = optimized_ops(compiled({"name": "fuse", "input": {"shape": [8, 8, 3]}, "layers": layers}), tmp_path)
    assert "BatchNormalization" not in ops and "Relu" not in ops and "Erf" not in ops
    assert ops.count("Gelu") == 2 and "FusedGemm" in ops
