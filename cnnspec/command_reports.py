"""What the commands report: the `--json` documents of compile, inspect, export-artifacts and train, and the
summary every `cnnspec train` ends with (README "Command line").

Each function returns plain data (str, int, float, bool, None, lists, dicts) for `json.dumps`; the CLI prints
exactly one such document on stdout, while progress and warnings go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .errors import CnnspecError, SpecError


def written_file(path: Path) -> dict[str, Any]:
    """A file cnnspec wrote: where, how big, and its sha256 (to pin or compare artifacts)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"path": str(path), "bytes": size, "sha256": digest.hexdigest()}


def compile_report(path: Path, spec: Any, report: Any, opset: int, seed: int) -> dict[str, Any]:
    """`compile --json`: the file, and the parameters as `validate` counts them."""
    return {
        **written_file(path),
        "name": spec.name,
        "params": report.total_params,
        "trainable_params": report.trainable_params,
        "opset": opset,
        "seed": seed,
    }


def inspect_report(path: Path) -> dict[str, Any]:
    """`inspect --json`: what the table shows, as data.

    A cnnspec model: `validate --json`'s object for the embedded spec plus labels, preprocessing, the cnnspec
    version that made it and the opset. A model made elsewhere: producer, opset, inputs, outputs and operators.
    """
    from collections import Counter

    from .inspection import _opset, _type_text
    from .modelfile import read_model

    model = read_model(path)
    meta = {p.key: p.value for p in model.metadata_props}
    head = {**written_file(path), "opset": _opset(model), "producer": model.producer_name or None}
    if "cnnspec.spec" in meta:
        from .analysis import analyze
        from .spec import spec_from_data
        from .summary import report_json

        try:
            report = analyze(spec_from_data(json.loads(meta["cnnspec.spec"]), source=f"{path} (embedded spec)"))
        except (SpecError, ValueError) as exc:
            raise CnnspecError(f"{path}: the embedded spec is damaged: {exc}") from None
        return {
            **head,
            "made_by_cnnspec": True,
            "cnnspec_version": meta.get("cnnspec.version"),
            "labels": list(report.labels),
            "preprocess": _json_or_text(meta.get("cnnspec.preprocess")),
            **report_json(report),
        }
    initializers = {t.name for t in model.graph.initializer}

    def values(items: Any) -> list[dict[str, str]]:
        return [{"name": v.name, "type": _type_text(v)} for v in items if v.name not in initializers]

    counts = Counter(node.op_type for node in model.graph.node)
    return {
        **head,
        "made_by_cnnspec": False,
        "inputs": values(model.graph.input),
        "outputs": values(model.graph.output),
        "ops": dict(counts.most_common()),
    }


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def artifacts_report(folder: Path, paths: list[Path]) -> dict[str, Any]:
    """`export-artifacts --json`."""
    return {"folder": str(folder), "files": [written_file(p) for p in paths]}


# ---- the end of training -----------------------------------------------------------------------------------


def train_summary(
    history: list[dict[str, Any]],
    *,
    train_samples: int,
    wall_seconds: float,
    outputs: dict[str, Path | None],
    best_epoch: int | None = None,
    stopped_early: bool = False,
    restored_best: bool = False,
) -> dict[str, Any]:
    """The end of a run: epochs, the best epoch and its metrics, time, speed and where everything went.

    The best epoch is the one with the lowest validation loss (the training loss without validation), the loss
    Keras's EarlyStopping watches; with early stopping its weights are the ones written (`model_epoch`).
    img/s counts the training images of the epochs in the history over their summed training time (an epoch's
    `seconds` stop before its validation).
    """
    epochs = len(history)
    if best_epoch is None and history:
        best_epoch = min(history, key=_watched)["epoch"]
    best = next((row for row in history if row["epoch"] == best_epoch), None)
    seconds = sum(row.get("seconds") or 0.0 for row in history)
    last = history[-1]["epoch"] if history else 0
    return {
        "epochs": epochs,
        "stopped_early": stopped_early,
        "best_epoch": best_epoch,
        "best": _metrics(best),
        "final": _metrics(history[-1]) if history else None,
        "model_epoch": best_epoch if restored_best else last,
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(seconds, 3),
        "images_per_second": round(train_samples * epochs / seconds, 1) if seconds > 0 else None,
        "train_samples": train_samples,
        "outputs": {key: str(path) for key, path in outputs.items() if path is not None},
    }


def _watched(row: dict[str, Any]) -> float:
    value = row["val_loss"] if row.get("val_loss") is not None else row["train_loss"]
    return value if value is not None and math.isfinite(value) else math.inf


def _metrics(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return {key: row.get(key) for key in keys}


def format_train_summary(summary: dict[str, Any]) -> str:
    """The same summary for people (stderr, at the end of every `cnnspec train`)."""
    lines = [
        f"trained {summary['epochs']} epoch(s){' (stopped early)' if summary['stopped_early'] else ''} "
        f"in {summary['wall_seconds']:.1f} s"
        + (f", {summary['images_per_second']:,.0f} img/s" if summary["images_per_second"] else "")
        + f" on {summary['train_samples']:,} training image(s)"
    ]
    best = summary["best"]
    if best is not None:
        text = f"best epoch {best['epoch']}: loss {best['train_loss']:.4f}, accuracy {best['train_accuracy']:.4f}"
        if best["val_loss"] is not None:
            text += f", val_loss {best['val_loss']:.4f}, val_accuracy {best['val_accuracy']:.4f}"
        lines.append(text)
    if summary["model_epoch"]:
        lines.append(f"the model holds the weights of epoch {summary['model_epoch']}")
    for key, path in summary["outputs"].items():
        lines.append(f"{key.replace('_', ' ')}: {path}")
    return "\n".join(lines)
