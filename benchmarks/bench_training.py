"""Training throughput (images/s) of cnnspec's train-step graph at batch 64, beside PyTorch eager.

    python benchmarks/bench_training.py [--seconds 5] [--threads 0] [--one-session] [--profile] [--input N] [spec ...]
    .venv-ort-training/bin/python benchmarks/bench_training.py --ort-training [--threads 0] [spec ...]

Defaults: specs/seed.yaml and specs/vgg32.yaml. Each measurement runs whole steps (forward, loss,
backward and the spec's optimizer update) on one fixed random batch after 3 warm-up steps, for at
least --seconds, run the way `cnnspec train` runs them (on a multi-core CPU, shards of the batch side
by side when no layer mixes the batch; --one-session: the fused step in one session; --profile: the
fused step under onnxruntime's profiler; --input N: the spec's input resized to N x N, for nets whose step
at full size is too slow to time here). PyTorch runs the same network (same layers, padding,
optimizer; graph specs too) in eager mode with the same thread count when torch is installed. The two alternate for
--rounds rounds and the best round of each is reported, so a burst of load from other processes hurts
both alike; the load average is printed too.
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


def train_program(spec, device: str = "cpu"):
    from cnnspec.analysis import check
    from cnnspec.training.program import build_train_step
    from cnnspec.training.trainer import resolve_settings

    report = check(spec)
    settings = resolve_settings(spec)
    program = build_train_step(spec, report, settings.optimizer, settings.label_smoothing, device=device)
    return report, settings, program


def profile(spec, threads: int, steps: int = 10, top: int = 15) -> None:
    """Where a train step's time goes: onnxruntime's profiler, summed per operator type, per layer kind and
    operator (a node belongs to the layer its name's scope, before the '/', names; forward and backward alike)
    and per node (ms per step). The profile JSON goes to a temporary folder and is deleted."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort

    from cnnspec.compiler import initial_params, model_bytes
    from cnnspec.training.loop import dropout_masks
    from cnnspec.training.runner import NO_SPINNING

    report, settings, program = train_program(spec)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    for key, value in NO_SPINNING.items():
        options.add_session_config_entry(key, value)
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "train-step")
        session = ort.InferenceSession(model_bytes(program.model), options, providers=["CPUExecutionProvider"])
        params = initial_params(spec, report, 0)
        x, y = batch(spec, report)
        feeds = params | settings.optimizer.initial_state({p: params[p] for p in program.trainable})
        feeds |= {"input": x, "labels": y, "learning_rate": np.asarray(1e-4, np.float32)}
        feeds |= {"step": np.asarray(0, np.int64)} | dropout_masks(program, 0, 0, 0, BATCH)
        for _ in range(steps):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    kinds = {row.name: row.type for row in report.layers}
    by_op, by_kind, by_node = collections.Counter(), collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ms, node = event["dur"] / 1000 / steps, event["name"].removesuffix("_kernel_time")
            by_op[event["args"]["op_name"]] += ms
            by_kind[f"{kinds.get(node.split('/')[0], '(' + node.split('/')[0] + ')')} {event['args']['op_name']}"] += ms
            by_node[node] += ms
    print(f"{spec.name}, {threads or 'all'} threads: {sum(by_op.values()):.1f} ms/step in kernels")
    for title, counter in (("operator", by_op), ("layer kind and operator", by_kind), ("node", by_node)):
        print(f"  per {title}:")
        for name, ms in counter.most_common(top):
            print(f"    {name:<40} {ms:7.2f}")


def cnnspec_step(spec, threads: int, one_session: bool = False, device: str = "cpu"):
    """A step as `cnnspec train` runs it (shards side by side on a multi-core CPU when the net allows),
    or with `one_session` the fused train-step graph in one session with all threads."""
    from cnnspec.analysis import check
    from cnnspec.compiler import initial_params
    from cnnspec.training.loop import dropout_masks
    from cnnspec.training.runner import StepRunner
    from cnnspec.training.trainer import resolve_settings, step_runner

    if one_session:
        report, settings, program = train_program(spec, device)
        runner = StepRunner(program, device, threads or None)
    else:
        report, settings = check(spec), resolve_settings(spec, batch_size=BATCH)
        program, runner = step_runner(spec, report, settings, device, threads or None)
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


