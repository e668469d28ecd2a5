"""Training throughput (images/s) of cnnspec's train step and of whole `cnnspec train` epochs, beside PyTorch eager.

    python benchmarks/bench_training.py [--batch-size 64,256,1024] [--device cpu|cuda] [--seconds 5] [--threads 0]
        [--epoch [--epoch-images 2048]] [--one-session] [--profile] [--input N] [spec ...]
    .venv-ort-training/bin/python benchmarks/bench_training.py --ort-training [--threads 0] [spec ...]

Defaults: seed, vgg32, resnet18_cifar and mobilenet_v2 from specs/, batch 64. Each row (spec, batch size) is
measured in fresh processes, one per framework and round, which also report the row's peak memory (RSS on the
CPU; on CUDA torch's max_memory_allocated and onnxruntime's arena as the drop in free device memory); --epoch adds
a row for whole `cnnspec train` epochs (see epoch_rate) against the same loop in PyTorch. Each step measurement
runs whole steps (forward, loss, backward and the spec's optimizer update) on one fixed random batch after 3
warm-up steps, for at least --seconds, run the way `cnnspec train` runs them (on a multi-core CPU, shards of the
batch side by side when no layer mixes the batch; --one-session: the fused step in one session; --profile: the
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
DEFAULT_SPECS = ["seed", "vgg32", "resnet18_cifar", "mobilenet_v2"]


def timed(step, seconds: float, batch_size: int = BATCH) -> float:
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        step()
        n += 1
    return n * batch_size / (time.perf_counter() - start)


def train_program(spec, device: str = "cpu", serial: bool = False):
    from cnnspec.analysis import check
    from cnnspec.training.program import build_train_step
    from cnnspec.training.trainer import resolve_settings

    report = check(spec)
    settings = resolve_settings(spec)
    smoothing = settings.label_smoothing
    program = build_train_step(spec, report, settings.optimizer, smoothing, device=device, serial=serial)
    return report, settings, program


def profile(spec, threads: int, steps: int = 10, top: int = 15, batch_size: int = BATCH) -> None:
    """Where a train step's time goes: onnxruntime's profiler, summed per operator type, per layer kind and
    operator (a node belongs to the layer its name's scope, before the '/', names; forward and backward alike)
    and per node (ms per step). The profile JSON goes to a temporary folder and is deleted."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort

    from cnnspec.compiler import initial_params, model_bytes
    from cnnspec.sessions import NO_SPINNING
    from cnnspec.training.loop import dropout_masks

    # one thread: the serial formulations, as `cnnspec train --threads 1` and each CPU shard run them
    report, settings, program = train_program(spec, serial=threads == 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.enable_mem_pattern = False  # as sessions.make_session(training=True)
    for key, value in NO_SPINNING.items():
        options.add_session_config_entry(key, value)
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "train-step")
        session = ort.InferenceSession(model_bytes(program.model), options, providers=["CPUExecutionProvider"])
        params = initial_params(spec, report, 0)
        x, y = batch(spec, report, batch_size)
        feeds = params | settings.optimizer.initial_state({p: params[p] for p in program.trainable})
        feeds |= {"input": x, "labels": y, "learning_rate": np.asarray(1e-4, np.float32)}
        feeds |= {"step": np.asarray(0, np.int64)} | dropout_masks(program, 0, 0, 0, batch_size)
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
    print(f"{spec.name}, batch {batch_size}, {threads or 'all'} threads: {sum(by_op.values()):.1f} ms/step in kernels")
    for title, counter in (("operator", by_op), ("layer kind and operator", by_kind), ("node", by_node)):
        print(f"  per {title}:")
        for name, ms in counter.most_common(top):
            print(f"    {name:<40} {ms:7.2f}")


def cnnspec_step(spec, threads: int, one_session: bool = False, device: str = "cpu", batch_size: int = BATCH):
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
        report, settings = check(spec), resolve_settings(spec, batch_size=batch_size)
        program, runner = step_runner(spec, report, settings, device, threads or None)
    params = initial_params(spec, report, 0)
    runner.load(params, settings.optimizer.initial_state({p: params[p] for p in program.trainable}))
    x, y = batch(spec, report, batch_size)
    masks = dropout_masks(program, 0, 0, 0, batch_size)
    counter = iter(range(10**9))
    return lambda: runner.step(x, y, 1e-4, next(counter), masks)


def batch(spec, report, n: int = BATCH):
    rng = np.random.default_rng(0)
    h, w, c = spec.input_shape
    x = rng.uniform(0, 255, (n, c, h, w)).astype(np.float32)
    return x, rng.integers(0, report.output_shape[0], n).astype(np.int64)


def torch_step(spec, threads: int, device: str = "cpu", batch_size: int = BATCH):
    try:
        import torch
    except ImportError:
        return None
    from torch_net import torch_model

    torch.set_num_threads(threads or os.cpu_count() or 1)
    model, optimizer = torch_model(spec)  # the optimizer's state is created lazily: moving the model is fine
    model.to(device)
    x, y = batch(spec, __import__("cnnspec.analysis", fromlist=["check"]).check(spec), batch_size)
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


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def load_row_spec(path: str, input_n: int | None):
    from cnnspec.spec import load_spec

    spec = load_spec(path)
    return resized(spec, input_n) if input_n else spec


def measure(job: dict) -> dict:
    """One (framework, spec, batch) row in a fresh process (multiprocessing spawn), so the peak memory is the
    row's own: on the CPU the peak RSS above the RSS after the imports; on CUDA torch's max_memory_allocated for
    PyTorch and, for onnxruntime (its arena), the drop in free device memory (torch.cuda.mem_get_info)."""
    sys.path.insert(0, str(Path(__file__).parent))
    spec = load_row_spec(job["spec"], job["input"])
    kind, device, n = job["kind"], job["device"], job["batch"]
    if kind == "torch":
        try:
            import torch  # noqa: F401
            import torch_net  # noqa: F401
        except ImportError:
            return {"rate": None, "peak": None}
    import onnxruntime  # noqa: F401

    cuda_free = _cuda_free() if device == "cuda" else None
    base = rss_bytes()
    if kind == "torch":
        step = torch_step(spec, job["threads"], device, n)
    else:
        step = cnnspec_step(spec, job["threads"], job["one_session"], device, n)
    rate = timed(step, job["seconds"], n)
    if device != "cuda":
        return {"rate": rate, "peak": peak_rss_bytes() - base}
    if kind == "torch":
        import torch

        return {"rate": rate, "peak": torch.cuda.max_memory_allocated()}
    after = _cuda_free()
    return {"rate": rate, "peak": None if cuda_free is None or after is None else cuda_free - after}


def _cuda_free() -> int | None:
    try:
        import torch

        return torch.cuda.mem_get_info()[0]
    except Exception:  # noqa: BLE001 - no torch, or no CUDA for it: not measured
        return None


def epoch_rate(job: dict) -> dict:
    """A whole `cnnspec train` epoch as a user waits for it (loading the .npz, shuffling, batching, dropout
    masks, metrics; the second epoch of two, so session start-up is left out), or the same loop in PyTorch:
    np.load, a seeded permutation per epoch, batches sliced from the tensor, the spec's preprocessing scale,
    the step, the loss and hits read back per batch. Returns images/s of epoch 2 and the command's seconds."""
    import contextlib
    import io
    import json
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    spec = load_row_spec(job["spec"], job["input"])
    h, w, c = spec.input_shape
    rng = np.random.default_rng(0)
    count, n = job["images"], job["batch"]
    with tempfile.TemporaryDirectory(prefix="cnnspec-bench-") as tmp:
        folder = Path(tmp)
        data = folder / "data.npz"
        from cnnspec.analysis import check

        classes = check(spec).output_shape[0]
        np.savez(data, x=rng.integers(0, 256, (count, h, w, c), dtype=np.uint8), y=rng.integers(0, classes, count))
        start = time.perf_counter()
        if job["kind"] == "torch":
            seconds = _torch_epochs(spec, data, job, n)
        else:
            from cnnspec.spec import normalized
            from cnnspec.train_command import train_command

            spec_file = folder / "spec.json"
            spec_file.write_text(json.dumps(normalized(spec)))
            with contextlib.redirect_stderr(io.StringIO()):  # the epoch lines
                result = train_command(
                    spec_file, data, folder / "m.onnx", device=job["device"], threads=job["threads"] or None,
                    epochs=2, batch_size=n,
                )  # fmt: skip
            seconds = result.history[-1]["seconds"]
        return {"rate": count / seconds, "command": time.perf_counter() - start}


def _torch_epochs(spec, data: Path, job: dict, n: int) -> float:
    import torch
    from torch_net import torch_model

    torch.set_num_threads(job["threads"] or os.cpu_count() or 1)
    device = job["device"]
    with np.load(data, allow_pickle=False) as npz:
        x = torch.from_numpy(np.ascontiguousarray(npz["x"].transpose(0, 3, 1, 2)))
        y = torch.from_numpy(npz["y"].astype(np.int64))
    pre = spec.preprocess
    scale = pre.scale if pre else 1.0
    mean = torch.tensor(pre.mean if pre else [0.0], device=device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std if pre else [1.0], device=device).view(1, -1, 1, 1)
    model, optimizer = torch_model(spec)
    model.to(device).train()
    loss_fn = torch.nn.CrossEntropyLoss()
    seconds = 0.0
    for epoch in range(2):
        start = time.perf_counter()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        total, hits = 0.0, 0
        for lo in range(0, len(y), n):
            index = order[lo : lo + n]
            xb = (x[index].to(device).float() * scale - mean) / std  # the spec's preprocessing, as cnnspec's graph
            yb = y[index].to(device)
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            hits += int((out.argmax(1) == yb).sum())
        seconds = time.perf_counter() - start
    return seconds


def in_child(function, job: dict) -> dict:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, (job,))


