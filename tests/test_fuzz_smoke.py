"""A short run of each atheris harness in fuzz/ (the long run is documented in fuzz/README.md), and a replay
of every saved finding in tests/fixtures/fuzz-regressions/. Skipped only when atheris is not importable.

CNNSPEC_FUZZ_SECONDS sets the time per harness (10 in CI; the three run side by side).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; it needs a libFuzzer build)")

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
REGRESSIONS = Path(__file__).resolve().parent / "fixtures" / "fuzz-regressions"
SECONDS = int(os.environ.get("CNNSPEC_FUZZ_SECONDS", "10"))
HARNESSES = {"spec_loader": "spec", "image_loader": "image", "model_check": "model"}
# NOTE: -timeout is 30 here, not the long run's 5: the three harnesses share a busy CI machine, and the smoke run
# looks for crashes and memory blow-ups, the long run for slow inputs.
FLAGS = ["-rss_limit_mb=1024", "-timeout=30"]


def test_each_harness_runs_clean(tmp_path: Path) -> None:
    procs = {}
    for harness, corpus in HARNESSES.items():
        work = tmp_path / harness
        shutil.copytree(FUZZ / "corpus" / corpus, work / "corpus")  # libFuzzer adds to its corpus: use a copy
        (work / "artifacts").mkdir()
        args = [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), str(work / "corpus"), *FLAGS,
                f"-max_total_time={SECONDS}", f"-artifact_prefix={work / 'artifacts'}/"]  # fmt: skip
        log = open(work / "log", "wb")  # noqa: SIM115 - closed below
        procs[harness] = (subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=work), log, work)
    failures = []
    for harness, (proc, log, work) in procs.items():
        code = proc.wait(timeout=SECONDS * 6 + 60)
        log.close()
        findings = sorted(p.name for p in (work / "artifacts").iterdir())
        if code != 0 or findings:
            tail = (work / "log").read_text(errors="replace")[-3000:]
            failures.append(f"{harness}: exit {code}, findings {findings}\n{tail}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("finding", sorted(REGRESSIONS.glob("*_*-*.bin")), ids=lambda p: p.name)
def test_saved_findings_stay_fixed(finding: Path) -> None:
    harness = finding.name.split("-")[0]
    assert harness in HARNESSES, f"name regression files <harness>-<what>.bin, harness one of {list(HARNESSES)}"
    args = [sys.executable, str(FUZZ / f"fuzz_{harness}.py"), str(finding), *FLAGS]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
