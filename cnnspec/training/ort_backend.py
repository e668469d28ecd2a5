"""The `ort-training` backend: train through onnxruntime-training 1.19.2's artifacts (an optional extra).

The artifacts, and why they are made as they are, come from ort_artifacts.py. The loop is the native one
(trainer.run_loop: schedules, validation, early stopping, metrics, Ctrl-C, checkpoints, --resume) driving
`OrtStepRunner`, an adapter with runner.py's load/step/params/state over `OrtTrainer`. The result is the
compile contract's inference model (`build_inference_model`) with the trained weights, not ORT's
`export_model_for_inferencing`, whose graph would carry the lowered ops of the training graph.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
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
    from .loop import Data, Result, Settings

ORT_STATE = "ort.checkpoint"
"""The runner's one state array: ORT's checkpoint file (weights, optimizer state, its step count) as uint8.
onnxruntime.training.api exposes parameters (get/set) but not the optimizer's moments, so the state travels
as ORT's own file, inside the native checkpoint: LATEST (written last, with the sha256) commits both."""


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


class OrtStepRunner:
    """The Loop's step runner (runner.py's load/step/params/state) over an `OrtTrainer`.

    `open_trainer(checkpoint)` makes the trainer: from the artifacts' initial checkpoint (None) or from ORT
    checkpoint bytes a run saved (resume). The Loop's `step` count is not fed (ORT's optimizer keeps its own,
    in its checkpoint) and neither are Dropout masks: ORT's Dropout draws from its own generator.
    """

    def __init__(self, open_trainer: Callable[[bytes | None], Any], names: list[str]) -> None:
        self._open, self.names = open_trainer, names
        self.trainer: Any = None

    def load(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        """Open the trainer from ORT's checkpoint in `state` (the artifacts' one when fresh), then set `params`."""
        saved = state.get(ORT_STATE)
        self.trainer = self._open(None if saved is None else saved.tobytes())
        self.trainer.set_params({name: params[name] for name in self.names})

    def step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, masks: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        """One update at the loop's learning rate (ORT's set_learning_rate); the batch's mean loss and hits."""
        return self.trainer.step(x, y, lr)

    def params(self) -> dict[str, np.ndarray]:
        return self.trainer.params(self.names)

    def state(self) -> dict[str, np.ndarray]:
        return {ORT_STATE: np.frombuffer(self.trainer.checkpoint_bytes(), np.uint8).copy()}

    def evaluate(self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int) -> tuple[float, float]:
        """The Loop's evaluator: ORT's eval model (Dropout off) on the trainer's weights, which are `params`
        (the Loop evaluates right after reading them from this runner)."""
        return self.trainer.evaluate(x, y, batch)


def train_model(
    spec: Spec,
    train: Data,
    val: Data | None,
    settings: Settings,
    *,
    overrides: dict[str, Any] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log=None,
) -> Result:
    """As trainer.train_model, through onnxruntime-training; `settings` is `resolve_settings(spec, **overrides)`
    (the artifacts bake the optimizer's constants, so they are made from the spec with the overrides; the
    checkpoints' fingerprint is the native one, of the spec as given and the settings)."""
    from ..analysis import check
    from ..compiler import initial_params
    from .checkpoints import TrainState
    from .trainer import run_loop

    given = spec
    spec = with_overrides(spec, overrides or {})
    report = check(spec)
    check_supported(spec)
    _, api = load_ort_training()
    names = list(report.param_shapes)
    with tempfile.TemporaryDirectory(prefix="cnnspec-ort-") as temp:
        folder = Path(temp)
        params = initial_params(spec, report, settings.seed)
        generate_artifacts(training_graph(spec, report, params, settings.seed), trainable(spec, report),
                           OptimizerConfig.of(spec), folder)  # fmt: skip

        def open_trainer(checkpoint: bytes | None) -> OrtTrainer:
            if checkpoint is None:
                return OrtTrainer(folder, api)
            (folder / "resumed.ckpt").write_bytes(checkpoint)
            return OrtTrainer(folder, api, folder / "resumed.ckpt")

        runner = OrtStepRunner(open_trainer, names)
        return run_loop(given, train, val, settings, None, runner, runner.evaluate, lambda: TrainState(params, {}),
                        backend="ort-training", checkpoint_dir=checkpoint_dir, resume=resume, progress=progress,
                        log=log)  # fmt: skip


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
    """`train_model` from Python: writes `output` (the inference model of the compile contract), `metrics_json`
    and the checkpoints; returns the metrics.

    `train_data`/`val_data` have `x` (float32 raw NCHW) and `y` (int64); `overrides` are Training fields
    (epochs, batch_size, learning_rate, seed, patience, ...) as the command line gives them.
    """
    from ..analysis import check
    from ..compiler import build_inference_model, model_bytes
    from ..files import atomic_write
    from .loop import Data
    from .trainer import resolve_settings, write_metrics

    settings = resolve_settings(spec, **overrides)
    train_set = Data(train_data.x, train_data.y)
    val_set = Data(val_data.x, val_data.y) if val_data is not None and len(val_data.y) else None
    result = train_model(spec, train_set, val_set, settings, overrides=overrides, checkpoint_dir=checkpoint_dir,
                         resume=resume)  # fmt: skip
    atomic_write(output, model_bytes(build_inference_model(spec, check(spec), result.params)))
    if metrics_json is not None:
        write_metrics(metrics_json, result.history)
    return result.history


def with_overrides(spec: Spec, overrides: dict[str, Any]) -> Spec:
    """The spec whose training section carries the command line's (non-None) overrides."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return spec.model_copy(update={"training": training_of(spec).model_copy(update=given)})
