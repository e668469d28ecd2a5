"""Graph specs (`inputs:` and the merge layers) against independent oracles.

- shapes: every report row's output shape, input shapes and producers against Keras's formulas, recomputed
  in graph_strategies (random DAGs: residual adds, concatenations, squeeze-excite broadcasts, fan-out 3,
  parameter-free branches, Subtract/Average/Maximum/Minimum, flat merges);
- forward: the compiled model on onnxruntime (float32) against reference_numpy (float64, Keras's merge
  definitions: numpy broadcasting over NCHW, Concatenate's Keras axis mapped to NCHW), on a table of
  small cases for each merge kind and on random DAGs;
- refusals: infeasible graphs (shapes that do not broadcast or join, a merge's arity, Concatenate's batch
  axis, unknown / later / generated / own names, an unused output) fail at the right layer and field;
- gradients: the float64 gradients-only train step on onnx's reference evaluator (with test_gradients'
  patched ops) against central finite differences along random directions (all parameters, then each
  weight alone), the full sgd step applying exactly those gradients, then the float32 program on
  onnxruntime against them; on named graph nets (also as serial programs) and on random DAGs.

`HYPOTHESIS_PROFILE=long` draws 10x the random examples, not derandomized.

Tolerances are test_forward_numerics' and test_gradients' (their docstrings say why).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import reference_numpy as ref
from graph_strategies import MERGES, graph_specs, graph_specs_with_shapes, keras_shapes, producers
from hypothesis import HealthCheck, given, settings
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from test_gradients import ConvTranspose, Erf, MaxPool, check_onnxruntime_agrees

from cnnspec.analysis import check
from cnnspec.compiler import build_inference_model, compile_spec, initial_params, model_bytes
from cnnspec.errors import SpecError
from cnnspec.spec import normalized, spec_from_data
from cnnspec.training.optimizers import Optimizer
from cnnspec.training.program import INPUT, LABELS, LR, STEP, build_train_step

RTOL = 1e-5
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"  # as test_forward_numerics: random draws, 10x the examples
FAST = settings(deadline=None, database=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def examples(n: int) -> int:
    return 10 * n if LONG else n


# ---- helpers ------------------------------------------------------------------------------------------


def nchw(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Keras (H, W, C) -> (C, H, W); (units,) unchanged."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


def run_ort(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def compare(data: dict, *, low: float = -1.0, high: float = 1.0, batch: int = 2, seed: int = 0) -> None:
    """Compile `data` with random parameters; onnxruntime's output must match the numpy reference."""
    spec = spec_from_data(copy.deepcopy(data))
    report = check(spec)
    shapes = {f"{row.name}.{k}": s for row in report.layers for k, s in row.param_shapes.items()}
    params = ref.random_params(shapes, seed)
    model = build_inference_model(spec, report, params)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(seed + 1)
    x = rng.uniform(low, high, (batch, *nchw(tuple(data["input"]["shape"])))).astype(np.float32)
    actual = run_ort(model, x)
    expected, layers = ref.forward(normalized(spec), params, x)
    for row, y in zip(report.layers, layers, strict=True):  # the reference agrees with the report's shapes
        assert y.shape[1:] == nchw(row.output_shape), (row.name, y.shape, row.output_shape)
    scale = max(float(np.abs(y).max()) for y in [ref.preprocess(x, data.get("preprocess")), *layers])
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-5 * max(scale, 1e-6))


def stem(filters: int = 3, name: str = "stem", **kw: Any) -> dict:
    return {"type": "Conv2D", "name": name, "filters": filters, "kernel_size": 3, "padding": "same",
            "activation": "tanh", **kw}  # fmt: skip


def conv(name: str, filters: int, inputs: Any = None, kernel: int = 1, **kw: Any) -> dict:
    layer = {"type": "Conv2D", "name": name, "filters": filters, "kernel_size": kernel, "padding": "same", **kw}
    return layer | ({"inputs": inputs} if inputs is not None else {})


def merge(kind: str, *inputs: str, name: str | None = None, **kw: Any) -> dict:
    return {"type": kind, "inputs": list(inputs), **kw} | ({"name": name} if name else {})


def gap(name: str, inputs: Any = None, keepdims: bool = True, kind: str = "GlobalAveragePooling2D") -> dict:
    return {"type": kind, "name": name, "keepdims": keepdims} | ({"inputs": inputs} if inputs else {})


