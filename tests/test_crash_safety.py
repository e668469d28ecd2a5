"""Crash-safe writes: kill -9 at random times and at the point between fsync and rename, Ctrl-C, and a full
or failing disk. The output is always the old file or the whole new one, and temp files never pile up.

CNNSPEC_KILL_TRIALS sets the number of random kills (20 in CI, 200 for the nightly profile).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import default_sigint

from cnnspec.errors import CnnspecError
from cnnspec.files import TEMP_SUFFIX, atomic_write, stale_temps

TRIALS = int(os.environ.get("CNNSPEC_KILL_TRIALS", "20"))

BIG_SPEC = """\
name: big
input:
  shape: [64, 64, 3]
layers:
  - type: Flatten
  - type: Dense      # 12,288 x 1,024 weights: a ~50 MB model
    units: 1024
    activation: relu
  - type: Dense
    units: 10
"""
TINY_SPEC = """\
name: tiny
input:
  shape: [8, 8, 1]
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3}
  - {type: Flatten}
  - {type: Dense, units: 2}
"""


def compile_args(spec: Path, out: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "cnnspec", "compile", str(spec), "-o", str(out), "--seed", str(seed)]


def compile_ok(spec: Path, out: Path, seed: int) -> bytes:
    result = subprocess.run(compile_args(spec, out, seed), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(path), full_check=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The ~50 MB spec, its seed-1 model (the 'old' output) and its seed-2 model (a fresh compile)."""
    folder = tmp_path_factory.mktemp("big")
    spec = folder / "big.yaml"
    spec.write_text(BIG_SPEC)
    started = time.monotonic()
    new = compile_ok(spec, folder / "new.onnx", seed=2)
    duration = time.monotonic() - started
    old = compile_ok(spec, folder / "old.onnx", seed=1)
    assert old != new and len(new) > 45_000_000
    check_onnx(folder / "old.onnx")
    check_onnx(folder / "new.onnx")
    return {"spec": spec, "old": old, "new": new, "duration": duration}


