"""The `ort-training` backend: train through onnxruntime-training 1.19.2's artifacts (an optional extra).

The artifacts, and why they are made as they are, come from ort_artifacts.py. The result is the compile
contract's inference model (`build_inference_model`) with the trained weights, not ORT's
`export_model_for_inferencing`, whose graph would carry the lowered ops of the training graph.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .ort_artifacts import (
    OptimizerConfig,
    OrtTrainer,
    check_supported,
    generate_artifacts,
    load_ort_training,
    trainable,
    training_graph,
    training_of,
)

if TYPE_CHECKING:
    from ..spec import Spec


def one_step(
    spec: Spec,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    learning_rate: float,
    optimizer: str = "sgd",
) -> dict[str, np.ndarray]:
    """One optimizer step of onnxruntime-training from `params` on the batch (x raw NCHW pixels, y labels):
    the same contract as `cnnspec.training.native.one_step`, for the cross-check of the two backends."""
    from ..analysis import check

    report = check(spec)
    spec = spec.model_copy(update={"training": training_of(spec).model_copy(update={"optimizer": optimizer})})
    check_supported(spec)
    config = OptimizerConfig.of(spec)
    _, api = load_ort_training()
    with tempfile.TemporaryDirectory(prefix="cnnspec-ort-") as temp:
        generate_artifacts(training_graph(spec, report, params), trainable(spec, report), config, Path(temp))
        trainer = OrtTrainer(Path(temp), api)
        trainer.step(np.asarray(x, np.float32), np.asarray(y, np.int64), learning_rate)
        return trainer.params(list(params))


def learning_rate_at(training: Any, epoch: int, step_in_run: int, steps_per_epoch: int) -> float:
    """As the native loop: constant η; step η·γ^⌊epoch/step_epochs⌋; cosine η·(1 + cos(π·t/T))/2 over all T steps."""
    rate = training.resolved_learning_rate
    if training.schedule == "step":
        return rate * training.step_gamma ** (epoch // training.step_epochs)
    if training.schedule == "cosine":
        total = max(training.epochs * steps_per_epoch, 1)
        return rate * 0.5 * (1 + math.cos(math.pi * step_in_run / total))
    return rate


def train(
    spec: Spec,
    train_data: Any,
    output: Path,
    *,
    val_data: Any = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    metrics_json: Path | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """`cnnspec train --backend ort-training`: the native loop's outputs through onnxruntime-training.

    `train_data`/`val_data` have `x` (float32 raw NCHW) and `y` (int64); `overrides` are Training fields
    (epochs, batch_size, learning_rate, seed, patience, ...) from the command line. Writes `output` (the
    inference model of the compile contract), `metrics_json` and per-epoch checkpoints; returns the metrics.
    """
    from ..analysis import check
    from ..compiler import build_inference_model, initial_params, model_bytes
    from ..files import atomic_write

    report = check(spec)
    training = training_of(spec).model_copy(update={k: v for k, v in overrides.items() if v is not None})
    spec = spec.model_copy(update={"training": training})
    check_supported(spec)
    _, api = load_ort_training()
    names = list(report.param_shapes)
    with tempfile.TemporaryDirectory(prefix="cnnspec-ort-") as temp:
        folder = Path(temp)
        params = initial_params(spec, report, training.seed)
        generate_artifacts(training_graph(spec, report, params, training.seed), trainable(spec, report),
                           OptimizerConfig.of(spec), folder)  # fmt: skip
        run = _Run(training, checkpoint_dir)
        trainer = OrtTrainer(folder, api, run.resume_from() if resume else None)
        best = run.loop(trainer, names, train_data, val_data)
    atomic_write(output, model_bytes(build_inference_model(spec, report, best)))
    if metrics_json is not None:
        atomic_write(metrics_json, (json.dumps(run.metrics, indent=1) + "\n").encode())
    return run.metrics


class _Run:
    """The epoch loop's state: metrics, early stopping and the checkpoint folder.

    A checkpoint is `epoch-NNNNNN.ortckpt` (ORT's weights and optimizer state), `epoch-NNNNNN.json` (epoch,
    metrics, early-stopping state) and, with patience, `best.npz`; `LATEST` names the newest and is written
    last (the commit point). Shuffling is seeded by (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, training: Any, folder: Path | None) -> None:
        self.training, self.folder = training, folder
        self.metrics: list[dict[str, Any]] = []
        self.start, self.best_loss, self.waited = 0, math.inf, 0
        self.best: dict[str, np.ndarray] | None = None

    def resume_from(self) -> Path | None:
        from ..errors import UsageError

        if self.folder is None:
            raise UsageError("--resume needs --checkpoint-dir (the folder of an earlier run's checkpoints)")
        marker = self.folder / "LATEST"
        if not marker.is_file():
            return None  # nothing saved yet: start from the beginning
        stem = marker.read_text().strip()
        info = json.loads((self.folder / f"{stem}.json").read_text())
        self.metrics, self.start = info["metrics"], info["epoch"]
        self.best_loss, self.waited = info["best_loss"], info["waited"]
        if (self.folder / "best.npz").is_file():
            with np.load(self.folder / "best.npz", allow_pickle=False) as saved:
                self.best = {name: saved[name] for name in saved.files}
        return self.folder / f"{stem}.ortckpt"

    def loop(self, trainer: OrtTrainer, names: list[str], train_data: Any, val_data: Any) -> dict[str, np.ndarray]:
        t = self.training
        for epoch in range(self.start, t.epochs):
            began = time.perf_counter()
            row = self._epoch(trainer, train_data, epoch)
            if val_data is not None and len(val_data.y):
                row["val_loss"], row["val_accuracy"] = trainer.evaluate(val_data.x, val_data.y, t.batch_size)
            row["seconds"] = round(time.perf_counter() - began, 4)
            self.metrics.append(row)
            stop = self._early_stopping(row, trainer, names)
            self._checkpoint(trainer, epoch + 1)
            self._show(row)
            if stop:
                break
        return self.best if self.best is not None else trainer.params(names)

    def _epoch(self, trainer: OrtTrainer, data: Any, epoch: int) -> dict[str, Any]:
        t, n = self.training, len(data.y)
        order = np.random.default_rng([t.seed, epoch]).permutation(n)
        steps = math.ceil(n / t.batch_size)
        total, correct = 0.0, 0
        for i, start in enumerate(range(0, n, t.batch_size)):
            batch = order[start : start + t.batch_size]
            rate = learning_rate_at(t, epoch, epoch * steps + i, steps)
            loss, hits = trainer.step(data.x[batch], data.y[batch], rate)
            total, correct = total + loss * len(batch), correct + hits
        return {"epoch": epoch + 1, "train_loss": total / n, "train_accuracy": correct / n,
                "val_loss": None, "val_accuracy": None}  # fmt: skip

    def _early_stopping(self, row: dict[str, Any], trainer: OrtTrainer, names: list[str]) -> bool:
        """With patience: keep the weights of the best monitored loss (val_loss, else train_loss)."""
        if self.training.patience is None:
            return False
        loss = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
        if loss < self.best_loss:
            self.best_loss, self.waited, self.best = loss, 0, trainer.params(names)
            if self.folder is not None:
                self._write("best.npz", _npz_bytes(self.best))
            return False
        self.waited += 1
        return self.waited >= self.training.patience

    def _checkpoint(self, trainer: OrtTrainer, epoch: int) -> None:
        if self.folder is None:
            return
        stem = f"epoch-{epoch:06d}"
        self._write(f"{stem}.ortckpt", trainer.checkpoint_bytes())
        info = {"epoch": epoch, "metrics": self.metrics, "best_loss": self.best_loss, "waited": self.waited}
        self._write(f"{stem}.json", json.dumps(info).encode())
        self._write("LATEST", (stem + "\n").encode())  # last: the commit point
        for old in self.folder.glob("epoch-*"):
            if not old.name.startswith(stem):
                old.unlink(missing_ok=True)

    def _write(self, name: str, data: bytes) -> None:
        from ..files import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / name, data)

    def _show(self, row: dict[str, Any]) -> None:
        if not sys.stderr.isatty():
            return
        val = f", val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if row["val_loss"] is not None else ""
        print(f"epoch {row['epoch']}/{self.training.epochs}: loss {row['train_loss']:.4f} "
              f"acc {row['train_accuracy']:.4f}{val} ({row['seconds']:.2f} s)", file=sys.stderr)  # fmt: skip


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
