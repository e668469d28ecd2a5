"""CUDA graphs for `run`/`evaluate --device cuda`: the decisions (graph or not, which graph id per batch size,
buffers kept for replay, the fallback when onnxruntime refuses capture) with stand-ins for onnxruntime on the
CPU, and, marked `cuda`, the real thing against plain runs and fp32 (skipped without CUDAExecutionProvider).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnspec.cudagraph import MAX_GRAPHS, NO_GRAPH, CudaRunner
from cnnspec.errors import ModelError
from cnnspec.sessions import CUDA, available_providers, cuda_provider_options

REFUSAL = (
    "onnxruntime cannot load the model: This session cannot use the graph capture feature as requested by the user  "
    "as all compute graph nodes have not been partitioned to the CUDAExecutionProvider"
)
CLASSES = 3


class Value:  # OrtValue on the "device"
    made = 0

    def __init__(self, shape):
        self.shape, self.data = shape, np.zeros(shape, np.float32)
        Value.made += 1

    def update_inplace(self, x):
        assert x.shape == self.shape, "a bound buffer keeps its shape"
        self.data[...] = x

    def numpy(self):
        return self.data.copy()


class FakeOrt:
    class OrtValue:
        @staticmethod
        def ortvalue_from_shape_and_type(shape, dtype, device, index):
            assert (dtype, device, index) == (np.float32, "cuda", 0)
            return Value(shape)

        @staticmethod
        def ortvalue_from_numpy(x, device, index):
            value = Value(x.shape)
            value.data[...] = x
            return value

    class RunOptions:
        def __init__(self):
            self.entries = {}

        def add_run_config_entry(self, key, value):
            self.entries[key] = value


class Binding:
    def __init__(self):
        self.x = self.y = None

    def bind_ortvalue_input(self, name, value):
        assert name == "input"
        self.x = value

    def bind_ortvalue_output(self, name, value):
        assert name == "output"
        self.y = value

    def bind_output(self, name, device, index):
        self.y = None

    def copy_outputs_to_cpu(self):
        return [self.y.numpy()]


class Session:
    def __init__(self, graphs: bool):
        self.graphs, self.runs = graphs, []  # (batch size, graph id, input buffer id)

    def io_binding(self):
        return Binding()

    def run_with_iobinding(self, io, options):
        x = io.x.data
        if io.y is None:
            io.y = Value((len(x), CLASSES))
        io.y.data[...] = x.reshape(len(x), -1)[:, :CLASSES] * 2  # the "model"
        self.runs.append((len(x), options.entries.get("gpu_graph_id"), id(io.x)))


def factory(refuse: str | None = None, calls: list | None = None):
    def make(data, device, threads, cuda_graph=False):
        assert device == "cuda"
        if calls is not None:
            calls.append(cuda_graph)
        if cuda_graph and refuse:
            raise ModelError(refuse)
        return Session(cuda_graph)

    return make


def runner(**kwargs) -> CudaRunner:
    options = {"classes": CLASSES, "factory": factory(), "ort": FakeOrt()} | kwargs
    return CudaRunner(b"model", "input", "output", options.pop("classes"), **options)


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, 2, 2)).astype(np.float32)


def test_one_graph_per_batch_size_on_the_same_buffers():
    r = runner()
    for n in (4, 4, 2, 4, 2):
        np.testing.assert_array_equal(r.run(batch(n)), batch(n).reshape(n, -1)[:, :CLASSES] * 2)
    assert r.graphs and r.captured == [2, 4]
    runs = r.session.runs
    assert [gid for _, gid, _ in runs] == ["0", "0", "1", "0", "1"]
    assert len({buf for n, _, buf in runs if n == 4}) == 1  # replayed on the buffers it was captured with


def test_past_the_cap_batches_run_without_capture():
    r = runner()
    for n in range(1, MAX_GRAPHS + 4):
        r.run(batch(n))
    ids = [gid for _, gid, _ in r.session.runs]
    assert ids == [str(i) for i in range(MAX_GRAPHS)] + [str(NO_GRAPH)] * 3
    assert r.captured == list(range(1, MAX_GRAPHS + 1))


def test_refused_capture_falls_back_and_says_so_once():
    notes, calls = [], []
    r = runner(factory=factory(REFUSAL, calls), notify=notes.append)
    for n in (2, 2, 3):
        r.run(batch(n))
    assert calls == [True, False] and not r.graphs and r.captured == []
    assert len(notes) == 1 and "CUDA graphs are off" in notes[0] and "CPU provider" in notes[0]
    assert all(gid is None for _, gid, _ in r.session.runs)  # no graph id on a session without capture


def test_other_load_errors_are_not_swallowed():
    with pytest.raises(ModelError, match="broken"):
        runner(factory=factory("onnxruntime cannot load the model: broken"))


def test_no_cuda_graph_asks_for_a_plain_session():
    calls, notes = [], []
    r = runner(factory=factory(calls=calls), use_graph=False, notify=notes.append)
    r.run(batch(2))
    assert calls == [False] and not notes and r.captured == []


def test_symbolic_class_count_is_learned_from_a_first_plain_run():
    r = runner(classes=None)
    r.run(batch(3))
    assert r.classes == CLASSES
    r.run(batch(3))
    assert r.captured == [3]


def test_provider_option():
    assert cuda_provider_options(True) == {"enable_cuda_graph": "1"}
    assert cuda_provider_options(False) == {"enable_cuda_graph": "0"}


def test_no_cuda_graph_flag_is_accepted_on_the_cpu(tmp_path, capsys):
    from PIL import Image

    from cnnspec.cli import _run
    from cnnspec.compiler import compile_spec, model_bytes
    from cnnspec.spec import load_spec

    model = tmp_path / "m.onnx"
    model.write_bytes(model_bytes(compile_spec(load_spec(Path(__file__).parents[1] / "specs/digits.yaml"))))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert _run(["run", str(model), str(tmp_path / "a.png"), "--no-cuda-graph", "--json"]) == 0
    capsys.readouterr()


# ---- on a GPU -----------------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(CUDA not in available_providers(), reason="onnxruntime has no CUDAExecutionProvider here")


@pytest.fixture(scope="module")
def confident(tmp_path_factory) -> Path:
    """specs/digits.yaml compiled with a scaled-up last layer: confident predictions, as after training."""
    from onnx import numpy_helper

    from cnnspec.compiler import compile_spec, model_bytes
    from cnnspec.spec import load_spec

    model = compile_spec(load_spec(Path(__file__).parents[1] / "specs/digits.yaml"))
    for i, t in enumerate(model.graph.initializer):
        if t.name == "dense.weight":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 100, t.name))
    path = tmp_path_factory.mktemp("cuda") / "m.onnx"
    path.write_bytes(model_bytes(model))
    return path


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 1, 8, 8)).astype(np.float32)


@pytest.mark.cuda
@cuda
def test_cuda_graph_results_equal_plain_cuda_runs(confident):
    """Tolerance 1e-5: the same kernels replayed; only launch order may differ."""
    from cnnspec.runtime import Classifier

    graphs, plain = Classifier(confident, device="cuda"), Classifier(confident, device="cuda", cuda_graph=False)
    for n in (1, 7, 7, 1, 64):
        x = _pixels(n)
        np.testing.assert_allclose(graphs.scores(x, batch_size=64), plain.scores(x, batch_size=64), atol=1e-5)
    assert graphs._cuda.graphs and graphs._cuda.captured == [1, 7, 64]
    assert not plain._cuda.graphs


@pytest.mark.cuda
@cuda
def test_fp16_on_cuda_matches_fp32(confident, tmp_path):
    """fp16 export run on CUDA vs the fp32 model on the CPU: probabilities within 1e-2, same top-1 on 99%."""
    from cnnspec.export import export
    from cnnspec.runtime import Classifier

    half = tmp_path / "half.onnx"
    export(confident, "fp16", half)
    x = _pixels(256)
    want = Classifier(confident).scores(x)
    got = Classifier(half, device="cuda").scores(x)
    np.testing.assert_allclose(got, want, atol=1e-2)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
