"""`cnnspec train`: settings from the spec and the command line, data, the loop, and the trained model."""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnspecError, UsageError
from ..spec import Spec, Training, normalized
from .checkpoints import CheckpointDir, TrainState
from .loop import Data, Loop, Result, Settings, split
from .optimizers import Optimizer


def resolve_settings(spec: Spec, **overrides: Any) -> Settings:
    """The spec's `training` section (Keras defaults without one), then the non-None CLI options."""
    given = {k: v for k, v in overrides.items() if v is not None}
    training = (spec.training or Training()).model_copy(update=given)
    return Settings(
        optimizer=Optimizer.from_training(training),
        learning_rate=training.resolved_learning_rate,
        epochs=training.epochs,
        batch_size=training.batch_size,
        seed=training.seed,
        label_smoothing=training.label_smoothing,
        schedule=training.schedule,
        step_epochs=training.step_epochs,
        step_gamma=training.step_gamma,
        patience=training.patience,
        val_split=training.val_split,
    )


def fingerprint(spec: Spec, settings: Settings, train: Data) -> str:
    """What a checkpoint must match to be resumed: spec, settings (epochs aside) and training data."""
    h = hashlib.sha256(json.dumps(normalized(spec), sort_keys=True).encode())
    h.update(json.dumps({k: v for k, v in asdict(settings).items() if k != "epochs"}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(train.x).tobytes())
    h.update(np.ascontiguousarray(train.y).tobytes())
    return h.hexdigest()


def load_data(
    spec: Spec, classes: int, path: Path, val: Path | None, settings: Settings, skip_bad_images: bool = False
) -> tuple[Data, Data | None]:
    from ..data import load_dataset

    full = load_dataset(path, spec.input_shape, spec.labels, num_classes=classes, skip_bad_images=skip_bad_images)
    train = Data(full.x, full.y)
    if val is not None:
        held = load_dataset(val, spec.input_shape, spec.labels, num_classes=classes, skip_bad_images=skip_bad_images)
        return train, Data(held.x, held.y)
    if settings.val_split is not None:
        return split(train, settings.val_split, settings.seed)
    return train, None


def train_model(
    spec: Spec,
    train: Data,
    val: Data | None,
    settings: Settings,
    *,
    device: str = "cpu",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = False,
    log=None,
) -> Result:
    """Train from `compile --seed` weights (or the latest checkpoint with `resume`)."""
    from ..analysis import check
    from ..compiler import initial_params
    from .program import build_eval
    from .runner import Evaluator

    report = check(spec)
    program, runner = step_runner(spec, report, settings, device, threads)
    evaluator = Evaluator(build_eval(spec, report, settings.label_smoothing), device, threads)
    key = fingerprint(spec, settings, train)
    with ExitStack() as stack:
        ckpt = stack.enter_context(CheckpointDir(checkpoint_dir)) if checkpoint_dir else None
        state = _start_state(ckpt, resume, key, log or _stderr)
        if state is None:
            params = initial_params(spec, report, settings.seed)
            state = TrainState(params, settings.optimizer.initial_state({p: params[p] for p in program.trainable}))
            state.fingerprint, state.seed = key, settings.seed
        bar = stack.enter_context(_progress()) if progress else None
        loop = Loop(settings, program, runner, evaluator, train, val, state, ckpt, progress=bar)
        if log is not None:
            loop.log = log
        return loop.run()


def step_runner(spec: Spec, report, settings: Settings, device: str, threads: int | None):
    """The train-step program and what runs it: on a multi-core CPU, shards of each batch side by side
    (ShardedStepRunner, with the gradients-only program); else the fused step in one session."""
    from .program import build_train_step
    from .runner import ShardedStepRunner, StepRunner, cpu_cores, shard_count

    shards = shard_count(device, threads, settings.batch_size, report.mixes_batch)
    optimizer, smoothing = settings.optimizer, settings.label_smoothing
    cores = threads or cpu_cores()
    if shards > 1:
        serial = cores // shards == 1  # one thread per shard: the serial formulations are allowed
        program = build_train_step(spec, report, optimizer, smoothing, gradients_only=True, serial=serial)
        return program, ShardedStepRunner(program, optimizer, shards, threads)
    serial = device == "cpu" and cores == 1
    program = build_train_step(spec, report, optimizer, smoothing, device=device, serial=serial)
    return program, StepRunner(program, device, 1 if serial else threads)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _start_state(ckpt: CheckpointDir | None, resume: bool, key: str, log) -> TrainState | None:
    if ckpt is None:
        if resume:
            raise UsageError("--resume needs --checkpoint-dir (the folder the interrupted run wrote)")
        return None
    state = ckpt.load_latest()
    if state is None:
        if resume:
            log(f"no checkpoint in '{ckpt.path}' yet: starting from the beginning")
        return None
    if not resume:
        raise UsageError(
            f"--checkpoint-dir '{ckpt.path}' already holds checkpoints; add --resume to continue that run "
            "or choose an empty folder"
        )
    if state.fingerprint != key:
        raise CnnspecError(
            f"the checkpoint in '{ckpt.path}' belongs to a run with another spec, data or settings; "
            "resume with the same command, or choose an empty folder"
        )
    log(f"resuming at epoch {state.epoch + 1}, batch {state.batch + 1} (step {state.step})")
    return state


def _progress():
    """A rich progress bar on stderr when it is a terminal; nothing when piped or redirected."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def train_command(
    spec_path: Path,
    data: Path,
    output: Path,
    *,
    val: Path | None = None,
    device: str = "cpu",
    backend: str = "native",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    metrics_json: Path | None = None,
    export_train_step: Path | None = None,
    skip_bad_images: bool = False,
    threads: int | None = None,
    **overrides: Any,
) -> Result:
    """The whole `cnnspec train` command: returns the result after writing OUT (and the extras)."""
    from ..analysis import check
    from ..compiler import build_inference_model, model_bytes
    from ..files import atomic_write, check_output_path
    from ..sessions import resolve_device
    from ..spec import load_spec

    if val is not None and overrides.get("val_split") is not None:
        raise UsageError("give --val PATH or --val-split F, not both")
    if backend == "ort-training" and device != "cpu":
        raise UsageError("--backend ort-training runs on the CPU only; use --backend native for --device cuda")
    for path in (output, metrics_json, export_train_step):
        if path is not None:
            check_output_path(path, not_same_as=[spec_path, data])
    spec = load_spec(spec_path)
    report = check(spec)
    settings = resolve_settings(spec, **overrides)
    device = resolve_device(device)
    if export_train_step is not None:
        from .program import build_train_step

        program = build_train_step(spec, report, settings.optimizer, settings.label_smoothing)
        atomic_write(export_train_step, model_bytes(program.model))
    train, held = load_data(spec, report.output_shape[0], data, val, settings, skip_bad_images)
    if backend == "ort-training":
        return _ort_training(spec, train, output, held, checkpoint_dir, resume, metrics_json, overrides)
    result = train_model(
        spec,
        train,
        held,
        settings,
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        threads=threads,
        progress=True,
    )
    atomic_write(output, model_bytes(build_inference_model(spec, report, result.params)))
    if metrics_json is not None:
        atomic_write(metrics_json, (json.dumps(result.history, indent=2) + "\n").encode())
    _stderr(f"wrote {output} ({output.stat().st_size:,} bytes)")
    return result


def _ort_training(spec: Spec, train: Data, output: Path, held, checkpoint_dir, resume, metrics_json, overrides):
    """--backend ort-training: the optional onnxruntime-training backend (its own module, its own venv)."""
    try:
        from . import ort_backend
    except ImportError as exc:
        raise CnnspecError(
            f"--backend ort-training is not available in this install ({exc}); use --backend native"
        ) from None
    history = ort_backend.train(
        spec,
        train,
        output,
        val_data=held,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        metrics_json=metrics_json,
        **{k: v for k, v in overrides.items() if k != "val_split"},  # the split is already made (load_data)
    )
    return Result({}, history)