def test_kill_9_at_random_times_leaves_old_or_new(big: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    rng = random.Random(7)
    outcomes = {sha(big["old"]): "old", sha(big["new"]): "new"}
    seen = ["new"]
    for _ in range(TRIALS):
        if seen[-1] != "old":  # start every trial from the old model
            out.write_bytes(big["old"])
        proc = subprocess.Popen(compile_args(big["spec"], out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, big["duration"] * 1.1))
        proc.kill()
        proc.wait()  # reaped, so its pid is gone and its temp file counts as stale
        digest = sha(out.read_bytes())
        assert digest in outcomes, "the output is neither the old model nor a whole new one"
        seen.append(outcomes[digest])
    # Both outcomes are whole models that load and pass the checker (verified once each in the fixture).
    compile_ok(big["spec"], out, seed=2)
    assert stale_temps(out) == [], "the next successful compile removes the temp files of killed writers"
    assert out.read_bytes() == big["new"]
    print(f"random kills: {seen[1:].count('old')} old, {seen[1:].count('new')} new")


def _paused_writer(spec: Path, out: Path, seed: int) -> subprocess.Popen:
    env = {**os.environ, "CNNSPEC_TEST_HOOK": "pause_before_replace"}
    proc = subprocess.Popen(
        compile_args(spec, out, seed), stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint
    )
    line = proc.stderr.readline()  # the writer says when it has fsynced the temp file and is about to rename
    assert "paused before replace" in line, line
    return proc


def test_kill_9_between_fsync_and_rename(tmp_path: Path) -> None:
    spec, out = tmp_path / "tiny.yaml", tmp_path / "out.onnx"
    spec.write_text(TINY_SPEC)
    old = compile_ok(spec, out, seed=1)
    fresh = compile_ok(spec, tmp_path / "fresh.onnx", seed=2)
    proc = _paused_writer(spec, out, seed=2)
    proc.kill()
    proc.wait()
    assert out.read_bytes() == old
    temps = stale_temps(out)
    assert len(temps) == 1 and temps[0].name.startswith(".out.onnx.") and temps[0].name.endswith(TEMP_SUFFIX)
    assert temps[0].read_bytes() == fresh  # the temp file was complete: only the rename was missing
    assert compile_ok(spec, out, seed=2) == fresh
    assert stale_temps(out) == []


def test_live_writers_temp_files_are_not_removed(tmp_path: Path) -> None:
    spec, out = tmp_path / "tiny.yaml", tmp_path / "out.onnx"
    spec.write_text(TINY_SPEC)
    proc = _paused_writer(spec, out, seed=1)
    try:
        compile_ok(spec, out, seed=2)  # another writer must leave the paused writer's temp file alone
        assert len(stale_temps(out)) == 1
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_during_compile_exits_130_without_temp_files(tmp_path: Path) -> None:
    spec, out = tmp_path / "tiny.yaml", tmp_path / "out.onnx"
    spec.write_text(TINY_SPEC)
    old = compile_ok(spec, out, seed=1)
    proc = _paused_writer(spec, out, seed=2)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert "Traceback" not in err and err.startswith("error: interrupted"), err
    assert stale_temps(out) == [] and out.read_bytes() == old


def test_ctrl_c_while_writing_a_large_model(big: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(big["old"])
    proc = subprocess.Popen(
        compile_args(big["spec"], out, 2), stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 60
    while not stale_temps(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # wait until the temp file exists: the write is under way
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    code = proc.wait(timeout=60)
    assert "Traceback" not in err, err
    assert (code, out.read_bytes() == big["old"]) in ((130, True), (0, False)), (code, err)
    assert stale_temps(out) == []


# ---- a full or failing disk (in-process, os.write / os.fsync patched for the temp file only) ------------


def _is_temp(fd: int) -> bool:
    return os.readlink(f"/proc/self/fd/{fd}").endswith(TEMP_SUFFIX)


def _failing(real, err: int, after_calls: int = 0):
    calls = {"n": 0}

    def fake(fd, *args):
        if _is_temp(fd):
            calls["n"] += 1
            if calls["n"] > after_calls:
                raise OSError(err, os.strerror(err))
        return real(fd, *args)

    return fake


@pytest.mark.parametrize(
    ("call", "err", "after", "message"),
    [
        ("write", errno.ENOSPC, 0, "No space left on device"),
        ("write", errno.ENOSPC, 1, "No space left on device"),  # after part of the file is written
        ("write", errno.EIO, 0, "Input/output error"),
        ("fsync", errno.EIO, 0, "Input/output error"),
        ("fsync", errno.ENOSPC, 0, "No space left on device"),
    ],
)
def test_disk_errors_keep_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, err: int, after: int, message: str
) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous model")
    monkeypatch.setattr(os, call, _failing(getattr(os, call), err, after))
    with pytest.raises(CnnspecError) as info:
        atomic_write(out, b"x" * (9 << 20))  # three 4 MiB chunks
    assert str(info.value) == f"could not write '{out}': {message}"
    assert out.read_bytes() == b"previous model"
    assert sorted(tmp_path.iterdir()) == [out]


def test_disk_full_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cnnspec.cli import main

    spec, out = tmp_path / "tiny.yaml", tmp_path / "out.onnx"
    spec.write_text(TINY_SPEC)
    out.write_bytes(b"previous model")
    monkeypatch.setattr(os, "write", _failing(os.write, errno.ENOSPC))
    with pytest.raises(SystemExit) as info:
        main(["compile", str(spec), "-o", str(out)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write '{out}': No space left on device"), err
    assert out.read_bytes() == b"previous model" and sorted(tmp_path.iterdir()) == [out, spec]


def _patch_temp_open(monkeypatch: pytest.MonkeyPatch, after_open) -> None:
    """Make creating atomic_write's temp file call `after_open(fd)` (other os.open calls are untouched)."""
    real_open = os.open

    def patched(file, flags, *args, **kwargs):
        if not str(file).endswith(TEMP_SUFFIX):
            return real_open(file, flags, *args, **kwargs)
        return after_open(lambda: real_open(file, flags, *args, **kwargs))

    monkeypatch.setattr(os, "open", patched)


def test_temp_file_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_inodes(open_temp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    _patch_temp_open(monkeypatch, no_inodes)
    with pytest.raises(CnnspecError, match="could not write .*: No space left on device"):
        atomic_write(tmp_path / "m.onnx", b"data")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_right_after_the_temp_file_is_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The narrowest window: the temp file exists but its descriptor never reached atomic_write (as when a
    # KeyboardInterrupt lands as the creating call returns). Found by sending SIGINT at random times.
    def interrupted(open_temp):
        os.close(open_temp())
        raise KeyboardInterrupt

    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")
    _patch_temp_open(monkeypatch, interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(out, b"data")
    assert list(tmp_path.iterdir()) == [out] and out.read_bytes() == b"previous model"


def test_atomic_write_mode_and_content(tmp_path: Path) -> None:
    out = tmp_path / "m.bin"
    atomic_write(out, b"one")
    atomic_write(out, b"two", mode=0o600)
    assert out.read_bytes() == b"two" and (out.stat().st_mode & 0o777) == 0o600 & ~_umask()
    assert stale_temps(out) == []


def test_atomic_write_refuses_devices(tmp_path: Path) -> None:
    with pytest.raises(CnnspecError, match="not a regular file"):
        atomic_write(Path("/dev/null"), b"x")
    assert Path("/dev/null").is_char_device()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_cleanup_touches_only_this_outputs_dead_temps(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max (4,194,304): no such process
    mine = tmp_path / f".m[1].onnx.{dead}.abcd1234{TEMP_SUFFIX}"  # glob characters in the name
    other_output = tmp_path / f".m[1].onnx.5.{dead}.abcd1234{TEMP_SUFFIX}"  # a temp of 'm[1].onnx.5'
    alive = tmp_path / f".m[1].onnx.{os.getpid()}.abcd1234{TEMP_SUFFIX}"
    for temp in (mine, other_output, alive):
        temp.write_text("partial")
    assert stale_temps(tmp_path / "m[1].onnx") == sorted([mine, alive])
    atomic_write(tmp_path / "m[1].onnx", b"model")
    assert sorted(tmp_path.iterdir()) == sorted([other_output, alive, tmp_path / "m[1].onnx"])


def test_ctrl_c_while_the_cli_imports_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The `cnnspec` entry point: a Ctrl-C during the ~0.1 s of typer/rich imports exits 130 without a traceback."""
    import importlib.abc

    from cnnspec.__main__ import run

    class CtrlCOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "cnnspec.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "cnnspec.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [CtrlCOnImport(), *sys.meta_path])
    with pytest.raises(SystemExit) as info:
        run()
    assert info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"
