"""Crash-safe file writes and output-path checks. Every file cnnspec writes goes through `atomic_write`.

A reader (or a crash, or a concurrent writer) must only ever see the old file or the whole new one:
the bytes go to a temp file in the destination folder, are fsynced, and the temp file is renamed
over the destination (rename is atomic within one file system). Temp files of writers that died
(kill -9, power cut) carry the dead writer's pid in their name and are removed by the next write.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import CnnspecError, UsageError

TEMP_SUFFIX = ".cnnspec-tmp"
_CHUNK = 1 << 22  # os.write may write less than asked; 4 MiB per call keeps each call short
_NAME_KEEP = 100  # room for ".<pid>.<random>.cnnspec-tmp" within the usual 255-byte file-name limit


def check_output_path(path: str | Path, *, not_same_as: Mapping[str, str | Path] | Sequence[str | Path] = ()) -> Path:
    """Refuse an output path that cannot work, before doing any expensive work.

    `not_same_as` names the inputs the output must not overwrite, e.g. {"spec": spec_path}.
    """
    path = Path(path)
    inputs = not_same_as.items() if isinstance(not_same_as, Mapping) else [("input", p) for p in not_same_as]
    for what, other in inputs:
        if _same_file(path, Path(other)):
            raise UsageError(f"output '{path}' would overwrite the {what} '{other}'; choose another output path")
    if path.is_dir():
        raise UsageError(f"output '{path}' is a directory; give a file name such as '{path / 'model.onnx'}'")
    if path.exists() and not path.is_file():
        raise UsageError(f"output '{path}' exists and is not a regular file (a device, FIFO or socket)")
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise CnnspecError(f"cannot write '{path}': '{ancestor}' is not a directory")
    if not parent.exists():
        raise UsageError(f"cannot write '{path}': directory '{parent}' does not exist; create it first")
    return path


Outputs = Mapping[str, "str | Path | None"]


def check_writable(
    files: Outputs | None = None,
    folders: Outputs | None = None,
    *,
    not_same_as: Mapping[str, str | Path] | Sequence[str | Path] = (),
) -> None:
    """Refuse, before any long work (training), an output that could not be written at the end.

    `files` and `folders` map what the user called the output (an option name such as '-o' or
    '--checkpoint-dir') to its path; None entries are skipped. A file must pass check_output_path and its folder
    must take a new file; a folder must be a writable folder, or be creatable (its nearest existing ancestor is a
    writable folder). Writability is tested by creating and removing a probe file, the only test that also
    holds for read-only mounts, ACLs and root. Raises UsageError (exit 2) naming the option, path and reason.
    """
    for option, path in (files or {}).items():
        if path is not None:
            path = check_output_path(path, not_same_as=not_same_as)
            _probe_folder(path.parent, option, path)
    for option, path in (folders or {}).items():
        if path is not None:
            _check_folder(Path(path), option)


def _check_folder(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"cannot use {option} '{path}': it is a file, not a folder")
    existing = path
    while not existing.exists():  # the folder is created later: its nearest existing ancestor must take it
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create {option} '{path}': '{existing}' is not a directory")
    _probe_folder(existing, option, path)


def _probe_folder(folder: Path, option: str, path: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=f".cnnspec-probe-{os.getpid()}.", dir=folder)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT:  # /proc and similar: the folder exists but takes no new files
            reason = "the folder takes no new files"
        raise UsageError(
            f"cannot write {option} '{path}': '{folder}' is not writable ({reason}); choose another path"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _same_file(a: Path, b: Path) -> bool:
    # samefile also catches hard links and symlinks to the input.
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:_NAME_KEEP]}."


def _temp_pid(path: Path, temp: Path) -> int | None:
    """The writer's pid from a temp file name '.<name>.<pid>.<random>.cnnspec-tmp'; None if not this output's."""
    match = re.fullmatch(r"(\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX), temp.name[len(_temp_prefix(path)) :])
    return int(match.group(1)) if match else None


def stale_temps(path: str | Path) -> list[Path]:
    """Temp files next to `path` left by writers of `path` (alive or dead)."""
    path = Path(path)
    found = path.parent.glob(f"{glob.escape(_temp_prefix(path))}*{TEMP_SUFFIX}")
    return sorted(t for t in found if _temp_pid(path, t) is not None)


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files of this output left by writers that were killed (their pid is gone)."""
    for temp in stale_temps(path):
        pid = _temp_pid(path, temp)
        if pid is not None and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                temp.unlink()


def _temp_name(path: Path) -> Path:
    """A fresh temp file name next to `path`: '.<name>.<pid>.<random>.cnnspec-tmp' (see stale_temps)."""
    return path.parent / f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer) and fsync, so the data is on disk before the rename."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_CHUNK])
        view = view[written:]
    os.fsync(fd)


def atomic_write(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    Create a temp file in the destination folder (O_EXCL), write, fsync, chmod, rename over the destination, then fsync
    the folder so the rename itself survives a power cut. An OSError (disk full, I/O error) becomes a
    CnnspecError; the temp file is removed and the previous file is left as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # never rename over /dev/null or a FIFO
        raise UsageError(f"output '{path}' exists and is not a regular file (a device, FIFO or socket)")
    temp: Path | None = None
    try:
        _remove_stale_temps(path)
        # The name is chosen (and remembered) before the file exists, so an interrupt (Ctrl-C) landing just
        # after the file is created still finds it for cleanup; with mkstemp, the name was only known once
        # the call had returned and its tuple been unpacked, and a KeyboardInterrupt in between left the file.
        temp = _temp_name(path)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.chmod(temp, mode & ~_UMASK)
        _test_hook()
        os.replace(temp, path)
        temp = None
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError):
            raise CnnspecError(f"could not write '{path}': {exc.strerror or exc}") from None
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """For writers that stream (Parquet, JSON Lines): yield a temp path next to `path` to write to; when the block
    ends normally the temp file is fsynced, chmodded and renamed over `path` (as in atomic_write); on any
    exception it is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UsageError(f"output '{path}' exists and is not a regular file (a device, FIFO or socket)")
    _remove_stale_temps(path)
    temp = _temp_name(path)
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(temp, mode & ~_UMASK)
        _test_hook()
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise CnnspecError(f"could not write '{path}': {exc.strerror or exc}") from None
        raise
    _fsync_dir(path.parent)


def _test_hook() -> None:
    # CNNSPEC_TEST_HOOK=pause_before_replace lets tests kill the writer exactly between fsync and rename.
    if os.environ.get("CNNSPEC_TEST_HOOK") == "pause_before_replace":
        print("cnnspec-test-hook: paused before replace", file=sys.stderr, flush=True)
        time.sleep(60)


def _read_umask() -> int:
    # os.umask can only be read by setting it, which is not thread-safe: read it once, at import.
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
