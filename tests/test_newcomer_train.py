"""Issue 19: training that loses work. Outputs checked before the first step (bug 1); Ctrl-C keeps the last
completed epoch, a finished run can be extended and a refused resume names what differs (bug 7)."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import default_sigint
from onnx import numpy_helper

from cnnspec.errors import CnnspecError, UsageError
from cnnspec.files import check_writable

SPEC = """
name: tiny
input: {shape: [8, 8, 1]}
labels: [left, right]
preprocess: {scale: 0.00392156862745098}
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3, padding: same, activation: relu}
  - {type: MaxPooling2D}
  - {type: Flatten}
  - {type: Dense, units: 2, activation: softmax}
training: {optimizer: adam, learning_rate: 0.01, epochs: 2, batch_size: 16}
"""
ROOT_USER = os.geteuid() == 0  # chmod does not stop root: those checks use /sys or a file as a parent instead


def cnnspec(*args, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnspec", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300, **kw
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    x = rng.integers(0, 80, (96, 8, 8)).astype(np.uint8)
    x[y == 0, :, :4] += 150
    x[y == 1, :, 4:] += 150
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def unwritable_folder() -> Path | None:
    """A folder this process cannot create files in, even as root (sysfs refuses new files)."""
    folder = Path("/sys")
    if not folder.is_dir():
        return None
    try:
        (folder / "cnnspec-probe").touch()
    except OSError:
        return folder
    return None  # pragma: no cover - a writable /sys


# ---- bug 1: every output checked before the first step ---------------------------------------------------------


def test_check_writable_accepts_files_and_folders_to_be_created(tmp_path: Path):
    check_writable({"-o": tmp_path / "m.onnx", "--metrics-json": None}, {"--checkpoint-dir": tmp_path / "a" / "b"})
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # and leaves no probe file behind


def test_check_writable_refuses_a_folder_under_a_file(tmp_path: Path):
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(UsageError, match=r"--checkpoint-dir .*plain.txt' is not a directory"):
        check_writable({}, {"--checkpoint-dir": tmp_path / "plain.txt" / "ck"})
    with pytest.raises(UsageError, match=r"--checkpoint-dir .*it is a file"):
        check_writable({}, {"--checkpoint-dir": tmp_path / "plain.txt"})
    with pytest.raises(CnnspecError, match="'.*plain.txt' is not a directory"):  # row 21's wording and exit 1
        check_writable({"-o": tmp_path / "plain.txt" / "m.onnx"})


@pytest.mark.skipif(ROOT_USER, reason="chmod does not stop root; /sys covers the case below")
def test_check_writable_refuses_a_read_only_folder(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(UsageError, match=r"cannot write -o .* is not writable \(Permission denied\)"):
            check_writable({"-o": folder / "m.onnx"})
        with pytest.raises(UsageError, match="--checkpoint-dir"):
            check_writable({}, {"--checkpoint-dir": folder / "new" / "ck"})
    finally:
        folder.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("option", ["-o", "--metrics-json", "--export-train-step", "--checkpoint-dir"])
def test_train_refuses_an_unwritable_output_before_training(work: Path, option: str, capsys, monkeypatch):
    from cnnspec import train_command
    from cnnspec.cli import _run

    folder = unwritable_folder()
    if folder is None:
        pytest.skip("no folder this user cannot write")
    monkeypatch.setattr(train_command, "load_data", lambda *a: pytest.fail("the data were read"))
    out = {"-o": work / "m.onnx", option: folder / "out"}
    args = [str(a) for pair in out.items() for a in pair]
    code = _run(["train", str(work / "spec.yaml"), "--data", str(work / "data.npz"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{option} '{folder / 'out'}'" in err and "not writable" in err
    assert not (work / "m.onnx").exists()


# ---- bug 7: finished epochs are never lost ---------------------------------------------------------------------


def test_ctrl_c_without_checkpoint_dir_keeps_the_last_completed_epoch(work: Path):
    args = [sys.executable, "-m", "cnnspec", "train", "spec.yaml", "--data", "data.npz", "-o", "m.onnx"]
    proc = subprocess.Popen(
        [*args, "--epochs", "1000"], cwd=work, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    match = re.search(r"interrupted: wrote (\S+), the model after epoch (\d+) of 1000", rest)
    assert match, rest
    kept, done = work / match.group(1), int(match.group(2))
    assert kept.name == f"m.epoch{done}.onnx" and not (work / "m.onnx").exists()
    # the same weights as a run told to stop after that many epochs (every draw is keyed on seed and epoch)
    straight = cnnspec("train", "spec.yaml", "--data", "data.npz", "-o", "s.onnx", "--epochs", done, cwd=work)
    assert straight.returncode == 0, straight.stderr
    a, b = weights(kept), weights(work / "s.onnx")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_extended_by_resume_with_more_epochs(work: Path):
    base = ["train", "spec.yaml", "--data", "data.npz", "--checkpoint-dir", "ck"]
    assert cnnspec(*base, "-o", "two.onnx", cwd=work).returncode == 0
    again = cnnspec(*base, "-o", "two-again.onnx", "--resume", cwd=work)
    assert again.returncode == 0 and "already finished 2 epochs; give --epochs N > 2" in again.stderr
    longer = cnnspec(*base, "-o", "four.onnx", "--resume", "--epochs", "4", cwd=work)
    assert longer.returncode == 0 and "epoch 3/4" in longer.stderr and "epoch 1/" not in longer.stderr
    straight = cnnspec("train", "spec.yaml", "--data", "data.npz", "-o", "s4.onnx", "--epochs", "4", cwd=work)
    assert straight.returncode == 0, straight.stderr
    a, b = weights(work / "four.onnx"), weights(work / "s4.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_refused_resume_names_the_setting_that_differs(work: Path):
    base = ["train", "spec.yaml", "--data", "data.npz", "-o", "m.onnx", "--checkpoint-dir", "ck"]
    assert cnnspec(*base, "--epochs", "1", cwd=work).returncode == 0
    r = cnnspec(*base, "--resume", "--learning-rate", "0.1", cwd=work)
    assert r.returncode == 1
    assert "learning_rate: 0.01 in the checkpoint, 0.1 now" in r.stderr and "batch_size" not in r.stderr
    (work / "spec.yaml").write_text(SPEC.replace("filters: 4", "filters: 5"))
    r = cnnspec(*base, "--resume", cwd=work)
    assert r.returncode == 1 and "the spec (layers" in r.stderr


# ---- progress: a bar with ETA on a terminal, one line per epoch when piped --------------------------------------


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_epoch_when_piped(work: Path):
    import pty
    import select

    args = [sys.executable, "-m", "cnnspec", "train", "spec.yaml", "--data", "data.npz", "--epochs", "3"]
    piped = cnnspec(*args[3:], "-o", "p.onnx", cwd=work)
    lines = [line.split("  ")[0] for line in piped.stderr.splitlines()]
    assert lines[:3] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"] and len(lines) == 4 and lines[3].startswith("wrote")
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen([*args, "-o", "t.onnx"], cwd=work, stdin=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while select.select([master], [], [], 120)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = seen.decode("utf-8", "replace")
    assert "━" in text and "/6" in text and "-:--:--" in text  # rich's bar, batches done of 6, time remaining
