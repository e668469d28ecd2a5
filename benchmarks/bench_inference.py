"""Inference speed: cnnspec's ONNX graph vs PyTorch eager vs onnxruntime on torch.onnx's export of the same net.

For every spec in specs/ (or those given), at batch 1, 64 and 256: images/s and p50/p99 latency per call, and
GFLOP/s against the machine's practical fp32 peak (a 4096^3 numpy sgemm). The three runners are measured side by
side, interleaved in rounds, so a change in machine load hits them alike.

  python benchmarks/bench_inference.py                       # all specs, CPU (and CUDA when present)
  python benchmarks/bench_inference.py specs/seed.yaml --seconds 2 --json out.json
  python benchmarks/bench_inference.py --precision specs/seed.yaml specs/resnet18_cifar.yaml   # fp32 vs int8/fp16

PyTorch is optional (not a cnnspec dependency): install it in a separate venv to get the comparison columns,
e.g. `python -m venv --system-site-packages /tmp/tv && /tmp/tv/bin/pip install torch onnxscript`.
The torch network is built from the compiled ONNX graph itself (every Conv/Gemm/BN gets the compiled initializers),
so the two run the very same network and weights; torch.onnx.export of that module gives the "peer" graph.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnspec.analysis import check  # noqa: E402
from cnnspec.compiler import compile_spec, model_bytes  # noqa: E402
from cnnspec.sessions import available_providers, make_session  # noqa: E402
from cnnspec.spec import load_spec  # noqa: E402

BATCHES = (1, 64, 256)


_SGEMM = """
import sys, time, numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
a @ b  # warm-up (BLAS threads, page faults)
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(2 * n**3 / best / 1e9)
"""


def sgemm_peak(n: int = 4096, repeats: int = 5) -> float:
    """Practical fp32 peak in GFLOP/s: the best of a few n^3 numpy matmuls (2 n^3 flops each).

    NOTE: run in a child without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE: some machines set them to dodge bugs of
    older OpenBLAS builds, and they halve a current numpy's sgemm (101 vs 196 GFLOP/s measured here).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run([sys.executable, "-c", _SGEMM, str(n), str(repeats)], env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return float(out.stdout)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- runners: each takes a float32 NCHW batch of raw pixels ----------------------------------------------------


def ort_runner(model: bytes, device: str, threads: int | None):
    session = make_session(model, device, threads)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    if device == "cuda":
        return _cuda_runner(session, name, out)
    return lambda x: session.run([out], {name: x})[0]