def mib(value) -> str:
    return f"{value / 2**20:,.0f}" if value else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=[str(ROOT / f"specs/{name}.yaml") for name in DEFAULT_SPECS])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", default=str(BATCH), help="comma-separated list, e.g. 64,256,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print where cnnspec's step spends its time")
    parser.add_argument(
        "--one-session", action="store_true", help="time the fused step in one session (no shards), as before shards"
    )
    parser.add_argument(
        "--ort-training", action="store_true", help="time onnxruntime-training instead (run in .venv-ort-training)"
    )
    parser.add_argument("--input", type=int, metavar="N", help="override the spec's input to N x N (same channels)")
    parser.add_argument("--epoch", action="store_true", help="also time whole `cnnspec train` epochs against PyTorch")
    parser.add_argument("--epoch-images", type=int, default=2048, help="synthetic images per --epoch epoch")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_size.split(",")]
    sys.path.insert(0, str(Path(__file__).parent))
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, device {args.device}, threads "
          f"{args.threads or 'all'}, load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    if args.profile or args.ort_training:
        for path in args.specs:
            spec = load_row_spec(path, args.input)
            for n in sizes:
                if args.profile:
                    profile(spec, args.threads, batch_size=n)
                    continue
                step = ort_training_step(spec, args.threads)
                if step is not None:
                    rate = max(timed(step, args.seconds) for _ in range(args.rounds))
                    print(f"{spec.name:<10} onnxruntime-training {rate:,.0f} img/s", flush=True)
        return
    memory = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    print(f"{'spec':<16} {'batch':>5} {'cnnspec img/s':>14} {'pytorch img/s':>14} {'ratio':>6} "
          f"{memory + ' (cnnspec/pytorch)':>30} {'load':>5}", flush=True)  # fmt: skip
    for path in args.specs:
        name = load_row_spec(path, args.input).name
        for n in sizes:
            job = {"spec": str(path), "input": args.input, "batch": n, "threads": args.threads,
                   "device": args.device, "seconds": args.seconds, "one_session": args.one_session}  # fmt: skip
            best, peak = {"cnnspec": 0.0, "torch": 0.0}, {"cnnspec": 0, "torch": 0}
            for _ in range(args.rounds):  # the two alternate, each round in fresh processes
                for kind in ("cnnspec", "torch"):
                    got = in_child(measure, job | {"kind": kind})
                    best[kind] = max(best[kind], got["rate"] or 0.0)
                    peak[kind] = max(peak[kind], got["peak"] or 0)
            print_row(name, n, best, f"{mib(peak['cnnspec'])} / {mib(peak['torch'])}")
            if args.epoch:
                runs = {kind: in_child(epoch_rate, job | {"kind": kind, "images": args.epoch_images})
                        for kind in ("cnnspec", "torch")}  # fmt: skip
                seconds = f"command {runs['cnnspec']['command']:.1f} s / {runs['torch']['command']:.1f} s"
                print_row(f"  epoch ({args.epoch_images})", n, {k: v["rate"] for k, v in runs.items()}, seconds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def print_row(name: str, n: int, rates: dict, extra: str) -> None:
    ours, theirs = rates["cnnspec"], rates["torch"]
    ratio = f"{ours / theirs:.2f}x" if theirs else "-"

    def rate(value: float) -> str:
        return f"{value:14,.1f}" if value < 100 else f"{value:14,.0f}"

    shown = rate(theirs) if theirs else f"{'(no torch)':>14}"
    print(f"{name:<16} {n:>5} {rate(ours)} {shown} {ratio:>6} {extra:>30} {os.getloadavg()[0]:5.2f}", flush=True)


if __name__ == "__main__":
    main()