def torch_step(spec, threads: int, device: str = "cpu"):
    try:
        import torch
    except ImportError:
        return None
    from torch_net import torch_model

    torch.set_num_threads(threads or os.cpu_count() or 1)
    model, optimizer = torch_model(spec)  # the optimizer's state is created lazily: moving the model is fine
    model.to(device)
    x, y = batch(spec, __import__("cnnspec.analysis", fromlist=["check"]).check(spec))
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    smoothing = spec.training.label_smoothing if spec.training else 0.0
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            float(loss.detach())  # as cnnspec's step, which returns the loss to the host: the step is finished

    model.train()
    return step


def ort_training_step(spec, threads: int):
    """A step through onnxruntime-training 1.19.2's artifacts (the --backend ort-training path), or None
    where that package is missing or refuses the spec. Run in its environment (.venv-ort-training)."""
    import tempfile

    from cnnspec.errors import CnnspecError
    from cnnspec.training.ort_artifacts import ARTIFACTS, export_artifacts, load_ort_training

    scratch = tempfile.TemporaryDirectory(prefix="cnnspec-bench-")  # removed when `step` is gone
    folder = Path(scratch.name)
    try:
        _, api = load_ort_training()
        export_artifacts(spec, folder)
    except CnnspecError as exc:
        print(f"{spec.name}: ort-training not measured: {str(exc).splitlines()[0]}")
        return None
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    module = api.Module(str(folder / ARTIFACTS[0]), state, str(folder / ARTIFACTS[1]), "cpu", options)
    optimizer = api.Optimizer(str(folder / ARTIFACTS[2]), module)
    module.train()
    x, y = batch(spec, __import__("cnnspec.analysis", fromlist=["check"]).check(spec))

    def step() -> None:
        module(x, y)
        optimizer.step()
        module.lazy_reset_grad()

    step.scratch = scratch  # type: ignore[attr-defined]
    return step


def resized(spec, n: int):
    """The spec with its input shape set to n x n (channels kept), validated again."""
    from cnnspec.spec import normalized, spec_from_data

    data = normalized(spec)
    data["input"]["shape"] = [n, n, spec.input_shape[2]]
    data["name"] = f"{spec.name}@{n}"
    return spec_from_data(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=[ROOT / "specs/seed.yaml", ROOT / "specs/vgg32.yaml"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print where cnnspec's step spends its time")
    parser.add_argument(
        "--one-session", action="store_true", help="time the fused step in one session (no shards), as before shards"
    )
    parser.add_argument(
        "--ort-training", action="store_true", help="time onnxruntime-training instead (run in .venv-ort-training)"
    )
    parser.add_argument("--input", type=int, metavar="N", help="override the spec's input to N x N (same channels)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import onnxruntime

    from cnnspec.spec import load_spec

    print(f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if not args.profile and not args.ort_training:
        print(f"{'spec':<10} {'cnnspec img/s':>14} {'pytorch img/s':>14} {'ratio':>6}")
    for path in args.specs:
        spec = load_spec(path)
        if args.input:
            spec = resized(spec, args.input)
        if args.profile:
            profile(spec, args.threads)
            continue
        if args.ort_training:
            step = ort_training_step(spec, args.threads)
            if step is not None:
                rate = max(timed(step, args.seconds) for _ in range(args.rounds))
                print(f"{spec.name:<10} onnxruntime-training {rate:,.0f} img/s", flush=True)
            continue
        steps = [
            cnnspec_step(spec, args.threads, args.one_session, args.device),
            torch_step(spec, args.threads, args.device),
        ]
        best = [0.0, 0.0]
        for _ in range(args.rounds):
            for i, step in enumerate(steps):
                if step is not None:
                    best[i] = max(best[i], timed(step, args.seconds))
        ours, theirs = best
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"

        def rate(value: float) -> str:
            return f"{value:14,.1f}" if value < 100 else f"{value:14,.0f}"

        shown = rate(theirs) if theirs else f"{'(no torch)':>14}"
        print(f"{spec.name:<10} {rate(ours)} {shown} {ratio:>6}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
