"""What a model made elsewhere needs from its user: class names (`--labels FILE`) and the preprocessing
(`--scale/--mean/--std`) that cnnspec models carry in their own graph and metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

MAX_LABELS_BYTES = 1 << 20


@dataclass(frozen=True)
class Preprocess:
    """x * scale, then (x - mean) / std per channel, applied in numpy for models without it in-graph."""

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def apply(self, x: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x * np.float32(self.scale) - mean) / std).astype(np.float32, copy=False)


def read_labels_file(path: str | Path) -> list[str]:
    """`--labels FILE`: one label per line (UTF-8); trailing blank lines ignored."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"labels file '{p}' does not exist or is not a file")
    if p.stat().st_size > MAX_LABELS_BYTES:
        raise UsageError(f"labels file '{p}' is larger than 1 MiB")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"labels file '{p}' is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UsageError(f"labels file '{p}' is empty: write one label per line")
    return [line.strip() for line in lines]


def preprocess_from_options(scale: float | None, mean: str | None, std: str | None) -> Preprocess | None:
    """`--scale 0.0039 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225` -> Preprocess (None when none given)."""
    if scale is None and mean is None and std is None:
        return None
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise UsageError(f"Invalid value for '--scale': must be a finite number > 0; got {scale}")
    mean_v = _floats("--mean", mean, 0.0)
    std_v = _floats("--std", std, 1.0)
    if any(s <= 0 for s in std_v):
        raise UsageError(f"Invalid value for '--std': every value must be > 0; got {std}")
    return Preprocess(1.0 if scale is None else float(scale), mean_v, std_v)


def _floats(option: str, text: str | None, default: float) -> tuple[float, ...]:
    if text is None:
        return (default,)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"Invalid value for '{option}': give numbers separated by commas; got {text!r}") from None
    if not all(np.isfinite(values)):
        raise UsageError(f"Invalid value for '{option}': values must be finite; got {text!r}")
    return values
