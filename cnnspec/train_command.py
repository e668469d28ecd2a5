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
    **overrides: Any,
) -> Result:
    """The whole `cnnspec train` command: returns the result after writing OUT (and the extras)."""
    if val is not None and overrides.get("val_split") is not None:
        raise UsageError("give --val PATH or --val-split F, not both")
    if backend == "ort-training" and device != "cpu":
        raise UsageError("--backend ort-training runs on the CPU only; use --backend native for --device cuda")
    for path in (output, metrics_json, export_train_step):
        if path is not None:
            check_output_path(path, not_same_as=[spec_path, data])
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
    train, held = load_data(spec, report.output_shape[0], data, val, settings, skip_bad_images)
    if launch is not None:
        from .training.distributed import train_distributed

        result = train_distributed(
            launch, spec, train, held, settings, device=device, checkpoint_dir=checkpoint_dir, resume=resume,
            threads=threads, progress=True,
        )  # fmt: skip
        if not lead:
            return result
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
        )
    atomic_write(output, model_bytes(build_inference_model(spec, report, result.params)))
    if metrics_json is not None:
        write_metrics(metrics_json, result.history)
    print(f"wrote {output} ({output.stat().st_size:,} bytes)", file=sys.stderr)
    return result


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
