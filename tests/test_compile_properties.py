"""Property test: every shape-feasible random spec validates, compiles, passes the checker and runs.

For each drawn spec: validate -> compile -> onnx full checker -> onnxruntime at batch 1 and 3. The
output shape is the predicted [N, units]; every layer's output_shape from analyze() equals the shape
ORT gives its output tensor (added as extra graph outputs in a test copy) and onnx shape inference's;
parameter counts equal the initializer sizes; outputs are finite; softmax rows sum to 1.

PR CI: 500 derandomized examples. A long run: HYPOTHESIS_PROFILE=long (10,000 random examples).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import feasible_specs

from cnnspec.analysis import Report, analyze
from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.shapes import hwc_to_chw
from cnnspec.spec import spec_from_data

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
PROPERTY = settings(
    max_examples=10_000 if LONG else 500,
    derandomize=not LONG,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


ORT_TRAINING_PYTHON = Path(__file__).resolve().parent.parent / ".venv-ort-training" / "bin" / "python"
RUN_IN_OLD_RUNTIME = (
    "import sys, numpy as np, onnxruntime as ort\n"
    "for stem in sys.argv[1:]:\n"
    "    s = ort.InferenceSession(stem + '.onnx', providers=['CPUExecutionProvider'])\n"
    "    np.save(stem + '.out.npy', s.run(None, {'input': np.load(stem + '.npy')})[0])\n"
)


def old_runtime_outputs(cases: dict[str, tuple[onnx.ModelProto, np.ndarray]], folder: Path) -> dict[str, np.ndarray]:
    """Run each (model, x) in onnxruntime-training 1.19.2 (the venv .ci/ort_training_env.sh builds).

    Skips when that environment is absent (a clean clone), like tests/ort_training.
    """
    if not ORT_TRAINING_PYTHON.exists():
        pytest.skip("no .venv-ort-training (bash .ci/ort_training_env.sh builds it)")
    for stem, (model, x) in cases.items():
        (folder / f"{stem}.onnx").write_bytes(model_bytes(model))
        np.save(folder / f"{stem}.npy", x)
    stems = [str(folder / stem) for stem in cases]
    subprocess.run([str(ORT_TRAINING_PYTHON), "-c", RUN_IN_OLD_RUNTIME, *stems], check=True, timeout=300)
    return {stem: np.load(folder / f"{stem}.out.npy") for stem in cases}


def layer_output_tensors(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """The tensor holding each layer's output, found through node names (`<layer>/<Op>`).

    A layer that emits no node (Dropout, linear Activation, Flatten of a flat input) passes its
    input through, so its output is the previous tensor.
    """
    nodes = list(model.graph.node)
    pre = [n for n in nodes if n.name.startswith("preprocess/")]
    current = pre[-1].output[0] if pre else "input"
    tensors = []
    for name in names:
        own = [n for n in nodes if n.name.startswith(name + "/")]
        current = own[-1].output[0] if own else current
        tensors.append(current)
    return tensors


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy whose graph also outputs `tensors` (type float, shape left to the runtime)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes(model), options, providers=["CPUExecutionProvider"])


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """onnx shape inference's shape of every tensor (strict: inference errors raise)."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param or d.dim_value for d in dims]
    return shapes


