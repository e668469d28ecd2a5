"""`cnnspec run --engine ray` (issue 14, part 3): Ray Data batch inference against plain `run --json`.

The default run checks what needs no Ray cluster (option refusals, the streaming writer's de-duplication and
atomicity); the end-to-end checks share one local Ray (2 CPUs) and are `extended` (Ray starts in seconds).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SPECS_DIR, assert_no_traceback, run_cli
from PIL import Image

from cnnspec.errors import CnnspecError, UsageError
from cnnspec.files import TEMP_SUFFIX, atomic_output
from cnnspec.serving.ray_batch import RayJob, _write, check_engine_options, rows_table

BAD = {"text.png": b"not an image", "empty.png": b"", "truncated.png": None}  # None: a PNG cut in half


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n random 8x8 grayscale PNGs (the digits model's input) plus the BAD files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    full = paths[0].read_bytes()
    for name, data in BAD.items():
        (folder / name).write_bytes(full[: len(full) // 2] if data is None else data)
    return paths


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_predictions(rows: list[dict], reference: list[dict]) -> None:
    """Same paths, each once, same order; same labels/indices; scores equal up to float32 rounding (onnxruntime
    may pick another kernel for another batch size)."""
    assert [r["path"] for r in rows] == [r["path"] for r in reference]
    for got, want in zip(rows, reference, strict=True):
        assert (got["error"] is None) == (want["error"] is None), (got, want)
        if want["error"] is not None:
            assert got["error"] == want["error"]
            assert got["predictions"] == []
            continue
        assert [(p["label"], p["index"]) for p in got["predictions"]] == [
            (p["label"], p["index"]) for p in want["predictions"]
        ]
        np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                   [p["score"] for p in want["predictions"]], rtol=1e-5, atol=1e-7)  # fmt: skip


# ---- without Ray ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--output", "x.parquet"], "--output only apply with --engine ray"),
        (["--engine", "ray", "-o", "x.jsonl", "--json"], "--json do not apply with --engine ray"),
        (["--engine", "ray", "-o", "x.jsonl", "--jsonl"], "--jsonl do not apply with --engine ray"),
        (["--engine", "ray"], "give --output"),
        (["--engine", "ray", "-o", "x.csv"], "must end in .parquet or .jsonl"),
    ],
)
def test_engine_options_refused_without_a_traceback(tmp_path, args, message):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # never read: the options are refused first
    code, out, err = run_cli("run", model, tmp_path, *args, cwd=tmp_path)
    assert code == 2, err
    assert message in err
    assert_no_traceback(out, err)


def test_check_engine_options_names_every_option():
    with pytest.raises(UsageError, match="--address, --concurrency only apply"):
        check_engine_options("plain", {"--address": "ray://h:10001", "--concurrency": 2}, {})
    with pytest.raises(UsageError, match="use --gpus-per-worker"):
        check_engine_options("ray", {"--output": "o.parquet"}, {"--device": "cuda"})
    check_engine_options("plain", {"--address": None}, {"--json": True})


def _batches(row_ids: list[list[int]]):
    for ids in row_ids:
        preds = [[{"label": str(i % 3), "index": i % 3, "score": 0.5}] for i in ids]
        yield rows_table(ids, [f"f{i}.png" for i in ids], preds, [None] * len(ids))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_writer_drops_rows_already_written(tmp_path, suffix):
    # A batch retried after an actor restart can repeat rows: each row number is written once.
    out = tmp_path / f"preds{suffix}"
    summary = _write(_batches([[0, 1, 2], [1, 2, 3], [4], [0, 4]]), out, suffix[1:])
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [f"f{i}.png" for i in range(5)]
    assert summary.rows == 5 and summary.errors == 0
    assert set(rows[0]) == {"path", "predictions", "error"}  # the columns of `run --json`, nothing more


def test_writer_failing_mid_stream_leaves_the_old_file(tmp_path):
    out = tmp_path / "preds.parquet"
    out.write_bytes(b"old")

    def failing():
        yield from _batches([[0, 1]])
        raise CnnspecError("worker lost")

    with pytest.raises(CnnspecError, match="worker lost"):
        _write(failing(), out, "parquet")
    assert out.read_bytes() == b"old"
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_atomic_output_renames_only_at_the_end(tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text("old\n")
    with atomic_output(out) as temp:
        temp.write_text("new\n")
        assert temp.parent == tmp_path and temp.name.endswith(TEMP_SUFFIX)
        assert out.read_text() == "old\n"  # a reader sees the old file until the rename
    assert out.read_text() == "new\n"
    assert not temp.exists()


# ---- on a local Ray (extended) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.onnx"
    code, _, err = run_cli("compile", SPECS_DIR / "digits.yaml", "-o", path)
    assert code == 0, err
    return path


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def plain_run_json(model: Path, folder: Path, cwd: Path) -> list[dict]:
    code, out, err = run_cli("run", model, folder, "--json", "--top-k", "3", cwd=cwd, timeout=300)
    assert code == 1, err  # the bad files
    return json.loads(out)


@pytest.mark.extended
def test_2000_files_match_plain_run_and_bad_files_are_rows(local_ray, model, tmp_path, monkeypatch):
    from cnnspec.serving.ray_batch import run_ray

    write_images(tmp_path / "imgs", 2000)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them, in both runs
    reference = plain_run_json(model, Path("imgs"), tmp_path)
    assert len(reference) == 2003
    out = tmp_path / "preds.parquet"
    out.write_bytes(b"old")
    summary = run_ray(model, ["imgs"], RayJob(output=out, concurrency=1, batch_size=128, top_k=3))
    rows = read_rows(out)
    assert_same_predictions(rows, reference)
    assert summary.rows == 2003 and summary.errors == len(BAD)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == set(BAD)
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


@pytest.mark.extended
def test_actor_killed_mid_job_is_restarted_and_rows_are_complete(local_ray, model, tmp_path, monkeypatch):
    from cnnspec.serving.ray_batch import run_ray

    write_images(tmp_path / "imgs", 400, seed=1)
    monkeypatch.chdir(tmp_path)
    reference = plain_run_json(model, Path("imgs"), tmp_path)
    marker = tmp_path / "crashed"
    monkeypatch.setenv("CNNSPEC_TEST_RAY_CRASH", str(marker))
    out = tmp_path / "preds.jsonl"
    run_ray(model, ["imgs"], RayJob(output=out, concurrency=1, batch_size=32, top_k=3))
    assert marker.exists()  # an actor really did exit mid-job
    rows = read_rows(out)
    assert len({r["path"] for r in rows}) == len(rows) == 403
    assert_same_predictions(rows, reference)


@pytest.mark.extended
def test_file_uri_folder_is_read_through_pyarrow(local_ray, model, tmp_path):
    from cnnspec.serving.ray_batch import run_ray

    paths = write_images(tmp_path / "imgs", 20, seed=2)
    out = tmp_path / "preds.jsonl"
    summary = run_ray(model, [(tmp_path / "imgs").as_uri()], RayJob(output=out, top_k=1))
    rows = read_rows(out)
    assert summary.rows == 23
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name[paths[0].name]["path"] == paths[0].as_uri()
    assert by_name["text.png"]["error"] and not by_name[paths[0].name]["error"]


@pytest.mark.extended
def test_gpus_the_local_ray_lacks_are_refused_before_any_work(local_ray, model, tmp_path):
    from cnnspec.serving.ray_batch import run_ray

    write_images(tmp_path / "imgs", 2)
    out = tmp_path / "preds.parquet"
    with pytest.raises(CnnspecError, match="--gpus-per-worker 1: the local Ray has 0 GPU"):
        run_ray(model, [str(tmp_path / "imgs")], RayJob(output=out, gpus_per_worker=1))
    assert not out.exists() and not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


@pytest.mark.extended
def test_cli_starts_its_own_local_ray(model, tmp_path):
    write_images(tmp_path / "imgs", 50, seed=3)
    reference = plain_run_json(model, Path("imgs"), tmp_path)
    code, out, err = run_cli("run", model, "imgs", "--engine", "ray", "-o", "p.parquet", "--top-k", "3",
                             "--concurrency", "1", cwd=tmp_path, timeout=300)  # fmt: skip
    assert code == 1, err  # the bad files, as plain run
    assert "wrote 53 row(s)" in err and "3 of 53 image(s) could not be classified" in err
    assert_no_traceback(out, err)
    assert_same_predictions(read_rows(tmp_path / "p.parquet"), reference)


@pytest.mark.extended
def test_cli_output_appears_only_at_the_rename(model, tmp_path):
    # CNNSPEC_TEST_HOOK pauses the writer between the complete temp file and the rename: the old output is still
    # what readers see, the temp file already holds every row; Ctrl-C there leaves the old file and no temp.
    import signal
    import subprocess
    import sys

    from conftest import default_sigint

    write_images(tmp_path / "imgs", 30, seed=4)
    out = tmp_path / "p.jsonl"
    out.write_text("old\n")
    env = {**os.environ, "CNNSPEC_TEST_HOOK": "pause_before_replace"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnspec", "run", model, "imgs", "--engine", "ray", "-o", out.name,
                             "--concurrency", "1"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if "paused before replace" in line:
                break
        else:
            pytest.fail(f"the writer never reached the rename (exit {proc.wait()})")
        assert out.read_text() == "old\n"
        (temp,) = tmp_path.glob(f".p.jsonl.*{TEMP_SUFFIX}")
        assert len([json.loads(line) for line in temp.read_text().splitlines()]) == 33
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.read_text() == "old\n"
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))
