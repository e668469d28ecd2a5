"""The training loop: epochs of seeded shuffled batches, schedules, validation, early stopping and checkpoints.

Every random draw comes from a generator keyed on (seed, epoch, ...): the shuffle order of an epoch
on (seed, epoch, 0), the dropout masks of a batch on (seed, epoch, 1, batch), the validation split
on (seed, 2), the augmentation layers' draws on (seed, epoch, 3, batch, layer). So a run resumed from
any checkpoint redraws exactly what the uninterrupted run drew, and ends with bitwise the same weights.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CnnspecError
from .checkpoints import CheckpointDir, TrainState
from .optimizers import Optimizer
from .program import Program
from .runner import Evaluator, ShardedStepRunner, StepRunner


@dataclass(frozen=True)
class Settings:
    """The training section of the spec with the command line's overrides applied."""

    optimizer: Optimizer
    learning_rate: float
    epochs: int
    batch_size: int
    seed: int = 0
    label_smoothing: float = 0.0
    schedule: str = "constant"
    step_epochs: int = 10
    step_gamma: float = 0.1
    patience: int | None = None
    val_split: float | None = None

    def lr_at(self, epoch: int, step_in_run: int, steps_per_epoch: int) -> float:
        """constant: η;  step: η·γ^⌊epoch/step_epochs⌋;  cosine: η·(1 + cos(π·t/T))/2 over all T steps."""
        if self.schedule == "step":
            return self.learning_rate * self.step_gamma ** (epoch // self.step_epochs)
        if self.schedule == "cosine":
            total = max(self.epochs * steps_per_epoch, 1)
            return self.learning_rate * 0.5 * (1 + math.cos(math.pi * step_in_run / total))
        return self.learning_rate


@dataclass
class Data:
    x: np.ndarray
    """float32 [N, C, H, W] raw pixels."""
    y: np.ndarray
    """int64 [N]."""


@dataclass
class Result:
    params: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    stopped_early: bool = False
    best_epoch: int | None = None
    summary: dict[str, Any] | None = None
    """The end-of-run summary (command_reports.train_summary), set by `cnnspec train`."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C without a checkpoint folder: carries the weights after the last completed epoch (None before the
    first), for the caller to keep. A KeyboardInterrupt, so everything else treats it as Ctrl-C (exit 130)."""

    def __init__(self, epochs_done: int, params: dict[str, np.ndarray] | None) -> None:
        super().__init__(f"interrupted after {epochs_done} epoch(s)")
        self.epochs_done = epochs_done
        self.params = params


def rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def split(data: Data, fraction: float, seed: int) -> tuple[Data, Data]:
    """A seeded random split: the last `fraction` of a permutation is the validation set."""
    order = rng(seed, 2).permutation(len(data.y))
    n_val = max(1, round(len(order) * fraction))
    if n_val >= len(order):
        raise CnnspecError(f"val_split {fraction} leaves no training samples out of {len(order)}; use a smaller split")
    train, val = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    return Data(data.x[train], data.y[train]), Data(data.x[val], data.y[val])


def dropout_masks(program: Program, seed: int, epoch: int, batch: int, n: int) -> dict[str, np.ndarray]:
    """Keras's inverted dropout: keep with probability 1 - rate, scaled by 1/(1 - rate)."""
    gen = rng(seed, epoch, 1, batch)
    masks = {}
    for name, shape in program.masks.items():
        rate = program.rates[name]
        keep = gen.random((n, *shape), dtype=np.float32) >= rate
        masks[name] = keep.astype(np.float32) * np.float32(1.0 / (1.0 - rate))
    return masks


def augment_batch(layers: list[Any], x: np.ndarray, seed: int, epoch: int, batch: int) -> np.ndarray:
    """The augmentation layers on a batch of raw pixels [N, C, H, W]; layer i draws from (seed, epoch, 3, batch, i)
    (and its own `seed` when it has one)."""
    from ..layers.augmentation import apply_augmentations

    keys = [(3, batch, i) if layer.seed is None else (3, batch, i, layer.seed) for i, layer in enumerate(layers)]
    return apply_augmentations(layers, x, [rng(seed, epoch, *key) for key in keys])


@dataclass
class Loop:
    """One training run; `run()` continues from `state` (fresh or loaded from a checkpoint)."""

    settings: Settings
    program: Program | None
    """Gives the Dropout masks each step is fed; None: the runner draws its own (the ort-training backend)."""
    runner: StepRunner | ShardedStepRunner | Any
    """load/step/params/state: StepRunner, ShardedStepRunner or ort_backend.OrtStepRunner."""
    evaluator: Evaluator | Callable[..., tuple[float, float]]
    train: Data
    val: Data | None
    state: TrainState
    checkpoints: CheckpointDir | None = None
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
    progress: Any = None
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None
    """Called with the history after every epoch (`train --plots`: curves.png)."""
    augmentation: list[Any] = field(default_factory=list)
    """The spec's augmentation layers (layers/augmentation.py), applied to each training batch in this order."""
    _interrupted: bool = field(default=False, init=False)

    @property
    def batches(self) -> int:
        return math.ceil(len(self.train.y) / self.settings.batch_size)

    def run(self) -> Result:
        import threading

        # Ctrl-C sets a flag; the loop saves a checkpoint between two steps and stops (signal handlers
        # can only be installed from the main thread: elsewhere Ctrl-C is the caller's business).
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_interrupt) if main else None
        try:
            self.runner.load(self.state.params, self.state.opt)
            stopped = bool(self.state.best_info.get("stopped"))  # a resumed run that had stopped early
            while self.state.epoch < self.settings.epochs and not stopped:
                stopped = self._epoch()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        return self._result(stopped)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        if self._interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._interrupted = True

    def _epoch(self) -> bool:
        s, st = self.settings, self.state
        order = rng(s.seed, st.epoch, 0).permutation(len(self.train.y))
        started, seen_here = time.perf_counter(), 0
        task = self.progress.add_task(f"epoch {st.epoch + 1}/{s.epochs}", total=self.batches) if self.progress else None
        if task is not None:
            self.progress.update(task, completed=st.batch)
        for index, x in self._batches(order):
            if self._interrupted:
                self._save_and_stop()
            self._step(index, x)
            seen_here += len(index)
            if task is not None:
                rate = seen_here / max(time.perf_counter() - started, 1e-9)
                self.progress.update(task, advance=1, description=f"epoch {st.epoch + 1}/{s.epochs} {rate:,.0f} img/s")
        if task is not None:
            self.progress.remove_task(task)
        return self._end_epoch(time.perf_counter() - started, seen_here)

    def _batches(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(sample indices, pixels) of the epoch's remaining batches. With augmentation, the next batch is
        prepared on a worker thread while the current one trains (numpy and onnxruntime release the GIL)."""
        s, st = self.settings, self.state

        def prepare(batch: int) -> tuple[np.ndarray, np.ndarray]:
            index = order[batch * s.batch_size : (batch + 1) * s.batch_size]
            if not self.augmentation:
                return index, self.train.x[index]
            return index, augment_batch(self.augmentation, self.train.x[index], s.seed, st.epoch, batch)

        if not self.augmentation:
            while st.batch < self.batches:
                yield prepare(st.batch)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnspec-augment") as pool:
            upcoming = pool.submit(prepare, st.batch)
            while st.batch < self.batches:
                ready = upcoming.result()
                if st.batch + 1 < self.batches:
                    upcoming = pool.submit(prepare, st.batch + 1)
                yield ready

    def _step(self, index: np.ndarray, x: np.ndarray) -> None:
        s, st = self.settings, self.state
        masks = {} if self.program is None else dropout_masks(self.program, s.seed, st.epoch, st.batch, len(index))
        lr = s.lr_at(st.epoch, st.step, self.batches)
        loss, correct = self.runner.step(x, self.train.y[index], lr, st.step, masks)
        if not math.isfinite(loss):
            raise CnnspecError(
                f"training diverged at epoch {st.epoch + 1}, batch {st.batch + 1}: the loss is {loss}; "
                f"lower the learning rate (now {lr:g}) with --learning-rate"
            )
        st.step += 1
        st.batch += 1
        st.sums = {
            "loss": st.sums["loss"] + loss * len(index),
            "correct": st.sums["correct"] + correct,
            "seen": st.sums["seen"] + len(index),
        }

    def _end_epoch(self, seconds: float, seen_here: int) -> bool:
        st, s = self.state, self.settings
        st.params, st.opt = self.runner.params(), self.runner.state()
        row: dict[str, Any] = {
            "epoch": st.epoch + 1,
            "train_loss": st.sums["loss"] / st.sums["seen"],
            "train_accuracy": st.sums["correct"] / st.sums["seen"],
            "val_loss": None,
            "val_accuracy": None,
            "seconds": round(seconds, 3),
        }
        if self.val is not None:
            row["val_loss"], row["val_accuracy"] = self.evaluator(st.params, self.val.x, self.val.y, 256)
        st.history.append(row)
        self.log(_epoch_line(row, s.epochs, seen_here / max(seconds, 1e-9)))
        if self.on_epoch is not None:
            self.on_epoch(st.history)
        stop = self._early_stopping(row)
        st.epoch, st.batch = st.epoch + 1, 0
        st.sums = {"loss": 0.0, "correct": 0, "seen": 0}
        if self.checkpoints is not None:
            self.checkpoints.save(st)
        return stop

    def _early_stopping(self, row: dict[str, Any]) -> bool:
        """Keras's EarlyStopping(restore_best_weights=True) on val_loss (train_loss without validation)."""
        if self.settings.patience is None:
            return False
        info, st = self.state.best_info, self.state
        watched = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
        if info["loss"] is None or watched < info["loss"]:
            st.best_info = {"loss": watched, "epoch": row["epoch"], "bad_epochs": 0}
            st.best = {k: v.copy() for k, v in st.params.items()}
            return False
        info["bad_epochs"] += 1
        if info["bad_epochs"] >= self.settings.patience:
            info["stopped"] = True
            self.log(f"early stopping: no better loss for {info['bad_epochs']} epochs; best epoch {info['epoch']}")
            return True
        return False

    def _save_and_stop(self) -> None:
        if self.checkpoints is None:
            # The caller (train_command) writes the model of the last completed epoch, if there is one.
            if self.state.epoch == 0:
                self.log("interrupted during epoch 1: nothing to keep yet (--checkpoint-dir saves within an epoch)")
            raise TrainingInterrupted(self.state.epoch, self.state.params if self.state.epoch else None)
        else:
            self.state.params, self.state.opt = self.runner.params(), self.runner.state()
            path = self.checkpoints.save(self.state)
            self.log(f"interrupted: saved {path}; continue with the same command and --resume")
        raise KeyboardInterrupt

    def _result(self, stopped: bool) -> Result:
        st = self.state
        params = st.params if st.batch == 0 else self.runner.params()
        if self.settings.patience is not None and st.best:
            params = st.best
        return Result(params, st.history, stopped, st.best_info.get("epoch"))


def _epoch_line(row: dict[str, Any], epochs: int, rate: float) -> str:
    line = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  accuracy {row['train_accuracy']:.4f}"
    if row["val_loss"] is not None:
        line += f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}"
    return line + f"  {row['seconds']:.2f}s  {rate:,.0f} img/s"