def ends_in_softmax(spec: dict) -> bool:
    """The last layer that changes values applies softmax to a flat tensor (Dropout and Flatten keep it).

    Softmax on an image (Conv2D) normalizes over the channels of each pixel, so rows sum to H*W.
    """
    layers = spec["layers"]
    for index in reversed(range(len(layers))):
        if layers[index]["type"] in ("Dropout", "Flatten"):
            continue
        flat = any(k["type"] in ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D") for k in layers[:index])
        return flat and layers[index].get("activation") == "softmax"
    return False


def check_params(model: onnx.ModelProto, report: Report) -> None:
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    params = {k: v for k, v in sizes.items() if "/" not in k}  # fixed constants are named '<scope>/const'
    trainable = {k: v for k, v in params.items() if not k.endswith((".running_mean", ".running_var"))}
    assert sum(params.values()) == report.total_params
    assert sum(trainable.values()) == report.trainable_params
    expected = {f"{row.name}.{k}": list(s) for row in report.layers for k, s in row.param_shapes.items()}
    assert {t.name: list(t.dims) for t in model.graph.initializer if "/" not in t.name} == expected


def check_runs(data: dict, model: onnx.ModelProto, report: Report) -> None:
    tensors = layer_output_tensors(model, [row.name for row in report.layers])
    sess = session(with_outputs(model, tensors))
    names = [o.name for o in sess.get_outputs()]
    c, h, w = hwc_to_chw(report.spec.input_shape)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.uniform(0, 255, (batch, c, h, w)).astype(np.float32)
        values = dict(zip(names, sess.run(None, {"input": x}), strict=True))
        out = values["output"]
        assert out.shape == (batch, report.output_shape[0])
        assert np.isfinite(out).all()
        for row, tensor in zip(report.layers, tensors, strict=True):
            assert values[tensor].shape == (batch, *hwc_to_chw(row.output_shape)), row.name
        if ends_in_softmax(data):
            np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def check_inference_agrees(model: onnx.ModelProto, report: Report) -> None:
    shapes = inferred_shapes(model)
    tensors = layer_output_tensors(model, [row.name for row in report.layers])
    for row, tensor in zip(report.layers, tensors, strict=True):
        assert shapes[tensor] == ["batch", *hwc_to_chw(row.output_shape)], (row.name, tensor)


@PROPERTY
@given(feasible_specs())
def test_random_specs_compile_check_and_run_with_predicted_shapes(data: dict) -> None:
    report = analyze(spec_from_data(data))
    assert report.valid, [i.message for i in report.issues]
    model = compile_spec(report.spec, seed=0)
    onnx.checker.check_model(model, full_check=True)
    check_params(model, report)
    check_inference_agrees(model, report)
    check_runs(data, model, report)


HASH_SPECS = (
    "import hashlib, json, sys\n"
    "from cnnspec.compiler import compile_spec, model_bytes\n"
    "from cnnspec.spec import spec_from_data\n"
    "for data in json.load(open(sys.argv[1])):\n"
    "    print(hashlib.sha256(model_bytes(compile_spec(spec_from_data(data), seed=5))).hexdigest())\n"
)


def test_random_specs_compile_to_the_same_bytes_under_any_hash_seed(tmp_path) -> None:
    """50 drawn specs compiled in two interpreters with different PYTHONHASHSEED: same sha256 each."""
    drawn: list[dict] = []

    @settings(max_examples=50, derandomize=True, database=None, deadline=None)
    @given(feasible_specs())
    def draw(data: dict) -> None:
        drawn.append(data)

    draw()
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(drawn))
    runs = []
    for hash_seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-c", HASH_SPECS, str(path)], env=env, capture_output=True, text=True,
                              check=True, timeout=120)  # fmt: skip
        runs.append(proc.stdout.split())
    here = [hashlib.sha256(model_bytes(compile_spec(spec_from_data(d), seed=5))).hexdigest() for d in drawn]
    assert runs[0] == runs[1] == here
    assert len(here) == 50


def test_random_specs_give_the_same_outputs_in_onnxruntime_training_1_19(tmp_path) -> None:
    """The ort-training backend's runtime computes what current onnxruntime does, for 100 drawn specs."""
    cases: dict[str, tuple[onnx.ModelProto, np.ndarray]] = {}

    @settings(max_examples=100, derandomize=True, database=None, deadline=None)
    @given(feasible_specs())
    def draw(data: dict) -> None:
        spec, index = spec_from_data(data), len(cases)
        rng = np.random.default_rng(index)  # half the inputs negative: pads and pools see both signs
        x = rng.uniform(-1.0 if index % 2 else 0.0, 255.0, (2, *hwc_to_chw(spec.input_shape))).astype(np.float32)
        cases[str(index)] = (compile_spec(spec, seed=index), x)

    draw()
    outputs = old_runtime_outputs(cases, tmp_path)
    for stem, (model, x) in cases.items():
        want = session(model).run(None, {"input": x})[0]
        scale = max(float(np.abs(want).max()), 1e-6)
        np.testing.assert_allclose(outputs[stem], want, rtol=1e-4, atol=1e-4 * scale, err_msg=stem)
