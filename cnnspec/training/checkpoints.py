"""Crash-safe training checkpoints: a folder of step-XXXXXXXXX.npz files and a LATEST marker.

Each checkpoint is written with atomic_write (temp file, fsync, rename, folder fsync); LATEST, the
commit point, is written last and names the file and its sha256. A kill -9 at any moment leaves
LATEST naming a complete checkpoint (or no LATEST at all). The .npz holds only numeric and string
arrays (loaded with allow_pickle=False): param/<name>, opt/<name>, best/<name> and `meta`, a JSON
string with the loop position, metrics history and the settings the run must resume with.

A lock file (flock, released by the kernel even on kill -9) keeps a second trainer out.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnspecError, DataError, UsageError
from ..files import atomic_write

LATEST, LOCK = "LATEST", "LOCK"
NAME = re.compile(r"^step-(\d{9})\.npz$")
KEEP = 2  # checkpoints kept: the newest and the one before it


@dataclass
class TrainState:
    """Everything a resumed run needs to continue bit for bit."""

    params: dict[str, np.ndarray]
    opt: dict[str, np.ndarray]
    epoch: int = 0
    """Epoch being run (0-based)."""
    batch: int = 0
    """Next batch within that epoch."""
    step: int = 0
    """Updates done so far (the optimizer's step count)."""
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "seen": 0})
    """Running totals of the epoch in progress."""
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, np.ndarray] = field(default_factory=dict)
    best_info: dict[str, Any] = field(default_factory=lambda: {"loss": None, "epoch": None, "bad_epochs": 0})
    fingerprint: str = ""
    """Hash of the spec, data and settings: a checkpoint resumes only the run that made it."""
    seed: int = 0
    """The RNG state: every draw comes from a generator keyed on (seed, epoch, batch), see loop.py."""
    fingerprint_parts: dict[str, Any] = field(default_factory=dict)
    """What went into the fingerprint (settings, spec and data hashes): names what differs on a refused resume."""


def encode(state: TrainState) -> bytes:
    arrays = {f"param/{k}": v for k, v in state.params.items()}
    arrays |= {f"opt/{k}": v for k, v in state.opt.items()}
    arrays |= {f"best/{k}": v for k, v in state.best.items()}
    meta = {
        "epoch": state.epoch,
        "batch": state.batch,
        "step": state.step,
        "sums": state.sums,
        "history": state.history,
        "best_info": state.best_info,
        "fingerprint": state.fingerprint,
        "fingerprint_parts": state.fingerprint_parts,
        "rng": {"seed": state.seed, "shuffle": "(seed, epoch, 0)", "dropout": "(seed, epoch, 1, batch)"},
        "format": 1,
    }
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def decode(data: bytes, source: str) -> TrainState:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:  # noqa: BLE001 - any damage in the file is one error for the user
        raise DataError(f"checkpoint '{source}' cannot be read ({exc}); delete it or start without --resume") from None

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    return TrainState(
        group("param/"),
        group("opt/"),
        meta["epoch"],
        meta["batch"],
        meta["step"],
        meta["sums"],
        meta["history"],
        group("best/"),
        meta["best_info"],
        meta["fingerprint"],
        meta["rng"]["seed"],
        meta.get("fingerprint_parts", {}),  # absent in checkpoints written before it was added
    )


class CheckpointDir:
    """The checkpoint folder of one run; use as a context manager to hold its lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __enter__(self) -> CheckpointDir:
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--checkpoint-dir '{self.path}' is a file; give a folder (it is created if missing)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CnnspecError(f"cannot create --checkpoint-dir '{self.path}': {exc.strerror}") from None
        self._lock()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CnnspecError(
                f"checkpoint folder '{self.path}' is locked by PID {owner} (another cnnspec train is using it); "
                "wait for it to finish or use another --checkpoint-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def save(self, state: TrainState) -> Path:
        """Write step-<step>.npz, then LATEST (the commit point), then drop older checkpoints."""
        name = f"step-{state.step:09d}.npz"
        data = encode(state)
        atomic_write(self.path / name, data)
        _test_hook("after_npz")
        atomic_write(self.path / LATEST, f"{name} {hashlib.sha256(data).hexdigest()}\n".encode())
        self._prune(keep=name)
        return self.path / name

    def _prune(self, keep: str) -> None:
        found = sorted(p.name for p in self.path.iterdir() if NAME.match(p.name))
        for old in [n for n in found if n != keep][: max(len(found) - KEEP, 0)]:
            with contextlib.suppress(OSError):
                (self.path / old).unlink()

    def load_latest(self) -> TrainState | None:
        """The committed checkpoint, verified against its sha256; None when there is none."""
        marker = self.path / LATEST
        if not marker.exists():
            return None
        parts = marker.read_text(errors="replace").split()
        if len(parts) != 2 or not NAME.match(parts[0]):
            raise DataError(f"'{marker}' is damaged (expected 'step-XXXXXXXXX.npz <sha256>'); delete the folder")
        path = self.path / parts[0]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"checkpoint '{path}' named by LATEST cannot be read: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != parts[1]:
            raise DataError(f"checkpoint '{path}' does not match the sha256 in LATEST; it was changed or damaged")
        return decode(data, str(path))


def _test_hook(point: str) -> None:
    """CNNSPEC_TEST_HOOK=checkpoint_<point>_kill: tests stop the writer exactly at a point (SIGKILL self)."""
    if os.environ.get("CNNSPEC_TEST_HOOK") == f"checkpoint_{point}_kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
