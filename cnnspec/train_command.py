"""`cnnspec train`, the command's library side: the spec and data files, the backend, the trained model's files.

It sits above data.py and the training package (README "Architecture"): it loads the data sets (data.py) and
hands them to the native loop (training/trainer.py) or the onnxruntime-training backend (training/ort_backend.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .analysis import check
from .command_reports import format_train_summary, train_summary
from .compiler import build_inference_model, model_bytes
from .data import load_dataset
from .errors import CnnspecError, UsageError
from .files import atomic_write, check_writable
from .sessions import resolve_device
from .spec import Spec, load_spec
from .training.loop import Data, Result, Settings, TrainingInterrupted, split
from .training.program import build_train_step
from .training.trainer import resolve_settings, train_model, write_metrics


def load_data(
    spec: Spec, classes: int, path: Path, val: Path | None, settings: Settings, skip_bad_images: bool = False
) -> tuple[Data, Data | None]:
    full = load_dataset(path, spec.input_shape, spec.labels, num_classes=classes, skip_bad_images=skip_bad_images)
    _warn(full.warnings)
    train = Data(full.x, full.y)
    if val is not None:
        held = load_dataset(val, spec.input_shape, spec.labels, num_classes=classes, skip_bad_images=skip_bad_images)
        _warn(held.warnings)
        return train, Data(held.x, held.y)
    if settings.val_split is not None:
        return split(train, settings.val_split, settings.seed)
    return train, None


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


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
    init_from: Path | None = None,
    plots: Path | None = None,
    **overrides: Any,
) -> Result:
    """The whole `cnnspec train` command: returns the result after writing OUT (and the extras), with its
    summary (`result.summary`, also printed to stderr)."""
    started = time.perf_counter()
    if val is not None and overrides.get("val_split"):  # --val-split 0 means no validation, as in Keras
        raise UsageError("give --val PATH or --val-split F, not both")
    if backend == "ort-training" and init_from is not None:
        raise UsageError("--init-from works with --backend native")
    if backend == "ort-training" and device != "cpu":
        raise UsageError("--backend ort-training runs on the CPU only; use --backend native for --device cuda")
    # Every output is checked before the data are read and the first step runs: a run that cannot be written
    # at its end is refused at its start.
    outputs = {"-o": output, "--metrics-json": metrics_json, "--export-train-step": export_train_step}
    check_writable(outputs, {"--checkpoint-dir": checkpoint_dir, "--plots": plots}, not_same_as=[spec_path, data])
    if plots is not None:
        from . import viz

        plots = viz.plot_dir(plots)  # before the work: matplotlib may be missing
    launch = _launch_env()
    if launch is not None and backend != "native":
        raise UsageError("data-parallel training (torchrun) runs the native backend only; drop --backend")
    lead = launch is None or launch.rank == 0  # under torchrun, rank 0 alone writes files
    spec = load_spec(spec_path)
    report = check(spec)
    settings = resolve_settings(spec, **overrides)
    device = resolve_device(device)
    if export_train_step is not None and lead:
        program = build_train_step(spec, report, settings.optimizer, settings.label_smoothing)
        atomic_write(export_train_step, model_bytes(program.model))
    on_epoch = None
    if plots is not None:
        folder = plots

        def on_epoch(history: list[dict[str, Any]]) -> None:
            viz.plot_curves(history, folder / "curves.png")

    init = None
    if init_from is not None:
        from .transfer import init_from as read_init

        init = read_init(init_from, report, log=lambda line: print(line, file=sys.stderr) if lead else None)
    train, held = load_data(spec, report.classes, data, val, settings, skip_bad_images)
    try:
        result = _train(spec, train, held, settings, overrides, device, backend, checkpoint_dir, resume, threads,
                        init, on_epoch, launch)  # fmt: skip
    except TrainingInterrupted as stop:
        if lead:
            _keep_interrupted(stop, spec, report, output, settings.epochs)
        raise
    if not lead:
        return result
    atomic_write(output, model_bytes(build_inference_model(spec, report, result.params)))
    if plots is not None:
        _final_plots(plots, output, held, result.history)
    if metrics_json is not None:
        write_metrics(metrics_json, result.history)
    print(f"wrote {output} ({output.stat().st_size:,} bytes)", file=sys.stderr)
    outputs = {"model": output, "metrics_json": metrics_json, "checkpoint_dir": checkpoint_dir,
               "train_step": export_train_step, "plots": plots}  # fmt: skip
    result.summary = train_summary(
        result.history, train_samples=len(train.y), wall_seconds=time.perf_counter() - started, outputs=outputs,
        best_epoch=result.best_epoch, stopped_early=result.stopped_early, restored_best=settings.patience is not None,
    )  # fmt: skip
    print(format_train_summary(result.summary), file=sys.stderr)
    return result


def train(spec: str | Path, data: str | Path, output: str | Path, **options: Any) -> Result:
    """`cnnspec train SPEC --data DATA -o OUTPUT` from Python, with the command's options as keywords:
    epochs, batch_size, learning_rate, seed, val_split, patience (each overriding the spec's training section),
    val, device, backend, checkpoint_dir, resume, metrics_json, export_train_step, skip_bad_images, threads,
    init_from, plots.
    Returns the result (final weights and per-epoch history) after writing OUTPUT.

    >>> cnnspec.train("specs/digits.yaml", "digits/", "digits.onnx", epochs=5)   # doctest: +SKIP
    """
    for key in ("val", "checkpoint_dir", "metrics_json", "export_train_step", "init_from", "plots"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    return train_command(Path(spec), Path(data), Path(output), **options)


def interrupted_path(output: Path, epochs_done: int) -> Path:
    """Where Ctrl-C without --checkpoint-dir keeps the last completed epoch: beside -o, never -o itself
    (that name promises the whole run)."""
    return output.with_name(f"{output.stem}.epoch{epochs_done}{output.suffix or '.onnx'}")


def _keep_interrupted(stop: TrainingInterrupted, spec: Spec, report, output: Path, epochs: int) -> None:
    if stop.params is None:
        return
    path = interrupted_path(output, stop.epochs_done)
    atomic_write(path, model_bytes(build_inference_model(spec, report, stop.params)))
    print(
        f"interrupted: wrote {path}, the model after epoch {stop.epochs_done} of {epochs} ('{output}' was not "
        "written); add --checkpoint-dir DIR to be able to --resume a run",
        file=sys.stderr,
    )


def _train(
    spec, train, held, settings, overrides, device, backend, checkpoint_dir, resume, threads, init, on_epoch, launch
) -> Result:
    if launch is not None:  # one rank of a torchrun job (training/distributed.py)
        from .training.distributed import train_distributed

        result = train_distributed(
            launch, spec, train, held, settings, device=device, checkpoint_dir=checkpoint_dir, resume=resume,
            threads=threads, progress=True, init=init, on_epoch=on_epoch,
        )  # fmt: skip
    elif backend == "ort-training":
        result = _ort_backend().train_model(
            spec, train, held, settings, overrides=overrides, checkpoint_dir=checkpoint_dir, resume=resume,
            progress=True,
        )  # fmt: skip
    else:
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
            init=init,
            on_epoch=on_epoch,
        )
    return result


def _final_plots(folder: Path, model: Path, held: Data | None, history: list[dict[str, Any]]) -> None:
    """`--plots`: the curves of the whole run, and the confusion matrix of the trained model on the validation data
    (when there is any)."""
    from . import viz
    from .runtime import Classifier

    viz.plot_curves(history, folder / "curves.png")
    if held is None:
        print(f"plots: {folder}/curves.png (no validation data: no confusion_matrix.png)", file=sys.stderr)
        return
    classifier = Classifier(model, sandbox=False)  # the model this command has just written
    counts = viz.confusion_counts(held.y, classifier.scores(held.x, 256).argmax(axis=1), classifier.classes)
    viz.plot_confusion(counts, classifier.labels, folder / "confusion_matrix.png", title="validation")
    print(f"plots: {folder}/curves.png, {folder}/confusion_matrix.png", file=sys.stderr)


def _ort_backend():
    """--backend ort-training: the optional onnxruntime-training backend (its own module, its own venv)."""
    try:
        from .training import ort_backend
    except ImportError as exc:
        raise CnnspecError(
            f"--backend ort-training is not available in this install ({exc}); use --backend native"
        ) from None
    return ort_backend


def _launch_env():
    """torchrun's variables when this is one rank of several (training/distributed.py), else None."""
    from .training.distributed import launch_env

    return launch_env()