HEAD = [{"type": "Flatten"}, {"type": "Dense", "units": 3}]
GAP_HEAD = [{"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 3}]


def graph(shape: list[int], *layers: dict, **extra: Any) -> dict:
    return {"name": "graph", "input": {"shape": shape}, "layers": list(layers), **extra}


# ---- shapes ---------------------------------------------------------------------------------------------


def check_report(data: dict, expected: list[tuple[int, ...]]) -> None:
    assert keras_shapes(data) == expected  # the strategy's own bookkeeping and the formulas agree
    spec = spec_from_data(copy.deepcopy(data))
    report = check(spec)
    rows = report.layers
    assert [row.output_shape for row in rows] == [tuple(s) for s in expected]
    names = [row.name for row in rows]
    assert len(set(names)) == len(names)
    shapes_by_name = {"input": tuple(data["input"]["shape"]), **{r.name: r.output_shape for r in rows}}
    used: set[str] = set()
    for i, (layer, row, sources) in enumerate(zip(data["layers"], rows, producers(data), strict=True)):
        if "name" in layer:
            assert row.name == layer["name"]
        want = tuple(s if isinstance(s, str) else names[s] for s in sources)
        assert tuple(row.inputs) == want, (i, row.inputs, want)
        assert tuple(row.input_shapes) == tuple(shapes_by_name[s] for s in want)
        used.update(want)
        if layer["type"] in MERGES:
            assert row.params == 0 and not row.param_shapes
    assert set(names[:-1]) <= used  # the generator makes every output but the last one used
    norm = normalized(spec)
    for layer, written in zip(norm["layers"], data["layers"], strict=True):
        assert layer["name"]
        if "inputs" in written:
            expected_inputs = [written["inputs"]] if isinstance(written["inputs"], str) else written["inputs"]
            assert layer["inputs"] == expected_inputs
    again = check(spec_from_data(norm)).layers  # the normalized dict means the same graph
    assert [(r.name, r.output_shape, tuple(r.inputs)) for r in again] == [
        (r.name, r.output_shape, tuple(r.inputs)) for r in rows
    ]


@settings(FAST, max_examples=examples(30))
@given(graph_specs_with_shapes())
def test_report_shapes_and_producers_match_keras(pair) -> None:
    data, expected = pair
    check_report(data, expected)


SHAPE_TABLE = [  # (input, layers, expected Keras output shapes)
    ([6, 5, 2], [stem(4), conv("b", 4, kernel=3), merge("Add", "b", "stem"), *GAP_HEAD],
     [(6, 5, 4), (6, 5, 4), (6, 5, 4), (4,), (3,)]),
    ([6, 5, 2], [stem(4), gap("g"), conv("e", 4, activation="sigmoid"), merge("Multiply", "stem", "e"), *HEAD],
     [(6, 5, 4), (1, 1, 4), (1, 1, 4), (6, 5, 4), (120,), (3,)]),
    ([6, 5, 2], [stem(4), conv("c", 2, inputs="stem"), merge("Concatenate", "stem", "c", axis=3), *GAP_HEAD],
     [(6, 5, 4), (6, 5, 2), (6, 5, 6), (6,), (3,)]),
    ([6, 5, 2], [stem(4), conv("c", 4, inputs="stem"), merge("Concatenate", "stem", "c", axis=1), *GAP_HEAD],
     [(6, 5, 4), (6, 5, 4), (12, 5, 4), (4,), (3,)]),
    ([6, 5, 2], [stem(4), conv("c", 4, inputs="stem"), merge("Concatenate", "c", "stem", axis=2), *GAP_HEAD],
     [(6, 5, 4), (6, 5, 4), (6, 10, 4), (4,), (3,)]),
    ([6, 5, 2], [stem(4), gap("g"), conv("s", 1, inputs="stem", activation="sigmoid"),
                 merge("Multiply", "g", "s"), *GAP_HEAD],
     [(6, 5, 4), (1, 1, 4), (6, 5, 1), (6, 5, 4), (4,), (3,)]),  # (1,1,C) x (H,W,1): both broadcast
    ([4, 4, 1], [{"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "a", "units": 5},
                 {"type": "Dense", "name": "b", "units": 2, "inputs": "f"}, merge("Concatenate", "a", "b"),
                 {"type": "Dense", "units": 3}],
     [(16,), (5,), (2,), (7,), (3,)]),
    ([4, 4, 1], [gap("g", keepdims=False, kind="GlobalMaxPooling2D"), {"type": "Dense", "name": "a", "units": 1},
                 {"type": "Dense", "name": "b", "units": 4, "inputs": "g"}, merge("Multiply", "b", "a")],
     [(1,), (1,), (4,), (4,)]),  # flat broadcast (1,) x (4,); the merge is the last layer
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(SHAPE_TABLE)))
def test_report_shapes_table(case) -> None:
    shape, layers, expected = SHAPE_TABLE[case]
    check_report(graph(shape, *layers), expected)


# ---- forward: a table of small cases per merge kind ---------------------------------------------------------


def two_branches(kind: str, order=("a", "b"), filters=(3, 3), extra: dict | None = None, shape=(5, 4, 2)) -> dict:
    """stem -> a, b (1x1 and 3x3 convs of the stem) -> kind(a, b) -> flatten, dense."""
    layers = [stem(3), conv("a", filters[0], activation="relu"), conv("b", filters[1], inputs="stem", kernel=3),
              merge(kind, *order, **(extra or {})), *HEAD]  # fmt: skip
    return graph(list(shape), *layers)


FORWARD_TABLE: dict[str, dict] = {
    "add-2": two_branches("Add"),
    "add-3-with-stem": graph([5, 4, 2], stem(3), conv("a", 3), conv("b", 3, inputs="stem", kernel=3),
                             merge("Add", "b", "stem", "a"), *HEAD),
    "add-param-free-branch": graph([5, 4, 2], stem(3), {"type": "MaxPooling2D", "name": "p", "pool_size": 3,
                                        "strides": 1, "padding": "same"}, merge("Add", "stem", "p"), *HEAD),
    "add-broadcast-111c-first": graph([5, 4, 2], stem(3), gap("g"), conv("c", 3), merge("Add", "c", "stem"), *HEAD),
    "add-broadcast-111c-second": graph([5, 4, 2], stem(3), gap("g"), conv("c", 3), merge("Add", "stem", "c"), *HEAD),
    "subtract": two_branches("Subtract"),
    "subtract-swapped": two_branches("Subtract", order=("b", "a")),
    "subtract-broadcast-small-first": graph([5, 4, 2], stem(3), gap("g", kind="GlobalMaxPooling2D"),
                                            merge("Subtract", "g", "stem"), *HEAD),
    "subtract-broadcast-small-second": graph([5, 4, 2], stem(3), gap("g"), merge("Subtract", "stem", "g"), *HEAD),
    "multiply-2": two_branches("Multiply"),
    "multiply-se": graph([6, 5, 2], stem(4), gap("sq"), conv("r", 2, activation="relu"),
                         conv("e", 4, activation="sigmoid"), merge("Multiply", "stem", "e"), *HEAD),
    "multiply-se-gate-first": graph([6, 5, 2], stem(4), gap("sq", kind="GlobalMaxPooling2D"),
                                    conv("e", 4, activation="sigmoid"), merge("Multiply", "e", "stem"), *HEAD),
    "multiply-spatial-gate": graph([6, 5, 2], stem(4), conv("s", 1, kernel=3, activation="sigmoid"),
                                   merge("Multiply", "stem", "s"), *HEAD),
    "multiply-both-broadcast": graph([6, 5, 2], stem(4), gap("g"), conv("s", 1, inputs="stem"),
                                     merge("Multiply", "g", "s"), *HEAD),
    "average-2": two_branches("Average"),
    "average-3": graph([5, 4, 2], stem(3), conv("a", 3), conv("b", 3, inputs="stem", kernel=3),
                       merge("Average", "a", "stem", "b"), *HEAD),
    "average-broadcast": graph([5, 4, 2], stem(3), gap("g"), merge("Average", "g", "stem"), *HEAD),
    "maximum-2": two_branches("Maximum"),
    "maximum-3": graph([5, 4, 2], stem(3), conv("a", 3), conv("b", 3, inputs="stem", kernel=3),
                       merge("Maximum", "a", "stem", "b"), *HEAD),
    "maximum-broadcast": graph([5, 4, 2], stem(3), gap("g"), merge("Maximum", "stem", "g"), *HEAD),
    "minimum-2": two_branches("Minimum"),
    "minimum-3": graph([5, 4, 2], stem(3), conv("a", 3), conv("b", 3, inputs="stem", kernel=3),
                       merge("Minimum", "b", "a", "stem"), *HEAD),
    "minimum-broadcast": graph([5, 4, 2], stem(3), gap("g", kind="GlobalMaxPooling2D"),
                               merge("Minimum", "g", "stem"), *HEAD),
    "concat-default-axis": two_branches("Concatenate", filters=(2, 3)),
    "concat-axis-3": two_branches("Concatenate", order=("b", "a"), filters=(2, 3), extra={"axis": 3}),
    "concat-axis-1-height": two_branches("Concatenate", extra={"axis": 1}),
    "concat-axis-2-width": two_branches("Concatenate", order=("b", "a"), extra={"axis": 2}),
    "concat-3-with-stem": graph([5, 4, 2], stem(3), conv("a", 1), conv("b", 2, inputs="stem"),
                                merge("Concatenate", "b", "stem", "a"), *HEAD),
    "concat-height-odd-sizes": graph([3, 5, 1], stem(2), conv("a", 2, strides=[2, 1]),
                                     merge("Concatenate", "a", "stem", axis=1), *HEAD),  # 2 + 3 rows
    "concat-flat-default": graph([4, 3, 2], {"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "a",
                                 "units": 4, "activation": "tanh"}, {"type": "Dense", "name": "b", "units": 2,
                                 "inputs": "f"}, merge("Concatenate", "a", "f", "b"), {"type": "Dense", "units": 3}),
    "concat-flat-axis-1": graph([4, 3, 2], {"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "a",
                                "units": 4}, merge("Concatenate", "f", "a", axis=1), {"type": "Dense", "units": 3}),
    "flat-add-as-last-layer": graph([4, 3, 2], {"type": "GlobalAveragePooling2D", "name": "g"},
                                    {"type": "Dense", "name": "a", "units": 3},
                                    {"type": "Dense", "name": "b", "units": 3, "inputs": "g"}, merge("Add", "a", "b")),
    "flat-subtract-broadcast": graph([4, 3, 2], {"type": "GlobalMaxPooling2D", "name": "g"},
                                     {"type": "Dense", "name": "a", "units": 1},
                                     {"type": "Dense", "name": "b", "units": 3, "inputs": "g"},
                                     merge("Subtract", "a", "b")),
    "input-as-operand": graph([5, 4, 2], stem(2), merge("Add", "input", "stem"), *HEAD),
    "input-as-operand-with-preprocess": graph([5, 4, 2], stem(2), merge("Subtract", "stem", "input"), *HEAD,
                                              preprocess={"scale": 0.5, "mean": [0.1, -0.3], "std": [2.0, 0.5]}),
    "input-read-by-three": graph([5, 4, 2], conv("a", 2, kernel=3), conv("b", 2, inputs="input"),
                                 merge("Maximum", "input", "a", "b"), *HEAD),
    "inputs-as-a-string": graph([5, 4, 2], stem(3), conv("a", 3), {"type": "Conv2D", "name": "b", "filters": 3,
                                "kernel_size": 1, "inputs": "stem"}, merge("Add", "a", "b"), *HEAD),
    "implicit-input-after-a-branch": graph([5, 4, 2], stem(3), conv("a", 3, activation="relu"),
                                           conv("b", 3, inputs="stem"), conv("c", 3, kernel=3),  # c reads b
                                           merge("Add", "a", "c"), *HEAD),
    "layer-after-merge-reads-it": graph([5, 4, 2], stem(3), conv("a", 3), merge("Add", "a", "stem"),
                                        {"type": "Activation", "activation": "relu"},
                                        {"type": "MaxPooling2D"}, *HEAD),
    "gap-keepdims-flatten": graph([5, 4, 3], gap("g"), {"type": "Flatten"}, {"type": "Dense", "units": 3}),
    "gmp-keepdims-conv": graph([5, 4, 3], gap("g", kind="GlobalMaxPooling2D"), conv("c", 4), *HEAD),
    "add-same-tensor-twice": graph([5, 4, 2], stem(3), merge("Add", "stem", "stem"), *HEAD),
    "multiply-same-tensor-twice": graph([5, 4, 2], stem(3), merge("Multiply", "stem", "stem"), *HEAD),
    "maximum-same-tensor-twice": graph([5, 4, 2], stem(3), conv("a", 3), merge("Maximum", "a", "stem", "a"), *HEAD),
    "concat-same-tensor-twice": graph([5, 4, 2], stem(3), merge("Concatenate", "stem", "stem"), *HEAD),
    "broadcast-height-only": graph([4, 5, 2], stem(3), conv("a", 3, kernel=[4, 1], padding="valid"),
                                   merge("Add", "a", "stem"), *HEAD),  # (1, 5, 3) + (4, 5, 3)
    "broadcast-width-only": graph([4, 5, 2], stem(3), conv("a", 3, kernel=[1, 5], padding="valid"),
                                  merge("Multiply", "stem", "a"), *HEAD),  # (4, 5, 3) x (4, 1, 3)
    "broadcast-crossed": graph([4, 5, 2], stem(3), conv("a", 3, kernel=[4, 1], padding="valid", activation="tanh"),
                               conv("b", 3, inputs="stem", kernel=[1, 5], padding="valid"),
                               merge("Subtract", "a", "b"), *HEAD),  # (1, 5, 3) - (4, 1, 3) = (4, 5, 3)
    "concat-axis-minus-2-width": two_branches("Concatenate", extra={"axis": -2}),
    "concat-axis-minus-3-height": two_branches("Concatenate", order=("b", "a"), extra={"axis": -3}),
    "dropout-branch": graph([5, 4, 2], stem(3), {"type": "Dropout", "name": "d", "rate": 0.3},
                            conv("a", 3, inputs="stem"), merge("Add", "d", "a"), *HEAD),
    "names-like-defaults": graph([5, 4, 2], {**stem(3), "name": "conv2d"},
                                 {"type": "Conv2D", "filters": 3, "kernel_size": 1},  # default name, not conv2d
                                 {**conv("add", 3, kernel=3), "activation": "relu"},
                                 {"type": "Add", "inputs": ["add", "conv2d"]}, *HEAD),  # default name, not add
    "softmax-after-merge": graph([5, 4, 2], {"type": "GlobalAveragePooling2D", "name": "g"},
                                 {"type": "Dense", "name": "a", "units": 3},
                                 {"type": "Dense", "name": "b", "units": 3, "inputs": "g"}, merge("Add", "a", "b"),
                                 {"type": "Activation", "activation": "softmax"}),
    "averaged-softmax-heads": graph([5, 4, 2], {"type": "Flatten", "name": "f"},
                                    {"type": "Dense", "name": "a", "units": 3, "activation": "softmax"},
                                    {"type": "Dense", "name": "b", "units": 3, "inputs": "f", "activation": "softmax"},
                                    merge("Average", "a", "b")),
    "softmax-head-into-a-merge": graph([5, 4, 2], {"type": "Flatten", "name": "f"},
                                       {"type": "Dense", "name": "a", "units": 3, "activation": "softmax"},
                                       {"type": "Dense", "name": "b", "units": 3, "inputs": "f"},
                                       merge("Multiply", "b", "a"),
                                       {"type": "Dense", "units": 3, "activation": "softmax"}),
    "nested-merges": graph([6, 6, 2], stem(4), conv("a", 4, kernel=3, activation="relu"),
                           merge("Add", "a", "stem", name="s1"), {"type": "MaxPooling2D", "name": "p"},
                           conv("b", 2, inputs="p"), merge("Concatenate", "b", "p", name="c1"), gap("g"),
                           conv("e", 6, activation="sigmoid"), merge("Multiply", "c1", "e", name="m"), *GAP_HEAD),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FORWARD_TABLE))
def test_merge_forward_table(name) -> None:
    compare(FORWARD_TABLE[name], low=0.0 if "preprocess" in name else -1.0, high=3.0 if "preprocess" in name else 1.0)


def test_concatenate_is_ordered_and_keeps_values_exactly() -> None:
    """[input, relu(input)] along channels is the input then its relu, bit for bit (no parameters)."""
    data = graph([2, 3, 2], {"type": "Activation", "name": "r", "activation": "relu"},
                 merge("Concatenate", "input", "r"), {"type": "Flatten"})  # fmt: skip
    spec = spec_from_data(data)
    x = np.random.default_rng(0).normal(size=(2, 2, 2, 3)).astype(np.float32)
    out = run_ort(build_inference_model(spec, check(spec), {}), x)
    np.testing.assert_array_equal(out, np.concatenate([x, np.maximum(x, 0)], axis=1).reshape(2, -1))


@pytest.mark.parametrize("name", ["nested-merges", "multiply-se", "concat-3-with-stem", "names-like-defaults"])
def test_compile_spec_weights_and_output(name) -> None:
    """compile_spec's model carries initial_params under the layers' names and computes the reference."""
    spec = spec_from_data(copy.deepcopy(FORWARD_TABLE[name]))
    report = check(spec)
    model = compile_spec(spec, seed=3)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    params = initial_params(spec, report, seed=3)
    for k, v in params.items():
        np.testing.assert_array_equal(weights[k], v, err_msg=k)
    assert set(params) == {f"{row.name}.{k}" for row in report.layers for k in row.param_shapes}
    x = np.random.default_rng(0).uniform(-1, 1, (2, *nchw(spec.input_shape))).astype(np.float32)
    expected, layers = ref.forward(normalized(spec), params, x)
    scale = max(float(np.abs(y).max()) for y in [x, *layers])
    np.testing.assert_allclose(run_ort(model, x), expected, rtol=RTOL, atol=1e-5 * scale)


def test_default_names_skip_explicit_ones() -> None:
    """An unnamed Conv2D after an explicit 'conv2d', an unnamed Add after an explicit 'add': unique names,
    and the explicit names keep their weights."""
    report = check(spec_from_data(copy.deepcopy(FORWARD_TABLE["names-like-defaults"])))
    names = [row.name for row in report.layers]
    assert len(set(names)) == len(names), names
    assert names[0] == "conv2d" and names[2] == "add" and names[1] != "conv2d" and names[3] != "add"
    assert report.layers[0].param_shapes["weight"] == (3, 2, 3, 3)  # the stem's, not the 1x1 conv's
    assert tuple(report.layers[3].inputs) == ("add", "conv2d")


@pytest.mark.parametrize(("axis", "nchw_axis"), [(-1, 1), (3, 1), (1, 2), (2, 3)])
def test_concatenate_axis_maps_keras_to_nchw(axis, nchw_axis) -> None:
    data = graph([2, 2, 2], {"type": "Activation", "name": "r", "activation": "relu"},
                 merge("Concatenate", "r", "input", axis=axis), {"type": "Flatten"})  # fmt: skip
    spec = spec_from_data(data)
    x = np.random.default_rng(1).normal(size=(1, 2, 2, 2)).astype(np.float32)
    out = run_ort(build_inference_model(spec, check(spec), {}), x)
    np.testing.assert_array_equal(out, np.concatenate([np.maximum(x, 0), x], axis=nchw_axis).reshape(1, -1))


@settings(FAST, max_examples=examples(40))
@given(graph_specs())
def test_random_graphs_forward_match_the_reference(data: dict) -> None:
    compare(data, batch=2)


# ---- infeasible graphs are refused, at the right layer and field -----------------------------------------


def _c(name: str, filters: int = 3, **kw: Any) -> dict:
    return {"type": "Conv2D", "name": name, "filters": filters, "kernel_size": 1, **kw}


REFUSED = {  # name: (layers on a 4x4x2 input, layer index, field, a fragment the message must hold)
    "add-channels-differ": ([stem(3), _c("a", 2), merge("Add", "a", "stem"), *HEAD], 2, "inputs", "4x4x2"),
    "multiply-spatial-differs": ([stem(3), {"type": "MaxPooling2D", "name": "p"}, merge("Multiply", "stem", "p"),
                                  *HEAD], 2, "inputs", "2x2x3"),
    "add-image-and-flat": ([stem(3), {"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "d", "units": 3},
                            merge("Add", "d", "stem")], 3, "inputs", "stem"),
    "subtract-three": ([stem(3), _c("a"), _c("b"), merge("Subtract", "a", "b", "stem"), *HEAD], 3, "inputs", "2"),
    "merge-one-input": ([stem(3), merge("Add", "stem"), *HEAD], 1, "inputs", "2"),
    "merge-without-inputs": ([stem(3), {"type": "Maximum"}, *HEAD], 1, "inputs", "2"),
    "concat-batch-axis": ([stem(3), _c("a"), merge("Concatenate", "a", "stem", axis=0), *HEAD], 2, "axis", "0"),
    "concat-flat-axis-2": ([{"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "d", "units": 3},
                            merge("Concatenate", "d", "f", axis=2)], 2, "axis", "2"),
    "concat-height-differs": ([stem(3), {"type": "MaxPooling2D", "name": "p"}, merge("Concatenate", "p", "stem"),
                               *HEAD], 2, "inputs", "4x4x3"),
    "unknown-name": ([stem(3), merge("Add", "stem", "nope"), *HEAD], 1, "inputs", "nope"),
    "later-layer": ([stem(3), _c("a", inputs="b"), _c("b"), merge("Add", "a", "b"), *HEAD], 1, "inputs", "b"),
    "generated-name": ([{"type": "Conv2D", "filters": 3, "kernel_size": 1}, _c("a"), merge("Add", "a", "conv2d"),
                        *HEAD], 2, "inputs", "conv2d"),
    "own-output": ([stem(3), _c("a", inputs="a"), *HEAD], 1, "inputs", "a"),
    "unused-output": ([stem(3), _c("a"), _c("b", inputs="stem"), *HEAD], 1, None, "a"),
    "conv-two-inputs": ([stem(3), _c("a"), _c("b", inputs=["a", "stem"]), *HEAD], 2, "inputs", "Conv2D"),
    "layer-named-input": ([_c("input"), *HEAD], 0, "name", "input"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_infeasible_graphs_are_refused(name) -> None:
    layers, index, field, fragment = REFUSED[name]
    with pytest.raises(SpecError) as info:
        check(spec_from_data(graph([4, 4, 2], *copy.deepcopy(layers))))
    issues = [i for i in info.value.issues if i.layer == index and i.field == field]
    assert issues, [i.as_dict() for i in info.value.issues]
    assert any(fragment in i.message for i in issues), [i.message for i in issues]
    for issue in info.value.issues:  # a merge's arity is never "one input"
        if "Subtract" in issue.message or "merge" in name:
            assert "takes one input" not in issue.message, issue.message


# ---- gradients --------------------------------------------------------------------------------------------


GRAD_CASES: dict[str, dict] = {
    "residual": graph([6, 5, 2], stem(4), conv("b", 4, kernel=3, activation="tanh"),
                      {"type": "BatchNormalization", "name": "bn"}, merge("Add", "bn", "stem"),
                      {"type": "Activation", "activation": "relu"}, *GAP_HEAD),
    "residual-projection-strided": graph([6, 5, 2], stem(3), conv("b", 4, kernel=3, strides=2, activation="tanh"),
                                         conv("sc", 4, inputs="stem", strides=2), merge("Add", "sc", "b"), *HEAD),
    "concat-channels": graph([6, 5, 2], stem(3), conv("a", 2, kernel=3, activation="tanh"),
                             {"type": "MaxPooling2D", "name": "p", "pool_size": 3, "strides": 1, "padding": "same",
                              "inputs": "stem"}, merge("Concatenate", "a", "stem", "p"), *HEAD),
    "concat-height": two_branches("Concatenate", extra={"axis": 1}),
    "concat-width": two_branches("Concatenate", order=("b", "a"), extra={"axis": 2}),
    "se-broadcast-multiply": FORWARD_TABLE["multiply-se"],
    "se-gmp-gate-first": FORWARD_TABLE["multiply-se-gate-first"],
    "spatial-gate": FORWARD_TABLE["multiply-spatial-gate"],
    "both-broadcast-multiply": FORWARD_TABLE["multiply-both-broadcast"],
    "fan-out-3": graph([6, 5, 2], stem(3), conv("a", 3, kernel=3, activation="tanh"),
                       conv("b", 3, inputs="stem", activation="sigmoid"), merge("Add", "b", "stem", "a"), *HEAD),
    "fan-out-3-concat": FORWARD_TABLE["concat-3-with-stem"],
    "param-free-maxpool-branch": graph([6, 5, 2], stem(3), {"type": "MaxPooling2D", "name": "p", "pool_size": 3,
                                       "strides": 1, "padding": "same"}, merge("Add", "stem", "p"), *HEAD),
    "param-free-avgpool-branch-multiply": graph([6, 5, 2], stem(3), {"type": "AveragePooling2D", "name": "p",
                                                "pool_size": 3, "strides": 1, "padding": "same"},
                                                merge("Multiply", "p", "stem"), *HEAD),
    "param-free-activation-branch": graph([6, 5, 2], stem(3), {"type": "Activation", "name": "t",
                                          "activation": "sigmoid"}, merge("Concatenate", "t", "stem"), *HEAD),
    "subtract": two_branches("Subtract", order=("b", "a")),
    "subtract-broadcast": FORWARD_TABLE["subtract-broadcast-small-first"],
    "average-3": FORWARD_TABLE["average-3"],
    "average-broadcast": FORWARD_TABLE["average-broadcast"],
    "maximum": two_branches("Maximum"),
    "maximum-3": FORWARD_TABLE["maximum-3"],
    "maximum-broadcast": FORWARD_TABLE["maximum-broadcast"],
    "minimum": two_branches("Minimum", order=("b", "a")),
    "minimum-broadcast": FORWARD_TABLE["minimum-broadcast"],
    "input-as-operand": FORWARD_TABLE["input-as-operand-with-preprocess"],
    "flat-concat": FORWARD_TABLE["concat-flat-default"],
    "flat-add-as-last-layer": FORWARD_TABLE["flat-add-as-last-layer"],
    "nested-merges": FORWARD_TABLE["nested-merges"],
    **{name: FORWARD_TABLE[name] for name in FORWARD_TABLE if "twice" in name or "broadcast-" in name
       or "softmax" in name or name in ("dropout-branch", "names-like-defaults", "concat-axis-minus-3-height")},
}  # fmt: skip


def check_gradients(data: dict, seed: int, serial: bool = False) -> None:
    rng = np.random.default_rng(seed)
    spec = spec_from_data(copy.deepcopy(data))
    report = check(spec)
    program = build_train_step(spec, report, Optimizer(), gradients_only=True, dtype=np.float64, serial=serial)
    evaluator = ReferenceEvaluator(program.model, new_ops=[Erf, ConvTranspose, MaxPool])
    params = initial_params(spec, report, seed=1)
    feeds: dict[str, np.ndarray] = {k: v.astype(np.float64) + 0.3 * rng.normal(size=v.shape) for k, v in params.items()}
    batch, classes = 3, report.layers[-1].output_shape[0]
    feeds[INPUT] = rng.normal(size=(batch, *nchw(tuple(data["input"]["shape"]))))
    feeds[LABELS] = rng.integers(0, classes, batch).astype(np.int64)
    for mask, shape in program.masks.items():
        rate = program.rates[mask]
        feeds[mask] = (rng.uniform(size=(batch, *shape)) >= rate) / (1 - rate)

    def loss(shift: dict[str, np.ndarray], h: float) -> float:
        return float(evaluator.run(["loss"], feeds | {k: feeds[k] + h * v for k, v in shift.items()})[0])

    outputs = [o.name for o in program.model.graph.output]
    got = dict(zip(outputs, evaluator.run(None, feeds), strict=True))
    grads = {k[len("grad.") :]: v for k, v in got.items() if k.startswith("grad.")}
    assert set(grads) == set(program.trainable) and grads
    for k, g in grads.items():
        assert g.shape == feeds[k].shape, k
    for _ in range(2):
        v = {k: rng.normal(size=g.shape) for k, g in grads.items()}
        analytic = sum(float(np.sum(grads[k] * v[k])) for k in grads)
        h = 1e-5
        numeric = (loss(v, h) - loss(v, -h)) / (2 * h)
        scale = np.sqrt(sum(np.sum(g**2) for g in grads.values())) * np.sqrt(sum(np.sum(d**2) for d in v.values()))
        assert abs(analytic - numeric) <= 1e-6 * scale, (analytic, numeric, scale)
    # per-layer: the gradient of each layer's weight alone (a wrong route to one branch cannot hide in the sum)
    for k in sorted(grads):
        if not k.endswith(".weight"):
            continue
        v = {k: rng.normal(size=grads[k].shape)}
        analytic = float(np.sum(grads[k] * v[k]))
        numeric = (loss(v, 1e-5) - loss(v, -1e-5)) / 2e-5
        scale = np.sqrt(np.sum(grads[k] ** 2)) * np.sqrt(np.sum(v[k] ** 2))
        assert abs(analytic - numeric) <= 1e-6 * max(scale, 1e-3), (k, analytic, numeric, scale)
    # the full step (sgd) applies exactly these gradients, and updates the same running statistics
    step = build_train_step(spec, report, Optimizer(), dtype=np.float64, serial=serial)
    names = [o.name for o in step.model.graph.output]
    lr = 0.1
    full = dict(zip(names, ReferenceEvaluator(step.model, new_ops=[Erf, ConvTranspose, MaxPool]).run(
        None, feeds | {LR: np.array(lr), STEP: np.array(0, np.int64)}), strict=True))  # fmt: skip
    np.testing.assert_allclose(full["loss"], got["loss"], rtol=1e-12)
    for k in program.trainable:
        np.testing.assert_allclose(full[f"new.{k}"], feeds[k] - lr * grads[k], rtol=1e-12, atol=1e-14, err_msg=k)
    for k in got:
        if k.startswith("new."):
            np.testing.assert_allclose(full[k], got[k], rtol=1e-12, err_msg=k)
    check_onnxruntime_agrees(program, spec, report, feeds, got, serial)


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_graph_backward_matches_finite_differences(name) -> None:
    check_gradients(GRAD_CASES[name], sum(map(ord, name)))


@pytest.mark.parametrize("name", ["residual", "fan-out-3", "concat-channels", "se-broadcast-multiply", "maximum-3",
                                  "param-free-maxpool-branch", "broadcast-crossed", "nested-merges"])  # fmt: skip
def test_serial_graph_backward_matches_finite_differences(name) -> None:
    """The formulations of serial programs (the runners' single-threaded shards)."""
    check_gradients(GRAD_CASES[name], sum(map(ord, name)) + 1, serial=True)


@settings(FAST, max_examples=examples(6))
@given(graph_specs_with_shapes(max_blocks=2, max_side=6, max_channels=4))
def test_random_graph_backward_matches_finite_differences(pair) -> None:
    check_gradients(pair[0], 7)
