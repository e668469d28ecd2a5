"""The training program and loop against independent references: a numpy train step, dropout and
BatchNormalization statistics, learning on separable data, determinism and resume."""

from __future__ import annotations

import os
import signal

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cnnspec.analysis import check
from cnnspec.compiler import initial_params
from cnnspec.spec import spec_from_data
from cnnspec.training.loop import Data, dropout_masks
from cnnspec.training.native import one_step
from cnnspec.training.optimizers import Optimizer
from cnnspec.training.program import build_train_step, new
from cnnspec.training.trainer import resolve_settings, train_model

SMALL = {
    "name": "small",
    "input": {"shape": [6, 6, 1]},
    "preprocess": {"scale": 0.5},
    "layers": [
        {"type": "Conv2D", "filters": 3, "kernel_size": 3, "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.5},
        {"type": "Dense", "units": 4, "activation": "softmax"},
    ],
    "training": {"optimizer": "momentum", "momentum": 0.7, "label_smoothing": 0.1},
}


def numpy_step(p, x, y, mask, lr, momentum, smoothing, classes=4):
    """Forward, loss and backward of SMALL written out in float64, then Keras's SGD+momentum from v = 0."""
    w1, b1, w2, b2 = (p[k].astype(np.float64) for k in ("conv2d.weight", "conv2d.bias", "dense.weight", "dense.bias"))
    n = len(y)
    windows = sliding_window_view(x.astype(np.float64) * 0.5, (3, 3), axis=(2, 3))  # n, c, h, w, i, j
    z1 = np.einsum("nchwij,mcij->nmhw", windows, w1) + b1[None, :, None, None]
    a1 = np.maximum(z1, 0)
    d = a1.reshape(n, -1) * mask
    z2 = d @ w2.T + b2
    e = np.exp(z2 - z2.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    target = np.eye(classes)[y] * (1 - smoothing) + smoothing / classes
    dz2 = (prob - target) / n
    dd = (dz2 @ w2) * mask
    dz1 = dd.reshape(a1.shape) * (z1 > 0)
    grads = {
        "conv2d.weight": np.einsum("nmhw,nchwij->mcij", dz1, windows),
        "conv2d.bias": dz1.sum((0, 2, 3)),
        "dense.weight": dz2.T @ d,
        "dense.bias": dz2.sum(0),
    }
    return {k: p[k] + (-lr * g) for k, g in grads.items()}  # v = -lr g + 0 * momentum; w += v


def test_one_step_matches_numpy():
    spec = spec_from_data(SMALL)
    report = check(spec)
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32) for k, v in initial_params(spec, report).items()}
    x = rng.uniform(0, 2, (5, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 4, 5)
    got = one_step(spec, params, x, y, 0.3, "momentum")
    program = build_train_step(spec, report, Optimizer("momentum", momentum=0.7), 0.1)
    (mask,) = dropout_masks(program, 0, 0, 0, 5).values()
    want = numpy_step(params, x, y, mask, 0.3, 0.7, 0.1)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_dropout_masks_are_keyed_and_scaled():
    spec = spec_from_data(SMALL)
    program = build_train_step(spec, check(spec), Optimizer())
    (name,) = program.masks
    assert program.masks[name] == (48,) and program.rates[name] == 0.5
    a = dropout_masks(program, 7, 3, 11, 400)[name]
    assert np.array_equal(a, dropout_masks(program, 7, 3, 11, 400)[name])
    assert not np.array_equal(a, dropout_masks(program, 7, 3, 12, 400)[name])
    assert not np.array_equal(a, dropout_masks(program, 8, 3, 11, 400)[name])
    assert set(np.unique(a)) == {0.0, 2.0}
    assert abs((a == 0).mean() - 0.5) < 0.02


def test_batchnorm_running_statistics_follow_keras():
    data = {
        "name": "bn",
        "input": {"shape": [4, 4, 2]},
        "layers": [
            {"type": "BatchNormalization", "momentum": 0.8, "epsilon": 0.01},
            {"type": "Flatten"},
            {"type": "Dense", "units": 3},
        ],
    }
    spec = spec_from_data(data)
    report = check(spec)
    params = initial_params(spec, report)
    params["batch_normalization.running_mean"] = np.array([0.5, -1.0], np.float32)
    params["batch_normalization.running_var"] = np.array([2.0, 0.5], np.float32)
    x = np.random.default_rng(1).normal(3.0, 2.0, (6, 2, 4, 4)).astype(np.float32)
    got = one_step(spec, params, x, np.arange(6) % 3, 0.1)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))  # NOTE: biased variance, as Keras (PyTorch: unbiased)
    np.testing.assert_allclose(
        got["batch_normalization.running_mean"], np.array([0.5, -1.0]) * 0.8 + mean * 0.2, rtol=1e-5
    )
    np.testing.assert_allclose(
        got["batch_normalization.running_var"], np.array([2.0, 0.5]) * 0.8 + var * 0.2, rtol=1e-5
    )


