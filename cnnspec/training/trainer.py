"""The native training run: settings from the spec and the command line, the step runner, checkpoints and the loop.

The `cnnspec train` command around it (reading the spec and the data sets, choosing the backend, writing the
trained model) is cnnspec/train_command.py, a floor above: training imports neither data.py nor runtime.py."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CnnspecError, UsageError
from ..spec import Spec, Training, normalized
from .checkpoints import CheckpointDir, TrainState
from .loop import Data, Loop, Result, Settings
from .optimizers import Optimizer

if TYPE_CHECKING:
    from .program import Program


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
        val_split=training.val_split or None,  # Keras's validation_split=0.0: no validation
    )


def fingerprint(spec: Spec, settings: Settings, train: Data, backend: str = "native") -> str:
    """What a checkpoint must match to be resumed: spec, settings (epochs aside), training data and backend
    (a native checkpoint holds numpy optimizer state, an ort-training one ORT's checkpoint)."""
    h = hashlib.sha256(json.dumps(normalized(spec), sort_keys=True).encode())
    h.update(json.dumps({k: v for k, v in asdict(settings).items() if k != "epochs"}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(train.x).tobytes())
    h.update(np.ascontiguousarray(train.y).tobytes())
    if backend != "native":  # native fingerprints stay what they were: their checkpoints still resume
        h.update(backend.encode())
    return h.hexdigest()


def fingerprint_parts(spec: Spec, settings: Settings, train: Data, backend: str = "native") -> dict[str, Any]:
    """The fingerprint's ingredients, kept in the checkpoint so a refused --resume can name what differs."""
    data = hashlib.sha256(np.ascontiguousarray(train.x).tobytes())
    data.update(np.ascontiguousarray(train.y).tobytes())
    parts: dict[str, Any] = {k: v for k, v in asdict(settings).items() if k != "epochs"}
    parts["spec"] = hashlib.sha256(json.dumps(normalized(spec), sort_keys=True).encode()).hexdigest()
    parts["data"] = f"{len(train.y)} samples, sha256 {data.hexdigest()[:12]}"
    parts["backend"] = backend
    return json.loads(json.dumps(parts))  # the form it has after a round trip through the checkpoint


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'learning_rate: 0.01 in the checkpoint, 0.1 now' for each ingredient that changed."""
    out = []
    for key in sorted(saved.keys() | now.keys()):
        if saved.get(key) != now.get(key):
            if key == "spec":
                out.append("the spec (layers, input, labels or training section)")
            else:
                out.append(f"{key}: {_show(saved.get(key))} in the checkpoint, {_show(now.get(key))} now")
    return out


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


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
    init: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Result:
    """Train from `compile --seed` weights (or the latest checkpoint with `resume`); `init` turns those fresh
    weights into the start weights (`--init-from`, transfer.py)."""
    from ..analysis import check
    from ..compiler import initial_params
    from .program import build_eval
    from .runner import Evaluator

    report = check(spec)
    program, runner = step_runner(spec, report, settings, device, threads)
    evaluator = Evaluator(build_eval(spec, report, settings.label_smoothing), device, threads)

    def fresh() -> TrainState:
        params = initial_params(spec, report, settings.seed)
        params = init(params) if init is not None else params
        return TrainState(params, settings.optimizer.initial_state({p: params[p] for p in program.trainable}))

    return run_loop(spec, train, val, settings, program, runner, evaluator, fresh, checkpoint_dir=checkpoint_dir,
                    resume=resume, progress=progress, log=log, on_epoch=on_epoch)  # fmt: skip


def run_loop(
    spec: Spec,
    train: Data,
    val: Data | None,
    settings: Settings,
    program: Program | None,
    runner: Any,
    evaluator: Any,
    fresh: Callable[[], TrainState],
    *,
    backend: str = "native",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log=None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Result:
    """The one training loop of every backend: checkpoint folder (lock, --resume, fingerprint), the start state
    (`fresh()` or the latest checkpoint) and `Loop` over `runner` (load/step/params/state, runner.py's interface)
    and `evaluator`. `program` gives the Dropout masks the loop draws; None: the runner draws its own."""
    key, parts = fingerprint(spec, settings, train, backend), fingerprint_parts(spec, settings, train, backend)
    with ExitStack() as stack:
        ckpt = stack.enter_context(CheckpointDir(checkpoint_dir)) if checkpoint_dir else None
        state = _start_state(ckpt, resume, key, log or _stderr, parts, settings.epochs)
        if state is None:
            state = fresh()
            state.fingerprint, state.seed = key, settings.seed
        state.fingerprint_parts = parts
        bar = stack.enter_context(_progress()) if progress else None
        loop = Loop(settings, program, runner, evaluator, train, val, state, ckpt, progress=bar, on_epoch=on_epoch,
                    augmentation=augmentation_layers(spec))  # fmt: skip
        if log is not None:
            loop.log = log
        return loop.run()


def augmentation_layers(spec: Spec) -> list[Any]:
    """The spec's augmentation layers, in order (they all come first: analysis.py checks it)."""
    from ..analysis import check

    return [row.layer for row in check(spec).layers if row.layer.augmentation]


def step_runner(spec: Spec, report, settings: Settings, device: str, threads: int | None):
    """The train-step program and what runs it: on a multi-core CPU, shards of each batch side by side
    (ShardedStepRunner, with the gradients-only program); else the fused step in one session."""
    from .program import build_train_step
    from .runner import ShardedStepRunner, StepRunner, cpu_cores, shard_count

    # The shards' update program updates every parameter: frozen layers (trainable: false) train in one session.
    one_session = report.mixes_batch or bool(report.frozen_layers)
    shards = shard_count(device, threads, settings.batch_size, one_session)
    optimizer, smoothing = settings.optimizer, settings.label_smoothing
    cores = threads or cpu_cores()
    if shards > 1:
        serial = cores // shards == 1  # one thread per shard: the serial formulations are allowed
        program = build_train_step(spec, report, optimizer, smoothing, gradients_only=True, serial=serial)
        return program, ShardedStepRunner(program, optimizer, shards, threads)
    serial = device == "cpu" and cores == 1
    program = build_train_step(spec, report, optimizer, smoothing, device=device, serial=serial)
    return program, StepRunner(program, device, 1 if serial else threads)


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """--metrics-json: the loop's per-epoch rows, whatever the backend."""
    from ..files import atomic_write

    atomic_write(path, (json.dumps(history, indent=2) + "\n").encode())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _start_state(
    ckpt: CheckpointDir | None, resume: bool, key: str, log, parts: dict[str, Any], epochs: int
) -> TrainState | None:
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
        changed = differences(state.fingerprint_parts, parts) if state.fingerprint_parts else []
        what = f": {'; '.join(changed)}" if changed else " (another spec, data or settings, or backend)"
        raise CnnspecError(
            f"the checkpoint in '{ckpt.path}' belongs to another run{what}; resume with the same settings "
            "(only --epochs may change), or choose an empty folder"
        )
    if state.best_info.get("stopped"):
        log(f"the run in '{ckpt.path}' stopped early (patience) at epoch {state.epoch}; writing its best model")
    elif state.epoch >= epochs and state.batch == 0:
        log(f"the run in '{ckpt.path}' already finished {state.epoch} epochs; give --epochs N > {state.epoch} "
            "to train longer")  # fmt: skip
    else:
        log(f"resuming at epoch {state.epoch + 1}, batch {state.batch + 1} (step {state.step}), up to epoch {epochs}")
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