def _cuda_runner(session, name: str, out: str):
    import onnxruntime as ort

    def run(x: np.ndarray) -> np.ndarray:
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(out, "cuda", 0)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def torch_module(model: onnx.ModelProto):
    """An eager torch.nn.Module that runs the ONNX graph's nodes with torch ops and the same weights."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}

    def attrs(node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def window(node, a):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        symmetric = pads[:2] == pads[2:]
        return pads, symmetric

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList()
            self.plan = []  # (op, inputs, output, module index or None, attrs)
            for node in model.graph.node:
                a = attrs(node)
                module = self._module(node, a)
                index = None
                if module is not None:
                    self.layers.append(module)
                    index = len(self.layers) - 1
                self.plan.append((node.op_type, list(node.input), node.output[0], index, a))
            for i, v in enumerate(weights.values()):
                self.register_buffer(f"w_{i}", v)
            self.consts = weights

        def _module(self, node, a):
            if node.op_type == "Conv":
                w = weights[node.input[1]]
                pads, sym = window(node, a)
                conv = nn.Conv2d(
                    w.shape[1] * a.get("group", 1), w.shape[0], tuple(w.shape[2:]), tuple(a.get("strides", [1, 1])),
                    (pads[0], pads[1]) if sym else 0, tuple(a.get("dilations", [1, 1])), a.get("group", 1),
                    bias=len(node.input) > 2,
                )  # fmt: skip
                conv.weight.data.copy_(w)
                if len(node.input) > 2:
                    conv.bias.data.copy_(weights[node.input[2]])
                pad = nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])) if not sym else nn.Identity()
                return nn.Sequential(pad, conv)
            if node.op_type == "Gemm":
                w = weights[node.input[1]]
                w = w if a.get("transB", 0) else w.T
                lin = nn.Linear(w.shape[1], w.shape[0], bias=len(node.input) > 2)
                lin.weight.data.copy_(w)
                if len(node.input) > 2:
                    lin.bias.data.copy_(weights[node.input[2]])
                return lin
            if node.op_type == "BatchNormalization":
                scale, bias, mean, var = (weights[n] for n in node.input[1:5])
                bn = nn.BatchNorm2d(len(scale), eps=a.get("epsilon", 1e-5)).eval()
                for name, value in zip(
                    ("weight", "bias", "running_mean", "running_var"), (scale, bias, mean, var), strict=True
                ):
                    getattr(bn, name).data.copy_(value)
                return bn
            return None

        def forward(self, x):
            env = {model.graph.input[0].name: x}
            for op, inputs, output, index, a in self.plan:
                args = [env[i] if i in env else self.consts.get(i) for i in inputs if i]
                env[output] = self.layers[index](args[0]) if index is not None else _apply(op, args, a, F, torch)
            return env[model.graph.output[0].name]

    return Net().eval()


def _apply(op: str, args: list, a: dict, F, torch):
    x = args[0]
    simple = {
        "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Identity": lambda t: t,
        "Dropout": lambda t: t, "GlobalAveragePool": lambda t: F.adaptive_avg_pool2d(t, 1),
        "GlobalMaxPool": lambda t: F.adaptive_max_pool2d(t, 1),
    }  # fmt: skip
    if op in simple:
        return simple[op](x)
    if op in ("Mul", "Add", "Div"):  # Div: the erf Gelu below opset 20 divides by sqrt(2)
        return x * args[1] if op == "Mul" else x + args[1] if op == "Add" else x / args[1]
    if op == "LeakyRelu":
        return F.leaky_relu(x, a.get("alpha", 0.01))
    if op == "Elu":
        return F.elu(x, a.get("alpha", 1.0))
    if op == "Gelu":
        return F.gelu(x, approximate="tanh" if a.get("approximate", b"none") in (b"tanh", "tanh") else "none")
    if op == "Softmax":
        return torch.softmax(x, a.get("axis", -1))
    if op == "Flatten":
        return torch.flatten(x, a.get("axis", 1))
    if op == "Pad":
        p = args[1].tolist()
        return F.pad(x, (p[3], p[7], p[2], p[6]))
    if op in ("MaxPool", "AveragePool"):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        kernel, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
        value = float("-inf") if op == "MaxPool" else 0.0
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]), value=value) if any(pads) else x
        if op == "MaxPool":
            return F.max_pool2d(x, kernel, strides)
        if any(pads):  # count_include_pad=0: divide by the real pixels only
            ones = F.pad(torch.ones_like(x[:1, :1]), (0, 0, 0, 0))
            return F.avg_pool2d(x, kernel, strides) / F.avg_pool2d(ones, kernel, strides)
        return F.avg_pool2d(x, kernel, strides)
    raise NotImplementedError(f"bench: no torch mapping for ONNX op {op}")


def _to(net, device: str):
    """The module and its plain-dict constants (preprocessing scale, mean, std) on `device`."""
    net.to(device)
    net.consts = {k: v.to(device) if hasattr(v, "to") else v for k, v in net.consts.items()}
    return net


def torch_runners(model: onnx.ModelProto, chw, threads: int | None, device: str) -> dict:
    """{'torch eager': fn, 'ort(torch export)': fn}, or {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads or (os.cpu_count() or 1))
    dev = "cuda" if device == "cuda" else "cpu"
    net = _to(torch_module(model), dev)
    out: dict = {}

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            y = net(torch.from_numpy(x).to(dev))
            return y.cpu().numpy()

    out["torch eager"] = eager
    exported = _torch_export(_to(net, "cpu"), chw)
    _to(net, dev)
    if exported is not None:
        out["ort(torch export)"] = ort_runner(exported, device, threads)
        ours, theirs = optimized_ops(model_bytes(model)), optimized_ops(exported)
        same = "identical" if ours == theirs else f"different:\n    cnnspec {ours}\n    export  {theirs}"
        print(f"  {model.graph.name}: optimized graphs (cnnspec vs torch export) {same}")
    return out


def optimized_ops(model: bytes) -> list[str]:
    """The node list onnxruntime actually runs after ORT_ENABLE_ALL (NCHWc, fusions), for comparing two graphs.

    A diagnostic session (it saves its optimized graph to a temp file), not one that runs anything.
    """
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return [f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in graph.node]