def separable(n=96, seed=0):
    """Two classes: a bright left half or a bright right half, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(0, 80, (n, 1, 8, 8)).astype(np.float32)
    x[y == 0, :, :, :4] += 150
    x[y == 1, :, :, 4:] += 150
    return Data(x, y.astype(np.int64))


NET = {
    "name": "sep",
    "input": {"shape": [8, 8, 1]},
    "labels": ["left", "right"],
    "preprocess": {"scale": 1 / 255},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu", "padding": "same"},
        {"type": "BatchNormalization"},
        {"type": "MaxPooling2D"},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.25},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
    "training": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 4, "batch_size": 16},
}


SHARDED = dict(
    NET,
    layers=[
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu", "padding": "same"},
        {"type": "MaxPooling2D"},
        {"type": "Conv2D", "filters": 6, "kernel_size": 3, "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.25},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
)
"""No BatchNormalization: on 2 threads its batches of 32 run as two shards of 16, each with one thread
(a serial program: the second Conv2D's dL/dx is a ScatterND)."""


RESIDUAL = dict(
    NET,
    name="residual",
    blocks={
        "res": {
            "params": ["filters"],
            "layers": [
                {"type": "Conv2D", "name": "conv", "filters": "$filters", "kernel_size": 3, "padding": "same"},
                {"type": "Dropout", "name": "drop", "rate": 0.2},
                {"type": "Add", "name": "add", "inputs": ["in", "drop"]},
                {"type": "Activation", "activation": "relu"},
            ],
        }
    },
    layers=[
        {"type": "Conv2D", "name": "stem", "filters": 4, "kernel_size": 3, "activation": "relu", "padding": "same"},
        {"block": "res", "name": "layer1", "repeat": 2, "filters": 4},
        {"type": "MaxPooling2D", "name": "pool", "inputs": "stem"},
        {"type": "MaxPooling2D", "name": "deep", "inputs": "layer1"},
        {"type": "Concatenate", "name": "both", "inputs": ["pool", "deep"]},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
)
"""A graph: residual blocks with dropout inside (masks named layer1.0.drop.mask), fan-out of the stem to
the block and a pooled skip, a concatenation. No BatchNormalization, so it also runs as shards."""
STEM, USE, *REST = RESIDUAL["layers"]
RESIDUAL_BN = dict(
    RESIDUAL,
    name="residual-bn",
    layers=[STEM, {"type": "BatchNormalization", "name": "stem_bn"}, dict(USE, inputs="stem_bn"), *REST],
)

NORMS = dict(  # the per-sample normalizations, LayerScale and every broadcast mask (ConvNeXt-like residual)
    NET,
    name="norms",
    layers=[
        {"type": "Conv2D", "name": "stem", "filters": 8, "kernel_size": 3, "padding": "same"},
        {"type": "GroupNormalization", "groups": 4},
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "gelu"},
        {"type": "LayerNormalization"},
        {"type": "LayerScale", "init_values": 0.5, "projection_dim": 8},
        {"type": "StochasticDepth", "drop_path_rate": 0.2, "name": "drop_path"},
        {"type": "Add", "inputs": ["stem", "drop_path"]},
        {"type": "SpatialDropout2D", "rate": 0.2},
        {"type": "MaxPooling2D"},
        {"type": "Dropout", "rate": 0.2, "noise_shape": [None, 1, None, 1]},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
)


CONV_VARIANTS = dict(  # DepthwiseConv2D, SeparableConv2D and Conv2DTranspose in one net (a small encoder-decoder)
    NET,
    name="conv-variants",
    layers=[
        {"type": "DepthwiseConv2D", "kernel_size": 3, "depth_multiplier": 4, "padding": "same", "activation": "relu"},
        {
            "type": "SeparableConv2D",
            "filters": 8,
            "kernel_size": 3,
            "strides": 2,
            "padding": "same",
            "activation": "relu",
        },
        {
            "type": "Conv2DTranspose",
            "filters": 4,
            "kernel_size": 3,
            "strides": 2,
            "padding": "same",
            "activation": "relu",
        },
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
)


def test_conv_variants_net_learns():
    result = train(net=dict(CONV_VARIANTS, training=dict(NET["training"], epochs=8)))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0], losses


def train(tmp=None, resume=False, net=NET, threads=None, **overrides):
    spec = spec_from_data(net)
    settings = resolve_settings(spec, **overrides)
    return train_model(
        spec, separable(), None, settings, checkpoint_dir=tmp, resume=resume, threads=threads, log=lambda line: None
    )


def test_loss_decreases_on_separable_data():
    result = train(epochs=5)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_accuracy"] == 1.0
    assert set(result.history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}


AUGMENTED = NET | {  # the augmentation layers run in the input pipeline: draws keyed on (seed, epoch, batch)
    "layers": [
        {"type": "RandomFlip", "mode": "horizontal"},
        {"type": "RandomTranslation", "height_factor": 0.1, "width_factor": 0.1},
        {"type": "RandomCrop", "height": 7, "width": 7},
        {"type": "RandomBrightness", "factor": 0.1, "seed": 5},
        *NET["layers"],
    ]
}

# One session (NET: BatchNormalization mixes the batch) and two shards side by side (SHARDED, 2 threads).
RUNS = pytest.mark.parametrize(
    "run",
    [{"net": NET}, {"net": SHARDED, "threads": 2, "batch_size": 32}, {"net": RESIDUAL_BN},
     {"net": RESIDUAL, "threads": 2, "batch_size": 32}, {"net": AUGMENTED}],
    ids=["one-session", "two-shards", "graph-one-session", "graph-two-shards", "augmented"],
)  # fmt: skip


@RUNS
def test_same_seed_same_weights_bit_for_bit(run):
    a, b, c = train(seed=3, **run), train(seed=3, **run), train(seed=4, **run)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not all(np.array_equal(a.params[k], c.params[k]) for k in a.params)


@RUNS
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch, run):
    from cnnspec.training import runner

    kind = runner.ShardedStepRunner if "threads" in run else runner.StepRunner
    straight = train(**run)
    calls, real_step = {"n": 0}, kind.step
    interrupt_at = 9 if kind is runner.StepRunner else 5  # mid-epoch 2 (6 or 3 batches per epoch)

    def step(self, *args):
        calls["n"] += 1
        if calls["n"] == interrupt_at:  # as if Ctrl-C arrived now
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args)

    monkeypatch.setattr(kind, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "ckpt", **run)
    monkeypatch.setattr(kind, "step", real_step)
    assert calls["n"] == interrupt_at
    resumed = train(tmp_path / "ckpt", resume=True, **run)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    for k in straight.params:
        assert np.array_equal(straight.params[k], resumed.params[k]), k


