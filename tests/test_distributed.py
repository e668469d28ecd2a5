"""Data-parallel training (training/staged.py, training/distributed.py): the staged program against the one-session
step, and torchrun with 2 gloo ranks against one process with the same global batch, a killed rank and --resume.

The reference is cnnspec's own one-process run, as the issue states the contract: N ranks train the model one
process would (its step is checked against finite differences and PyTorch in test_gradients.py/test_training.py).
NOTE: no bias in front of a BatchNormalization here: its true gradient is 0, and Adam divides its rounding noise
(1e-9) by itself, so that weight moves by ±lr whatever the summation order; any two correct implementations disagree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from cnnspec.analysis import check
from cnnspec.compiler import initial_params
from cnnspec.spec import spec_from_data
from cnnspec.training.loop import dropout_masks
from cnnspec.training.program import build_train_step
from cnnspec.training.runner import StepRunner
from cnnspec.training.shards import ShardedStagedRunner
from cnnspec.training.staged import LocalComm, StagedStepRunner, build_staged, rank_slice
from cnnspec.training.trainer import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
SPEC = """
name: dp
input: {shape: [8, 8, 1]}
labels: [a, b, c]
preprocess: {scale: 0.00392156862745098}
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3, padding: same, use_bias: false}
  - {type: BatchNormalization}
  - {type: Activation, activation: relu}
  - {type: MaxPooling2D}
  - {type: Conv2D, filters: 4, kernel_size: 3, use_bias: false}
  - {type: BatchNormalization, momentum: 0.9}
  - {type: Flatten}
  - {type: Dropout, rate: 0.3}
  - {type: Dense, units: 8, use_bias: false}
  - {type: BatchNormalization}
  - {type: Dense, units: 3, activation: softmax}
training: {optimizer: OPT, learning_rate: 0.02, epochs: 3, batch_size: 16}
"""


BINARY_SPEC = """
name: dp_binary
input: {shape: [8, 8, 1]}
labels: ["no", "yes"]
preprocess: {scale: 0.00392156862745098}
layers:
  - {type: Conv2D, name: features, filters: 4, kernel_size: 3, padding: same, use_bias: false, trainable: false}
  - {type: BatchNormalization}
  - {type: Activation, activation: relu}
  - {type: MaxPooling2D}
  - {type: Flatten}
  - {type: Dense, units: 1, activation: sigmoid}
