"""What the augmentation layers cost a training epoch: specs/seed.yaml at batch 64, with and without them.

    python benchmarks/bench_augmentation.py [--images 2048] [--rounds 3] [--threads 0]

Trains one epoch of random 28x28 images (`train_model`, as `cnnspec train` runs it) with the plain seed network
and with the same network behind RandomFlip, RandomTranslation, RandomRotation, RandomZoom and RandomContrast
(the pipeline prepares batch b+1 on a worker thread while batch b trains). The two alternate for --rounds rounds;
the best epoch time of each is reported, so a burst of load from other processes hurts both alike. Also times the
augmentation of one batch of 64 alone (the work the worker thread hides behind the train step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AUGMENTATION = [
    {"type": "RandomFlip", "mode": "horizontal"},
    {"type": "RandomTranslation", "height_factor": 0.1, "width_factor": 0.1},
    {"type": "RandomRotation", "factor": 0.05},
    {"type": "RandomZoom", "height_factor": 0.1},
    {"type": "RandomContrast", "factor": 0.2},
]


def main() -> None:
    from cnnspec.analysis import check
    from cnnspec.loader import read_spec_file
    from cnnspec.spec import spec_from_data
    from cnnspec.training.loop import Data, augment_batch
    from cnnspec.training.trainer import resolve_settings, train_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = parser.parse_args()
    raw = read_spec_file(ROOT / "specs" / "seed.yaml")
    plain = spec_from_data(raw)
    augmented = spec_from_data(raw | {"layers": AUGMENTATION + raw["layers"]})
    gen = np.random.default_rng(0)
    data = Data(gen.uniform(0, 255, (args.images, 1, 28, 28)).astype(np.float32), gen.integers(0, 10, args.images))
    best = {"plain": float("inf"), "augmented": float("inf")}
    for _ in range(args.rounds):
        for name, spec in (("plain", plain), ("augmented", augmented)):
            settings = resolve_settings(spec, epochs=1, batch_size=64)
            result = train_model(spec, data, None, settings, threads=args.threads or None, log=lambda line: None)
            best[name] = min(best[name], result.history[0]["seconds"])
    layers = [row.layer for row in check(augmented).layers if row.layer.augmentation]
    batch, times = data.x[:64], []
    for i in range(20):
        start = time.perf_counter()
        augment_batch(layers, batch, 0, 0, i)
        times.append(time.perf_counter() - start)
    ratio = best["augmented"] / best["plain"]
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, {args.images} images, batch 64")
    print(f"epoch plain      {best['plain']:.2f} s ({args.images / best['plain']:,.0f} img/s)")
    print(f"epoch augmented  {best['augmented']:.2f} s ({args.images / best['augmented']:,.0f} img/s)")
    print(f"slowdown         {100 * (ratio - 1):+.1f}%")
    print(f"augmenting one batch of 64 alone: {1000 * float(np.median(times)):.1f} ms (median of 20)")


if __name__ == "__main__":
    main()
