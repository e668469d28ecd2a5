"""`cnnspec run --engine ray` against plain `cnnspec run`: images/s on N small images, and the driver's peak RSS.

Writes N random 8x8 grayscale PNGs (the digits model's input) to a temp folder, compiles specs/digits.yaml, then
runs, each as a fresh `python -m cnnspec` process whose peak RSS is read with os.wait4:
  plain   cnnspec run digits.onnx imgs --json > /dev/null
  ray     cnnspec run digits.onnx imgs --engine ray -o preds.parquet   (starts and stops a local Ray)
The ray row's time includes starting Ray; a `ray (warm)` row times run_ray in this process on a Ray it already
started, i.e. what a long job pays per image once Ray is up. Prints one Markdown table row per engine.

  python benchmarks/bench_ray.py [--images 10000] [--concurrency N] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_images(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def timed(args: list[str], cwd: Path) -> tuple[float, float, int]:
    """(seconds, driver peak RSS in MiB, exit code) of `python -m cnnspec ARGS`."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cnnspec", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err, file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, code


def warm_ray(model: Path, folder: Path, out: Path, concurrency: int | None, batch_size: int) -> float:
    import ray

    from cnnspec.serving.ray_batch import RayJob, run_ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        job = RayJob(output=out, concurrency=concurrency, batch_size=batch_size)
        run_ray(model, [str(folder)], job)  # first pass: worker processes and imports
        start = time.perf_counter()
        run_ray(model, [str(folder)], job)
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_images(work / "imgs", args.images)
        subprocess.run([sys.executable, "-m", "cnnspec", "compile", str(ROOT / "specs/digits.yaml"), "-o", "d.onnx"],
                       cwd=work, check=True, capture_output=True)  # fmt: skip
        batch = ["--batch-size", str(args.batch_size)]
        ray_opts = ["--engine", "ray", "-o", "preds.parquet", *batch]
        ray_opts += ["--concurrency", str(args.concurrency)] if args.concurrency else []
        load = os.getloadavg()[0]
        rows = [
            (
                "plain",
                "cnnspec run d.onnx imgs --json " + " ".join(batch),
                *timed(["run", "d.onnx", "imgs", "--json", *batch], work),
            )
        ]
        rows.append(
            ("ray", "cnnspec run d.onnx imgs " + " ".join(ray_opts), *timed(["run", "d.onnx", "imgs", *ray_opts], work))
        )
        warm = warm_ray(work / "d.onnx", work / "imgs", work / "warm.parquet", args.concurrency, args.batch_size)
        rows.append(("ray (warm)", "run_ray(...) on a running local Ray, 2nd pass", warm, float("nan"), 0))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; load average (1 min) at start: {load:.2f}; {args.images} 8x8 PNGs, digits model\n")
    print("| engine | command | seconds | images/s | driver peak RSS MiB | exit |")
    print("|---|---|---:|---:|---:|---:|")
    for engine, command, seconds, rss, code in rows:
        rss_text = "-" if rss != rss else f"{rss:.0f}"
        print(f"| {engine} | `{command}` | {seconds:.1f} | {args.images / seconds:.0f} | {rss_text} | {code} |")


if __name__ == "__main__":
    main()
