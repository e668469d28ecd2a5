"""Training throughput (images/s) of cnnspec's train-step graph at batch 64, beside PyTorch eager.

    python benchmarks/bench_training.py [--seconds 5] [--threads 0] [spec.yaml ...]

Defaults: specs/seed.yaml and specs/vgg32.yaml. Each measurement runs whole steps (forward, loss,
backward and the spec's optimizer update) on one fixed random batch after 3 warm-up steps, for at
least --seconds. PyTorch runs the same network (same layers, padding, optimizer) in eager mode with
the same thread count when torch is installed. The two alternate for --rounds rounds and the best
round of each is reported, so a burst of load from other processes hurts both alike; the load
average is printed too.
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

BATCH = 64


def timed(step, seconds: float) -> float:
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        step()
        n += 1
    return n * BATCH / (time.perf_counter() - start)


def cnnspec_step(spec, threads: int):
    from cnnspec.analysis import check
    from cnnspec.compiler import initial_params
    from cnnspec.training.command import resolve_settings
    from cnnspec.training.loop import dropout_masks
    from cnnspec.training.program import build_train_step
    from cnnspec.training.runner import StepRunner

    report = check(spec)
    settings = resolve_settings(spec)
    program = build_train_step(spec, report, settings.optimizer, settings.label_smoothing)
    runner = StepRunner(program, "cpu", threads or None)
    params = initial_params(spec, report, 0)
    runner.load(params, settings.optimizer.initial_state({p: params[p] for p in program.trainable}))
    x, y = batch(spec, report)
    masks = dropout_masks(program, 0, 0, 0, BATCH)
    counter = iter(range(10**9))
    return lambda: runner.step(x, y, 1e-4, next(counter), masks)


def batch(spec, report):
    rng = np.random.default_rng(0)
    h, w, c = spec.input_shape
    x = rng.uniform(0, 255, (BATCH, c, h, w)).astype(np.float32)
    return x, rng.integers(0, report.output_shape[0], BATCH).astype(np.int64)


def torch_step(spec, threads: int):
    try:
        import torch
    except ImportError:
        return None
    from torch_net import torch_model

    torch.set_num_threads(threads or os.cpu_count() or 1)
    model, optimizer = torch_model(spec)
    x, y = batch(spec, __import__("cnnspec.analysis", fromlist=["check"]).check(spec))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    smoothing = spec.training.label_smoothing if spec.training else 0.0
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xt), yt).backward()
        optimizer.step()

    model.train()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=[ROOT / "specs/seed.yaml", ROOT / "specs/vgg32.yaml"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import onnxruntime

    from cnnspec.spec import load_spec

    print(f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'spec':<10} {'cnnspec img/s':>14} {'pytorch img/s':>14} {'ratio':>6}")
    for path in args.specs:
        spec = load_spec(path)
        steps = [cnnspec_step(spec, args.threads), torch_step(spec, args.threads)]
        best = [0.0, 0.0]
        for _ in range(args.rounds):
            for i, step in enumerate(steps):
                if step is not None:
                    best[i] = max(best[i], timed(step, args.seconds))
        ours, theirs = best
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        shown = f"{theirs:14,.0f}" if theirs else f"{'(no torch)':>14}"
        print(f"{spec.name:<10} {ours:14,.0f} {shown} {ratio:>6}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
