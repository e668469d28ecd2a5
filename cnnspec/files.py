"""Crash-safe file writes and output-path checks. Every file cnnspec writes goes through `atomic_write`."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from .errors import CnnspecError, UsageError

TEMP_SUFFIX = ".cnnspec-tmp"


def check_output_path(path: str | Path, *, not_same_as: list[str | Path] = ()) -> Path:
    """Refuse an output path that cannot work before doing any expensive work."""
    path = Path(path)
    for other in not_same_as:
        if Path(other).exists() and path.exists() and path.resolve() == Path(other).resolve():
            raise UsageError(f"output '{path}' would overwrite the input '{other}'")
    if path.is_dir():
        raise UsageError(f"output '{path}' is a directory")
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise CnnspecError(f"cannot write '{path}': '{ancestor}' is not a directory")
    if not parent.exists():
        raise UsageError(f"cannot write '{path}': directory '{parent}' does not exist")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files of this output left by writers that were killed (their pid is gone)."""
    for temp in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        try:
            pid = int(temp.name[len(path.name) + 2 :].split(".")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                temp.unlink()


def atomic_write(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    mkstemp in the destination folder, write, fsync, chmod, rename over the destination, then fsync
    the folder so the rename itself survives a power cut.
    """
    path = Path(path)
    _remove_stale_temps(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode & ~_umask())
        if os.environ.get("CNNSPEC_TEST_HOOK") == "pause_before_replace":
            time.sleep(30)  # lets tests kill the writer exactly between fsync and rename
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise CnnspecError(f"could not write '{path}': {exc.strerror or exc}") from None
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