def test_checkpoint_folder_refuses_fresh_run_and_other_settings(tmp_path):
    from cnnspec.errors import CnnspecError, UsageError

    train(tmp_path, epochs=1)
    assert (tmp_path / "LATEST").read_text().startswith("step-000000006.npz ")
    with pytest.raises(UsageError, match="already holds checkpoints"):
        train(tmp_path, epochs=1)
    with pytest.raises(CnnspecError, match="belongs to another run: learning_rate: 0.01 in the checkpoint, 0.5 now"):
        train(tmp_path, resume=True, learning_rate=0.5)


def test_early_stopping_keeps_best_weights():
    net = dict(NET, training=dict(NET["training"], learning_rate=3.0, patience=1, epochs=8))
    result = train(net=net)
    losses = [row["train_loss"] for row in result.history]
    best = int(np.argmin(losses))
    assert result.best_epoch == best + 1
    assert len(losses) < 8 or best == len(losses) - 1


def test_train_step_graph_is_standard_domain_only():
    spec = spec_from_data(NET)
    program = build_train_step(spec, check(spec), Optimizer("adamw"))
    assert {op.domain for op in program.model.opset_import} == {""}
    assert all(node.domain == "" for node in program.model.graph.node)
    outputs = [o.name for o in program.model.graph.output]
    assert outputs[:2] == ["loss", "correct"]
    assert set(outputs[2:]) == {new(n) for n in program.params + program.state}
    ort.InferenceSession(program.model.SerializeToString(), providers=["CPUExecutionProvider"])
    # every program cnnspec builds or exports passes onnx's checker with shape inference
    from cnnspec.training.program import build_eval, build_shard_update

    sharded = spec_from_data(SHARDED)
    gradients = build_train_step(sharded, check(sharded), Optimizer(), gradients_only=True, serial=True)
    update = build_shard_update(gradients, Optimizer("adam"), 3)
    for model in (program, build_eval(spec, check(spec)), gradients, update):
        onnx.checker.check_model(model.model, full_check=True)


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
@pytest.mark.parametrize(
    "net", [NET, RESIDUAL_BN, CONV_VARIANTS, NORMS], ids=["chain", "graph", "conv-variants", "norms"]
)
def test_cuda_matches_cpu(net):
    spec = spec_from_data(net)
    settings = resolve_settings(spec, epochs=1)
    cpu = train_model(spec, separable(), None, settings, log=lambda line: None)
    gpu = train_model(spec, separable(), None, settings, device="cuda", log=lambda line: None)
    for k in cpu.params:
        np.testing.assert_allclose(gpu.params[k], cpu.params[k], rtol=1e-3, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("run", [{}, {"threads": 2, "batch_size": 32}], ids=["one-session", "two-shards"])
def test_per_sample_normalizations_and_broadcast_masks_train(run):
    """LayerNormalization and GroupNormalization keep each sample's statistics to itself, so the batch may run
    as shards; the masks ([N, 8, 1, 1], [N, 1, 1, 1], and [N, 1, 1, 4] from Keras's (N, 1, W, 1)) are sliced
    with the batch."""
    result = train(net=NORMS, epochs=6, **run)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]


