"""The accuracy report every export target gives (fp32 vs exported on labelled data), the --max-drop gate, the
result the command prints (and `export --json` prints as one JSON document), and the final write."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import CnnspecError, ModelError
from ..files import atomic_write
from .source import Scorer, Source

DEFAULT_MAX_DROP = 1.0  # accuracy points


@dataclass(frozen=True)
class Accuracy:
    """fp32 and exported accuracy on the same samples (fractions), top-1 agreement and the drop in points."""

    data: str
    n: int
    fp32: float
    exported: float
    agreement: float

    @property
    def drop(self) -> float:
        return 100.0 * (self.fp32 - self.exported)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop_points": round(self.drop, 4)}


@dataclass
class ExportResult:
    """What `export` did: the file (None when the gate refused it) and the numbers behind it."""

    path: str | None
    precision: str
    accuracy: Accuracy | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the target's summary (calibration, ops kept float)
    size: int = 0
    sha256: str = ""
    max_drop: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bytes": self.size,
            "sha256": self.sha256,
            "precision": self.precision,
            "accuracy": self.accuracy.as_dict() if self.accuracy else None,
            "max_drop": self.max_drop,
            **self.details,
        }

    def json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


class GateError(CnnspecError):
    """The exported model lost more accuracy than --max-drop allows; nothing was written."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


def measure(source: Source, exported: bytes, data: Dataset, name: str) -> Accuracy:
    """Score the source and the exported bytes on `data` (raw pixels): both accuracies and top-1 agreement."""
    x = source.feed(data.x)
    ref = Scorer(source.data, source.info, source.threads).probabilities(x)
    new = Scorer(exported, source.info, source.threads).probabilities(x)
    if not np.isfinite(new).all():
        raise ModelError("the exported model produces NaN or infinite scores on the evaluation data; nothing written")
    a, b = ref.argmax(axis=1), new.argmax(axis=1)
    return Accuracy(
        data=name,
        n=len(data),
        fp32=float((a == data.y).mean()),
        exported=float((b == data.y).mean()),
        agreement=float((a == b).mean()),
    )


def gate(result: ExportResult, max_drop: float | None) -> None:
    """Refuse (GateError, exit 1) when the drop exceeds --max-drop points."""
    acc = result.accuracy
    if acc is None or max_drop is None or acc.drop <= max_drop + 1e-9:
        return
    result.path = None
    raise GateError(
        f"{result.precision} accuracy {100 * acc.exported:.2f}% vs fp32 {100 * acc.fp32:.2f}% on {acc.n} samples of "
        f"{acc.data}: a drop of {acc.drop:.2f} points exceeds --max-drop {max_drop:g}; nothing written. "
        + result.details.get("hint", ""),
        result,
    )


def write(result: ExportResult, output: Path, data: bytes) -> ExportResult:
    atomic_write(output, data)
    result.path, result.size, result.sha256 = str(output), len(data), hashlib.sha256(data).hexdigest()
    return result


def summary_lines(result: ExportResult) -> list[str]:
    """The human-readable report (stderr)."""
    lines = []
    acc = result.accuracy
    if acc is not None:
        lines.append(
            f"accuracy on {acc.n} samples of {acc.data}: fp32 {100 * acc.fp32:.2f}%, {result.precision} "
            f"{100 * acc.exported:.2f}%, top-1 agreement {100 * acc.agreement:.2f}%, drop {acc.drop:.2f} points"
        )
    else:
        lines.append("no accuracy report: give --eval DATA (labelled) to compare with the fp32 model")
    if result.path:
        lines.append(f"wrote {result.path} ({result.size:,} bytes, {result.precision})")
    return lines
