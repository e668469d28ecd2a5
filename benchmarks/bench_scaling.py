"""Data-parallel scaling: images/s of whole `cnnspec train` epochs on 1 process and under torchrun on N processes.

    python benchmarks/bench_scaling.py [--processes 1,2] [--threads-per-process 1] [--images 2048] [--batch-size 64]
        [spec ...]

Each run trains 2 epochs on synthetic data (uniform pixels, random labels) and reports the second epoch's
images/s as the loop logs it (shuffling, batching, dropout masks, the step, metrics; start-up excluded). The
1-process rows run `cnnspec train --threads T` for T = threads-per-process and for T = all of them (how one
process would use the same cores); the N-process rows run `torchrun --standalone --nproc-per-node N -m cnnspec
train --threads T`. Needs torch (`pip install 'cnnspec[distributed]'`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"epoch 2/2 .* ([\d,]+) img/s")


def epoch_rate(spec: Path, data: Path, out: Path, processes: int, threads: int, batch: int) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "cnnspec", "train", str(spec),
               "--data", str(data), "-o", str(out), "--epochs", "2", "--batch-size", str(batch),
               "--threads", str(threads)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    found = RATE.search(done.stderr)
    if done.returncode or not found:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=[ROOT / "specs/seed.yaml", ROOT / "specs/vgg32.yaml"])
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from cnnspec.analysis import check
    from cnnspec.spec import load_spec

    counts = [int(n) for n in args.processes.split(",")]
    per = args.threads_per_process
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f}; {args.images} images, batch {args.batch_size}")
    print(f"{'spec':<16} {'processes x threads':>20} {'img/s':>8} {'load':>5}")
    for path in map(Path, args.specs):
        spec = load_spec(path)
        h, w, c = spec.input_shape
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory(prefix="cnnspec-scaling-") as tmp:
            data = Path(tmp) / "data.npz"
            x = rng.integers(0, 256, (args.images, h, w, c), dtype=np.uint8)
            np.savez(data, x=x, y=rng.integers(0, check(spec).output_shape[0], args.images))
            runs = [(1, per)] + ([(1, max(counts) * per)] if max(counts) > 1 else [])
            runs += [(n, per) for n in counts if n > 1]
            for n, t in runs:
                rate = epoch_rate(path, data, Path(tmp) / "m.onnx", n, t, args.batch_size)
                print(f"{spec.name:<16} {f'{n} x {t}':>20} {rate:8,.0f} {os.getloadavg()[0]:5.2f}", flush=True)


if __name__ == "__main__":
    main()