def test_broadcast_masks_drop_whole_samples_channels_and_columns():
    spec = spec_from_data(NORMS)
    program = build_train_step(spec, check(spec), Optimizer())
    assert program.masks == {"drop_path.mask": (1, 1, 1), "spatial_dropout2d.mask": (8, 1, 1),
                             "dropout.mask": (1, 1, 4)}  # fmt: skip
    masks = dropout_masks(program, 0, 0, 0, 400)
    for name, rate in program.rates.items():
        mask = masks[name]
        assert mask.shape == (400, *program.masks[name])
        assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - rate))}
        assert abs((mask == 0).mean() - rate) < 0.06  # Bernoulli(rate) drops


def test_schedules():
    spec = spec_from_data(NET)
    constant = resolve_settings(spec, learning_rate=0.1)
    assert constant.lr_at(7, 100, 10) == 0.1
    step = resolve_settings(spec, learning_rate=0.1, schedule="step", step_epochs=2, step_gamma=0.5)
    assert [step.lr_at(e, 0, 10) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    cosine = resolve_settings(spec, learning_rate=0.1, schedule="cosine", epochs=2)
    assert cosine.lr_at(0, 0, 10) == 0.1
    assert cosine.lr_at(1, 10, 10) == pytest.approx(0.05)
    assert cosine.lr_at(1, 19, 10) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 19 / 20)))


