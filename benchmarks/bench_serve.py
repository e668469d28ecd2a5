"""`cnnspec serve` under load: requests/s and p50/p99 latency at 1, 8 and 64 concurrent clients, batch 1 and 32.

Starts `cnnspec serve` on the compiled seed net (loopback, a port the OS picks), then for each (clients, batch)
runs a closed-loop load generator: `clients` threads, each with one keep-alive HTTP connection, sending FP32
requests with Triton's binary tensor extension (what tritonclient sends) until the request count or the time
limit is reached, whichever comes first. Counts errors (any non-200). Finally sends 10,000 batch-1 requests from
8 clients and reports the server's RSS before and after.

  python benchmarks/bench_serve.py [--spec specs/seed.yaml] [--requests 2000] [--seconds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serve_helpers import Server  # noqa: E402

from cnnspec.compiler import compile_spec, model_bytes  # noqa: E402
from cnnspec.spec import load_spec  # noqa: E402


def request_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + x.tobytes(), headers


def load(hostport: str, model: str, body: bytes, headers: dict, clients: int, total: int, seconds: float) -> dict:
    """Closed loop: `clients` threads share a budget of `total` requests and a deadline."""
    lock = threading.Lock()
    state = {"left": total, "errors": 0}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(hostport, timeout=120)
        mine = []
        while time.monotonic() < deadline:
            with lock:
                if state["left"] <= 0:
                    break
                state["left"] -= 1
            start = time.perf_counter()
            try:
                conn.request("POST", f"/v2/models/{model}/infer", body, headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(hostport, timeout=120)
            mine.append(time.perf_counter() - start)
            if not ok:
                with lock:
                    state["errors"] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": state["errors"],
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "seed.yaml"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per (clients, batch) at batch 1")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per (clients, batch)")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "seed.onnx"
        model.write_bytes(model_bytes(compile_spec(load_spec(args.spec), seed=0)))
        srv = Server([str(model)])
        try:
            rows = run_all(srv, args)
        finally:
            code = srv.stop()
    doc = {"machine": f"{platform.machine()} x{os.cpu_count()}", "load_avg_start": rows.pop("load"),
           "rows": rows["rows"], "memory": rows["memory"], "server_exit": code}  # fmt: skip
    print(json.dumps(doc, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))


def run_all(srv: Server, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    out = {"load": os.getloadavg(), "rows": []}
    for batch in (1, 32):
        body, headers = request_body(rng.uniform(0, 255, (batch, 1, 28, 28)).astype(np.float32))
        load(srv.hostport, "seed", body, headers, 8, 50, 10)  # warm-up
        for clients in (1, 8, 64):
            total = args.requests if batch == 1 else max(args.requests // 8, clients * 2)
            row = load(srv.hostport, "seed", body, headers, clients, total, args.seconds)
            row.update(batch=batch, images_per_s=row["req_per_s"] * batch)
            print(json.dumps(row), file=sys.stderr)
            out["rows"].append(row)
    body, headers = request_body(rng.uniform(0, 255, (1, 1, 28, 28)).astype(np.float32))
    before = srv.rss_kib()
    mem = load(srv.hostport, "seed", body, headers, 8, args.memory_requests, 3600)
    out["memory"] = {"requests": mem["requests"], "errors": mem["errors"], "rss_before_mib": before / 1024,
                     "rss_after_mib": srv.rss_kib() / 1024}  # fmt: skip
    return out


if __name__ == "__main__":
    main()
