"""Start-up of the commands a newcomer types first, in a fresh venv: wall time and peak memory of each process.

    python benchmarks/bench_startup.py --venv /tmp/startup-venv [--repeat 15] [--markdown]

The venv is created (`python -m venv` + `pip install <this repo>`, a regular install as a user gets from the
README) when it does not exist. Each command is run `--repeat` times as its own process; the table shows the
fastest and the median wall time (a shared machine only ever adds time) and the peak RSS of the process
(ru_maxrss from wait4, the sandbox child included as its own process, not summed) and the least CPU time
(user + system of the process itself), which a loaded machine inflates far less than the wall time.
The targets (issue 19): `run` on one image < 0.6 s and < 120 MiB, `validate` < 0.3 s.

Which modules a command imports is pinned by tests/test_startup.py; this script only measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"run": (0.6, 120), "validate": (0.3, None)}


def ensure_venv(venv: Path, source: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], check=True)
    return venv / "bin" / "cnnspec"


def timed(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds user + system) of one process (its children not counted)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout to install (default: this one)")
    args = parser.parse_args()
    cli = ensure_venv(args.venv, args.source)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = REPO / "specs" / "seed.yaml"
        subprocess.run([str(cli), "compile", str(spec), "-o", "m.onnx"], cwd=work, check=True, capture_output=True)
        python = str(args.venv / "bin" / "python")
        make_png = "from PIL import Image; Image.new('L', (28, 28), 128).save('one.png')"
        subprocess.run([python, "-c", make_png], cwd=work, check=True)
        commands = {
            "validate": [str(cli), "validate", str(spec)],
            "run": [str(cli), "run", "m.onnx", "one.png"],
            "inspect": [str(cli), "inspect", "m.onnx"],
            "compile": [str(cli), "compile", str(spec), "-o", "m2.onnx"],
        }
        rows = []
        load = os.getloadavg()[0]
        for name, argv in commands.items():
            runs = [timed(argv, work) for _ in range(args.repeat)]
            walls = sorted(w for w, _, _ in runs)
            rss = max(r for _, r, _ in runs)
            cpu = min(c for _, _, c in runs)
            rows.append((name, walls[0], statistics.median(walls), cpu, rss))
    print(f"load average at start: {load:.2f}; {args.repeat} runs each")
    if args.markdown:
        print("| command | best s | median s | best CPU s | peak RSS MiB | target |")
        print("|---|---:|---:|---:|---:|---|")
    for name, best, median, cpu, rss in rows:
        wall_target, rss_target = TARGETS.get(name, (None, None))
        target = " and ".join(
            t for t in (f"< {wall_target} s" if wall_target else "", f"< {rss_target} MiB" if rss_target else "") if t
        )
        if args.markdown:
            print(f"| {name} | {best:.3f} | {median:.3f} | {cpu:.3f} | {rss:.0f} | {target or '-'} |")
        else:
            print(f"{name:10s} best {best:.3f} s  median {median:.3f} s  CPU {cpu:.3f} s  peak {rss:.0f} MiB  {target}")


if __name__ == "__main__":
    main()