training: {optimizer: adam, learning_rate: 0.02, epochs: 2, batch_size: 16}
"""


def spec_text(optimizer: str) -> str:
    return SPEC.replace("OPT", optimizer)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize(("optimizer", "binary"), [("sgd", False), ("adam", False), ("sgd", True)])
def test_staged_step_equals_the_one_session_step(optimizer, binary, shards):
    """One rank on its own, and 3 shards on threads summing their batch statistics between the stages (what a
    multi-core CPU runs for a net with BatchNormalization), run the staged program (3 all-reduces per
    BatchNormalization) as the fused step; also with a frozen layer and a binary head (its loss too divides
    by the global batch)."""
    import yaml

    spec = spec_from_data(yaml.safe_load(BINARY_SPEC.replace("adam", optimizer) if binary else spec_text(optimizer)))
    report = check(spec)
    settings = resolve_settings(spec)
    staged = build_staged(spec, report, settings.optimizer, 0.0, "cpu", serial=True)
    # 3 all-reduces per BatchNormalization; 2 for one under a frozen layer (no dL/dx to sum for)
    assert len(staged.stages) == (2 if binary else 3 * 3) + 1
    fused = build_train_step(spec, report, settings.optimizer, serial=True)
    params = initial_params(spec, report, 0)
    state = settings.optimizer.initial_state({p: params[p] for p in fused.trainable})
    if shards == 1:
        ours = StagedStepRunner(staged, settings.optimizer, LocalComm(), 1)
    else:
        ours = ShardedStagedRunner(staged, settings.optimizer, shards, shards)
    runners = [ours, StepRunner(fused, "cpu", 1)]
    for runner in runners:
        runner.load(params, state)
    rng = np.random.default_rng(1)
    for step in range(5):
        x = rng.integers(0, 256, (13, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 2 if binary else 3, 13)
        masks = dropout_masks(fused, 0, 0, step, 13)
        (loss_a, hits_a), (loss_b, hits_b) = (r.step(x, y, 0.02, step, masks) for r in runners)
        assert hits_a == hits_b
        np.testing.assert_allclose(loss_a, loss_b, rtol=TOLERANCE)
    for got, want in ((runners[0].params(), runners[1].params()), (runners[0].state(), runners[1].state())):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize(("n", "world"), [(16, 2), (13, 2), (5, 4), (1, 2), (7, 3)])
def test_rank_slices_cut_the_global_batch_once(n, world):
    parts = [rank_slice(n, r, world) for r in range(world)]
    covered = np.concatenate([np.arange(n)[p] for p in parts])
    np.testing.assert_array_equal(covered, np.arange(n))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_a_plain_train_never_imports_torch(tmp_path):
    data = make_data(tmp_path)
    (tmp_path / "spec.yaml").write_text(spec_text("sgd"))
    code = (
        "import sys\nfrom cnnspec.cli import main\n"
        f"try:\n    main(['train', {str(tmp_path / 'spec.yaml')!r}, '--data', {str(data)!r}, '-o', "
        f"{str(tmp_path / 'm.onnx')!r}, '--epochs', '1'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# ---- torchrun, 2 gloo ranks ------------------------------------------------------------------------------------


def make_data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 45)  # 3 batches of 16, 16, 13: the last one splits 6 / 7
    x = rng.integers(0, 120, (45, 8, 8)).astype(np.uint8)
    x[:, :, :3] += (y[:, None, None] * 40).astype(np.uint8)
    path = folder / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def train_args(folder: Path, out: str, *extra: str) -> list[str]:
    return ["train", str(folder / "spec.yaml"), "--data", str(folder / "data.npz"), "-o", str(folder / out),
            "--threads", "1", *extra]  # fmt: skip


def run(args: list[str], ranks: int | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cnnspec ARGS` in one process, or under torchrun with `ranks` processes (--standalone: a free port)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command = [*(launcher if ranks else [sys.executable]), "-m", "cnnspec", *args]
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "CNNSPEC_DEBUG")}
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=clean | (env or {}), timeout=240
    )  # fmt: skip


def weights(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def assert_same_weights(got: Path, want: Path) -> None:
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys()
    for name in b:
        np.testing.assert_allclose(a[name], b[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_data(tmp_path)
    return tmp_path


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_train_the_model_of_one_process(folder, optimizer):
    """9 steps with dropout and 3 sync BatchNormalizations; the metrics too (rank 0 writes them)."""
    (folder / "spec.yaml").write_text(spec_text(optimizer))
    one = run(train_args(folder, "one.onnx", "--metrics-json", str(folder / "one.json")), None)
    assert one.returncode == 0, one.stderr
    two = run(train_args(folder, "two.onnx", "--metrics-json", str(folder / "two.json")), 2)
    assert two.returncode == 0, two.stderr
    assert_same_weights(folder / "two.onnx", folder / "one.onnx")
    import json

    rows = [json.loads((folder / f"{n}.json").read_text()) for n in ("one", "two")]
    for a, b in zip(*rows, strict=True):
        assert a["train_accuracy"] == b["train_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=TOLERANCE)
    assert two.stderr.count("epoch 3/3") == 1  # rank 0 alone logs


def test_a_killed_rank_fails_the_job_and_resume_continues(folder):
    """Rank 1 dies (SIGKILL) in epoch 2: the job ends (no hang; the test's 240 s timeout bounds it), naming the
    rank; --resume on 2 ranks, and on 1, continues from the epoch-1 checkpoint to the uninterrupted weights."""
    (folder / "spec.yaml").write_text(spec_text("adam"))
    ckpt = folder / "ckpt"
    one = run(train_args(folder, "one.onnx"), None)
    assert one.returncode == 0, one.stderr
    killed = run(
        train_args(folder, "m.onnx", "--checkpoint-dir", str(ckpt)), 2, {"CNNSPEC_TEST_HOOK": "kill_rank1_step4"}
    )
    assert killed.returncode != 0
    assert "rank      : 1" in killed.stderr and "SIGKILL" in killed.stderr  # torchrun's summary: the root cause
    # rank 0 fails at its next all-reduce, unless torchrun's SIGTERM (it stops the job once a worker has died)
    # reaches it first: a race on a loaded machine, both clean
    ours = "rank 0: a collective failed at step 5" in killed.stderr
    assert ours or "rank      : 0 (local_rank: 0)\n  exitcode  : -15" in killed.stderr, killed.stderr
    assert f'File "{ROOT / "cnnspec"}' not in killed.stderr  # the only traceback is torchrun's own
    assert not (folder / "m.onnx").exists()
    shutil.copytree(ckpt, folder / "ckpt1")
    resumed = run(train_args(folder, "m.onnx", "--checkpoint-dir", str(ckpt), "--resume"), 2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, batch 1 (step 3)" in resumed.stderr
    assert_same_weights(folder / "m.onnx", folder / "one.onnx")
    alone = run(train_args(folder, "m1.onnx", "--checkpoint-dir", str(folder / "ckpt1"), "--resume"), None)
    assert alone.returncode == 0, alone.stderr
    assert_same_weights(folder / "m1.onnx", folder / "one.onnx")


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_the_nccl_path_on_one_gpu_trains_the_cpu_model(folder):
    """CNNSPEC_DISTRIBUTED=1 runs the data-parallel path with one rank: NCCL, the all-reduced buffers as torch
    tensors on the GPU bound into onnxruntime's CUDA sessions; the weights are the CPU run's within 1e-4."""
    (folder / "spec.yaml").write_text(spec_text("sgd"))
    cpu = run(train_args(folder, "cpu.onnx"), None)
    assert cpu.returncode == 0, cpu.stderr
    gpu = run([*train_args(folder, "gpu.onnx"), "--device", "cuda"], 1, {"CNNSPEC_DISTRIBUTED": "1"})
    assert gpu.returncode == 0, gpu.stderr
    a, b = weights(folder / "gpu.onnx"), weights(folder / "cpu.onnx")
    for name in b:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_two_ranks_with_init_from_a_frozen_layer_and_a_binary_head(folder):
    """--init-from, `trainable: false` and a sigmoid head under torchrun: the weights of one process, and the
    frozen layer still holds the source model's weights (rank 0 loads them and broadcasts the start state)."""
    with np.load(folder / "data.npz") as d:
        np.savez(folder / "data.npz", x=d["x"], y=(d["y"] > 0).astype(np.int64))
    (folder / "spec.yaml").write_text(BINARY_SPEC.replace(", trainable: false", ""))
    source = run(train_args(folder, "source.onnx"), None)
    assert source.returncode == 0, source.stderr
    (folder / "spec.yaml").write_text(BINARY_SPEC)
    init = ("--init-from", str(folder / "source.onnx"))
    one = run(train_args(folder, "one.onnx", *init), None)
    assert one.returncode == 0, one.stderr
    two = run(train_args(folder, "two.onnx", *init, "--plots", str(folder / "plots")), 2)
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("init-from") == one.stderr.count("init-from") > 0  # rank 0 alone logs
    assert_same_weights(folder / "two.onnx", folder / "one.onnx")
    frozen = [n for n in weights(folder / "one.onnx") if n.startswith("features")]
    assert frozen
    for name in frozen:
        np.testing.assert_array_equal(weights(folder / "two.onnx")[name], weights(folder / "source.onnx")[name])
    assert (folder / "plots" / "curves.png").stat().st_size > 1000


def test_stages_keep_the_builders_order():
    """A node runs no earlier than the stage it was emitted in: dL/dW's strided slices of a layer's input (backward
    nodes that read only forward values) stay in the backward instead of being computed in the forward's stages
    and handed on to it (which tripled resnet18_cifar's live memory)."""
    spec = spec_from_data({
        "name": "big_output", "input": {"shape": [16, 16, 1]}, "labels": ["a", "b", "c"],
        "layers": [
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False},  # 256 pixels
            {"type": "BatchNormalization"}, {"type": "Activation", "activation": "relu"}, {"type": "MaxPooling2D"},
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False},
            {"type": "BatchNormalization"}, {"type": "Flatten"}, {"type": "Dense", "units": 3, "activation": "softmax"},
        ],
    })  # fmt: skip
    staged = build_staged(spec, check(spec), resolve_settings(spec).optimizer, 0.0, "cpu", serial=True)
    order = {node.name: i for i, node in enumerate(staged.program.model.graph.node)}
    afters = [c.after for c in staged.sync.collectives]
    for k, stage in enumerate(staged.stages):
        emitted = [order[node.name] for node in stage.model.graph.node]
        assert k == 0 or min(emitted) >= afters[k - 1], k
    first = [k for k, stage in enumerate(staged.stages) for n in stage.model.graph.node
             if n.op_type == "Slice" and n.name.startswith("conv2d/")]  # fmt: skip
    assert first and set(first) == {len(staged.stages) - 1}  # the first layer's dL/dW, in the last stage
