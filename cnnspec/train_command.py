"""`cnnspec train`, the command's library side: the spec and data files, the backend, the trained model's files.

It sits above data.py and the training package (README "Architecture"): it loads the data sets (data.py) and
hands them to the native loop (training/trainer.py) or the onnxruntime-training backend (training/ort_backend.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .analysis import check
from .compiler import build_inference_model, model_bytes
from .data import load_dataset
from .errors import CnnspecError, UsageError
from .files import atomic_write, check_output_path
from .sessions import resolve_device
from .spec import Spec, load_spec
from .training.loop import Data, Result, Settings, split
from .training.program import build_train_step
from .training.trainer import resolve_settings, train_model, write_metrics


def load_data(
    spec: Spec, classes: int, path: Path, val: Path | None, settings: Settings, skip_bad_images: bool = False
) -> tuple[Data, Data | None]:
    full = load_dataset(path, spec.input_shape, spec.labels, num_classes=classes, skip_bad_images=skip_bad_images)
    train = Data(full.x, full.y)
    if val is not None:
        held = load_dataset(val, spec.input_shape, spec.labels, num_classes=classes, skip_bad_images=skip_bad_images)
        return train, Data(held.x, held.y)
    if settings.val_split is not None:
        return split(train, settings.val_split, settings.seed)
    return train, None


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
    """The whole `cnnspec train` command: returns the result after writing OUT (and the extras)."""
    if val is not None and overrides.get("val_split"):
        raise UsageError("give --val PATH or --val-split F, not both")
    if backend == "ort-training" and init_from is not None:
        raise UsageError("--init-from works with --backend native")
    if backend == "ort-training" and device != "cpu":
        raise UsageError("--backend ort-training runs on the CPU only; use --backend native for --device cuda")
    for path in (output, metrics_json, export_train_step):
        if path is not None:
            check_output_path(path, not_same_as=[spec_path, data])
    if plots is not None:
        from . import viz

        plots = viz.plot_dir(plots)  # before the work: matplotlib may be missing
    spec = load_spec(spec_path)
    report = check(spec)
    settings = resolve_settings(spec, **overrides)
    device = resolve_device(device)
    if export_train_step is not None:
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

        init = read_init(init_from, report, log=lambda line: print(line, file=sys.stderr))
    train, held = load_data(spec, report.output_shape[0], data, val, settings, skip_bad_images)
    if backend == "ort-training":
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
    atomic_write(output, model_bytes(build_inference_model(spec, report, result.params)))
    if plots is not None:
        _final_plots(plots, output, held, result.history)
    if metrics_json is not None:
        write_metrics(metrics_json, result.history)
    print(f"wrote {output} ({output.stat().st_size:,} bytes)", file=sys.stderr)
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