def _torch_export(net, chw) -> bytes | None:
    import torch

    buf = io.BytesIO()
    x = torch.zeros((2, *chw))
    try:
        torch.onnx.export(net, (x,), buf, input_names=["input"], output_names=["output"], opset_version=18,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - report and go on without the peer column
        print(f"  torch.onnx.export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return buf.getvalue()


# ---- measuring ---------------------------------------------------------------------------------------------------


def measure(runners: dict, x: np.ndarray, seconds: float, rounds: int = 6) -> dict:
    """Per runner: latencies of single calls, interleaved over `rounds` so load changes hit all runners alike.

    NOTE: torch's OpenMP workers spin for a while after each call and steal cycles from whoever runs next, and
    onnxruntime's pool does the same; alternating the order each round spreads that cost evenly."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for fn in runners.values():
        for _ in range(2):
            fn(x)  # warm-up: allocations, kernel selection
    for r in range(rounds):
        order = list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]  # no runner always goes first
        for name, fn in order:
            deadline = time.perf_counter() + seconds / rounds
            while time.perf_counter() < deadline or len(times[name]) < 3:
                times[name].append(_time(lambda fn=fn: fn(x)))
    return {name: _summary(t, len(x)) for name, t in times.items()}


def _summary(times: list[float], batch: int) -> dict:
    # images/s from the median call, not the mean: on a shared machine a few calls stall for tens of ms when
    # another process takes the core, and the mean would measure the neighbours rather than the graph.
    t = np.asarray(times)
    return {
        "images_per_s": batch / float(np.median(t)),
        "images_per_s_mean": batch * len(t) / t.sum(),
        "p50_ms": float(np.percentile(t, 50) * 1e3),
        "p99_ms": float(np.percentile(t, 99) * 1e3),
        "best_ms": float(t.min() * 1e3),  # the uncontended speed: what the graph does when the cores are free
        "calls": len(t),
    }


def bench_spec(path: Path, device: str, threads: int | None, seconds: float, peak: float) -> list[dict]:
    spec = load_spec(path)
    flops = check(spec).total_flops
    model = compile_spec(spec, seed=0)
    chw = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    runners = {"cnnspec": ort_runner(model_bytes(model), device, threads)}
    runners.update(torch_runners(model, chw, threads, device))
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        x = rng.integers(0, 256, (batch, *chw)).astype(np.float32)
        _agree(runners, x[:8])
        for name, stats in measure(runners, x, seconds).items():
            gflops = stats["images_per_s"] * flops / 1e9
            pct = 100 * gflops / peak if device == "cpu" else None
            rows.append({"spec": spec.name, "device": device, "batch": batch, "runner": name, **stats,
                         "gflop_per_s": gflops, "pct_peak": pct})  # fmt: skip
    return rows


def _agree(runners: dict, x: np.ndarray) -> None:
    """The runners must compute the same function (else the comparison means nothing)."""
    outs = {name: fn(x) for name, fn in runners.items()}
    ref = outs["cnnspec"]
    for name, y in outs.items():
        diff = float(np.abs(y - ref).max())
        if diff > 1e-3:
            raise SystemExit(f"{name} disagrees with cnnspec by {diff:.2e}: the torch mapping is wrong")


def print_table(rows: list[dict]) -> None:
    print(
        f"{'spec':<8} {'dev':<4} {'batch':>5} {'runner':<18} {'img/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'GFLOP/s':>8} {'%peak':>6}"
    )
    for r in rows:
        pct = f"{r['pct_peak']:.0f}" if r["pct_peak"] is not None else "-"
        print(f"{r['spec']:<8} {r['device']:<4} {r['batch']:>5} {r['runner']:<18} {r['images_per_s']:>10.0f} "
              f"{r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['gflop_per_s']:>8.1f} {pct:>6}")  # fmt: skip


def markdown_table(rows: list[dict]) -> str:
    """The RESULTS.md table: cnnspec next to its peer (ORT on torch's export) and torch eager, per spec and batch."""
    by = {(r["spec"], r["device"], r["batch"], r["runner"]): r for r in rows}
    lines = [
        "| spec | device | batch | cnnspec img/s | best / p50 / p99 ms | ORT(torch export) img/s | best / p50 / p99 ms "
        "| torch eager img/s | best / p50 / p99 ms | cnnspec / export (p50; best) | cnnspec % peak (p50; best) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (spec, device, batch, runner), r in by.items():
        if runner != "cnnspec":
            continue
        peer, eager = by.get((spec, device, batch, "ort(torch export)")), by.get((spec, device, batch, "torch eager"))
        cells = [spec, device, str(batch)]
        for x in (r, peer, eager):
            ms = f"{x['best_ms']:.2f} / {x['p50_ms']:.2f} / {x['p99_ms']:.2f}" if x else "-"
            cells += [f"{x['images_per_s']:.0f}", ms] if x else ["-", "-"]
        ratio = f"{peer['p50_ms'] / r['p50_ms']:.2f}; {peer['best_ms'] / r['best_ms']:.2f}" if peer else "-"
        best_pct = r["pct_peak"] * r["p50_ms"] / r["best_ms"] if r["pct_peak"] is not None else None
        cells += [ratio, f"{r['pct_peak']:.0f}%; {best_pct:.0f}%" if best_pct is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- precision: `cnnspec export --to int8|fp16` against fp32 ---------------------------------------------------


def bench_precision(path: Path, device: str, threads: int | None, seconds: float, batch: int) -> dict:
    """fp32 vs int8 (CPU) or fp32 vs fp16 (CUDA) images/s at `batch`, interleaved; model sizes of all three.

    The weights are compile --seed 0 and the int8 calibration is random pixels: throughput and size do not
    depend on what the weights learned (accuracy is the digits table's job)."""
    import tempfile

    from cnnspec.export import export

    spec = load_spec(path)
    model = compile_spec(spec, seed=0)
    chw = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": Path(tmp) / "fp32.onnx", "int8": Path(tmp) / "int8.onnx", "fp16": Path(tmp) / "fp16.onnx"}
        files["fp32"].write_bytes(model_bytes(model))
        c, h, w = chw
        np.savez(Path(tmp) / "cal.npz", x=rng.integers(0, 256, (128, h, w, c)).astype(np.uint8),
                 y=rng.integers(0, classes, 128))  # fmt: skip
        started = time.perf_counter()
        # on a GPU machine only the int8 size is wanted: calibrate (on the CPU) briefly
        samples = 128 if device == "cpu" else 16
        export(files["fp32"], "int8", files["int8"], calibration=Path(tmp) / "cal.npz", samples=samples)
        int8_s = time.perf_counter() - started
        export(files["fp32"], "fp16", files["fp16"])
        sizes = {k: f.stat().st_size for k, f in files.items()}
        other = "int8" if device == "cpu" else "fp16"
        runners = {k: ort_runner(files[k].read_bytes(), device, threads) for k in ("fp32", other)}
        graphs = cuda_graph_latency(files["fp32"].read_bytes(), model, seconds) if device == "cuda" else None
    x = rng.integers(0, 256, (batch, *chw)).astype(np.float32)
    stats = measure(runners, x, seconds)
    return {"cuda_graph_batch1": graphs,
            "spec": spec.name, "device": device, "batch": batch, "other": other, "sizes": sizes,
            "export_int8_s": int8_s, "fp32": stats["fp32"], other: stats[other],
            "speedup": stats[other]["images_per_s"] / stats["fp32"]["images_per_s"]}  # fmt: skip


def cuda_graph_latency(data: bytes, model: onnx.ModelProto, seconds: float) -> dict:
    """Batch-1 latency on CUDA with and without CUDA graphs (cnnspec.cudagraph, as `run --device cuda` uses)."""
    from cnnspec.cudagraph import CudaRunner

    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    runners = {f"graphs={g}": CudaRunner(data, "input", "output", classes, use_graph=g).run for g in (True, False)}
    chw = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    stats = measure(runners, np.zeros((1, *chw), np.float32), seconds)
    return {k: v["p50_ms"] for k, v in stats.items()} | {
        "ratio": stats["graphs=True"]["p50_ms"] / stats["graphs=False"]["p50_ms"]
    }


def digits_accuracy(threads: int | None) -> list[dict]:
    """Train specs/digits.yaml and specs/digits_residual.yaml on sklearn's digits (their own training settings),
    export int8 (each calibration method, 512 samples of train) and fp16, score all on the held-out test split."""
    import contextlib
    import tempfile

    sys.path.insert(0, str(ROOT / "examples"))
    from digits_data import write_digits

    from cnnspec.export import export
    from cnnspec.train_command import train_command

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        with contextlib.redirect_stdout(io.StringIO()):
            write_digits(data, n_images=0)
        for name in ("digits", "digits_residual"):
            fp32 = data / f"{name}.onnx"
            with contextlib.redirect_stderr(io.StringIO()):
                train_command(ROOT / "specs" / f"{name}.yaml", data / "train.npz", fp32, threads=threads)
            jobs = [("int8", m, {"calibration": data / "train.npz", "method": m}) for m in ("minmax", "percentile",
                    "entropy")] + [("fp16", "-", {})]  # fmt: skip
            for to, method, options in jobs:
                out = data / f"{name}-{to}-{method}.onnx"
                r = export(fp32, to, out, eval_data=data / "test.npz", max_drop=100, threads=threads, **options)
                a = r.accuracy
                rows.append({"spec": name, "precision": to, "method": method, "n": a.n, "fp32": a.fp32,
                             "exported": a.exported, "agreement": a.agreement, "drop": a.drop,
                             "bytes_fp32": fp32.stat().st_size, "bytes": r.size})  # fmt: skip
    return rows


def precision_markdown(speed: list[dict], accuracy: list[dict]) -> str:
    lines = ["| spec | device | batch | fp32 img/s (p50) | int8/fp16 img/s (p50) | speed-up | fp32 / fp16 / int8 bytes "
             "| int8 export s |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in speed:
        sz = r["sizes"]
        lines.append(f"| {r['spec']} | {r['device']} | {r['batch']} | {r['fp32']['images_per_s']:.0f} | "
                     f"{r['other']} {r[r['other']]['images_per_s']:.0f} | {r['speedup']:.2f}x | "
                     f"{sz['fp32']:,} / {sz['fp16']:,} / {sz['int8']:,} | {r['export_int8_s']:.1f} |")  # fmt: skip
    if accuracy:
        lines += ["", "| spec | precision | calibration | n | fp32 acc | exported acc | agreement | drop (points) "
                  "| bytes (fp32 -> exported) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in accuracy:
            lines.append(f"| {r['spec']} | {r['precision']} | {r['method']} | {r['n']} | {100 * r['fp32']:.2f}% | "
                         f"{100 * r['exported']:.2f}% | {100 * r['agreement']:.2f}% | {r['drop']:.2f} | "
                         f"{r['bytes_fp32']:,} -> {r['bytes']:,} |")  # fmt: skip
    return "\n".join(lines)


def main_precision(args) -> None:
    specs = args.specs or [ROOT / "specs/seed.yaml", ROOT / "specs/resnet18_cifar.yaml"]
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in available_providers() else [])
    devices = devices if args.device == "all" else [args.device]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    speed = [bench_precision(p, d, args.threads, args.seconds, args.batch if d == "cpu" else args.batch_cuda)
             for d in devices for p in specs]  # fmt: skip
    accuracy = [] if args.no_accuracy else digits_accuracy(args.threads)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for r in speed:
        if r["cuda_graph_batch1"]:
            print(f"{r['spec']} CUDA batch-1 p50 ms with/without graphs: {r['cuda_graph_batch1']}")
    print(precision_markdown(speed, accuracy))
    if args.json:
        args.json.write_text(json.dumps({"speed": speed, "accuracy": accuracy}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, help="spec files (default: specs/*.yaml)")
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per runner and batch size")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--markdown", action="store_true", help="also print the RESULTS.md table")
    parser.add_argument("--precision", action="store_true", help="fp32 vs int8 (CPU) / fp16 (CUDA), sizes, digits")
    parser.add_argument("--batch", type=int, default=64, help="--precision: CPU batch size")
    parser.add_argument("--batch-cuda", type=int, default=256, help="--precision: CUDA batch size")
    parser.add_argument("--no-accuracy", action="store_true", help="--precision: skip the digits accuracy table")
    args = parser.parse_args()
    if args.precision:
        return main_precision(args)
    specs = args.specs or sorted((ROOT / "specs").glob("*.yaml"))
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in available_providers() else [])
    devices = devices if args.device == "all" else [args.device]
    peak = sgemm_peak()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; "
          f"numpy sgemm 4096^3 peak {peak:.0f} GFLOP/s")  # fmt: skip
    rows = [
        row
        for device in devices
        for path in specs
        for row in bench_spec(path, device, args.threads, args.seconds, peak)
    ]
    print_table(rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.markdown:
        print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