def test_validation_split_reports_val_metrics():
    spec = spec_from_data(NET)
    settings = resolve_settings(spec, epochs=2, val_split=0.25)
    from cnnspec.training.loop import split

    train_part, val_part = split(separable(), 0.25, settings.seed)
    assert len(val_part.y) == 24 and len(train_part.y) == 72
    result = train_model(spec, train_part, val_part, settings, log=lambda line: None)
    assert all(row["val_loss"] is not None and 0 <= row["val_accuracy"] <= 1 for row in result.history)


def test_cli_options_override_the_spec_training_section():
    spec = spec_from_data(NET)
    s = resolve_settings(spec, epochs=9, batch_size=7, learning_rate=0.5, seed=3, optimizer="sgd")
    assert (s.epochs, s.batch_size, s.learning_rate, s.seed, s.optimizer.kind) == (9, 7, 0.5, 3, "sgd")
    default = resolve_settings(spec)
    assert (default.epochs, default.batch_size, default.learning_rate) == (4, 16, 0.01)


@pytest.mark.parametrize("net", [NET, RESIDUAL_BN], ids=["chain", "graph"])
def test_exported_train_step_driven_by_hand_equals_the_loop(net):
    """The --export-train-step interface: feed new.* back as inputs, step = updates done so far."""
    from cnnspec.training.loop import rng

    spec = spec_from_data(net)
    settings = resolve_settings(spec, epochs=2, batch_size=96)  # one batch per epoch
    data = separable()
    looped = train_model(spec, data, None, settings, log=lambda line: None)
    report = check(spec)
    program = build_train_step(spec, report, settings.optimizer, settings.label_smoothing)
    session = ort.InferenceSession(program.model.SerializeToString(), providers=["CPUExecutionProvider"])
    params = initial_params(spec, report, settings.seed)
    values = params | settings.optimizer.initial_state({p: params[p] for p in program.trainable})
    names = [o.name for o in session.get_outputs()]
    for epoch in range(2):
        order = rng(settings.seed, epoch, 0).permutation(96)
        feeds = {"input": data.x[order], "labels": data.y[order], "step": np.asarray(epoch, np.int64)}
        feeds["learning_rate"] = np.asarray(settings.learning_rate, np.float32)
        feeds |= dropout_masks(program, settings.seed, epoch, 0, 96)
        got = dict(zip(names, session.run(None, values | feeds), strict=True))
        values = {k: got[new(k)] for k in values}
    for k in looped.params:
        np.testing.assert_allclose(values[k], looped.params[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("net", [SHARDED, RESIDUAL], ids=["chain", "graph"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("batch", "shards"), [(37, 3), (2, 3)], ids=["uneven-shards", "fewer-images-than-shards"])
def test_shards_add_up_to_the_fused_step(optimizer, batch, shards, net):
    """K shards' gradients weighted by their share of the batch give the fused step's update."""
    from cnnspec.training.runner import ShardedStepRunner, StepRunner

    spec = spec_from_data(net)
    report = check(spec)
    settings = resolve_settings(spec, optimizer=optimizer, learning_rate=0.05)
    fused = build_train_step(spec, report, settings.optimizer)
    gradients = build_train_step(spec, report, settings.optimizer, gradients_only=True, serial=True)
    assert "ScatterND" in {node.op_type for node in gradients.model.graph.node}
    one, many = StepRunner(fused, threads=1), ShardedStepRunner(gradients, settings.optimizer, shards, threads=shards)
    params = initial_params(spec, report)
    state = settings.optimizer.initial_state({p: params[p] for p in fused.trainable})
    assert many.state_names == fused.state
    one.load(params, state)
    many.load(params, state)
    data = separable(batch, seed=5)
    for step in range(2):
        masks = dropout_masks(fused, 0, 0, step, batch)
        loss_one, correct_one = one.step(data.x, data.y, 0.05, step, masks)
        loss_many, correct_many = many.step(data.x, data.y, 0.05, step, masks)
        assert loss_many == pytest.approx(loss_one, rel=1e-6)
        assert correct_many == correct_one
    got, want = many.params() | many.state(), one.params() | one.state()
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_shard_count():
    from cnnspec.training.runner import MIN_SHARD, shard_count

    assert shard_count("cpu", 2, 64, mixes_batch=False) == 2
    assert shard_count("cpu", 4, 2 * MIN_SHARD, mixes_batch=False) == 2  # each shard keeps MIN_SHARD images
    assert shard_count("cpu", 2, MIN_SHARD, mixes_batch=False) == 1
    assert shard_count("cpu", 1, 64, mixes_batch=False) == 1
    assert shard_count("cpu", 2, 64, mixes_batch=True) == 1  # batch statistics need the whole batch
    assert shard_count("cuda", 2, 64, mixes_batch=False) == 1
    layers = spec_from_data(NET).layers
    assert [layer.mixes_batch for layer in layers] == [layer.type == "BatchNormalization" for layer in layers]


def test_step_runner_picks_shards_and_serial_programs():
    from cnnspec.training.runner import ShardedStepRunner, StepRunner
    from cnnspec.training.trainer import step_runner

    def pick(net, threads, batch):
        spec = spec_from_data(net)
        program, runner = step_runner(spec, check(spec), resolve_settings(spec, batch_size=batch), "cpu", threads)
        return type(runner), program.serial, getattr(runner, "shards", 1)

    assert pick(SHARDED, 2, 32) == (ShardedStepRunner, True, 2)  # one thread per shard
    assert pick(SHARDED, 4, 32) == (ShardedStepRunner, True, 4)
    assert pick(SHARDED, 4, 16) == (ShardedStepRunner, False, 2)  # two threads per shard
    assert pick(SHARDED, 1, 32) == (StepRunner, True, 1)
    assert pick(SHARDED, 2, 8) == (StepRunner, False, 1)  # fewer than 2 x MIN_SHARD images
    assert pick(NET, 2, 32) == (StepRunner, False, 1)  # BatchNormalization needs the whole batch
    with pytest.raises(ValueError, match="serial"):
        spec = spec_from_data(SHARDED)
        StepRunner(build_train_step(spec, check(spec), Optimizer(), serial=True), threads=2)


def test_a_dropped_sharded_runner_takes_its_threads_along():
    import gc
    import threading

    from cnnspec.training.runner import ShardedStepRunner

    spec = spec_from_data(SHARDED)
    program = build_train_step(spec, check(spec), Optimizer(), gradients_only=True, serial=True)
    before = set(threading.enumerate())
    runner = ShardedStepRunner(program, Optimizer(), 3, threads=3)
    runner.load(initial_params(spec, check(spec)), {})
    data = separable(24)
    runner.step(data.x, data.y, 0.1, 0, dropout_masks(program, 0, 0, 0, 24))
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("cnnspec-shard")]
    # Shard 0 runs on the calling thread; the pool starts at most 2 workers, one only if the other is still busy
    # when the next shard is submitted (ThreadPoolExecutor reuses an idle worker), so 1 or 2.
    assert 1 <= len(workers) <= 2
    del runner
    gc.collect()
    for thread in workers:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in workers)
