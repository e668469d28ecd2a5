"""`cnnspec doctor`: versions and providers as importlib.metadata and onnxruntime report them, a device check
that fails (exit 1) when the device the user asks for cannot run a model, and the reason for each failure."""

from __future__ import annotations

import ctypes
import importlib.metadata as metadata
import json
import os

import onnxruntime as ort
import pytest
from conftest import assert_no_traceback, run_cli

from cnnspec import doctor

CUDA_PRESENT = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def report() -> dict:
    code, stdout, err = run_cli("doctor", "--json")
    assert code == 0, err
    assert_no_traceback(err)
    return json.loads(stdout)


def test_versions_match_the_installed_distributions(report):
    assert report["cnnspec"] == metadata.version("cnnspec")
    for name, version in report["packages"].items():
        assert version == metadata.version(name), name
    assert report["onnxruntime"]["version"] == ort.__version__
    assert report["onnxruntime"]["providers"] == ort.get_available_providers()
    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    listed = {d["name"] for d in report["onnxruntime"]["distributions"]}
    assert listed == {n for n in installed if n.startswith("onnxruntime") and "extensions" not in n}
    for d in report["onnxruntime"]["distributions"]:
        assert d["version"] == metadata.version(d["name"])


def test_the_cpu_really_runs_the_test_model(report):
    cpu = report["devices"]["cpu"]
    assert cpu["ok"] is True and cpu["provider"] == "CPUExecutionProvider" and cpu["reason"] is None


def test_threads_and_extras(report):
    t = report["threads"]
    assert t["logical_cpus"] == os.cpu_count()
    assert t["usable_cpus"] == len(os.sched_getaffinity(0)) == t["train"]
    assert t["train_max_shards"] == min(t["usable_cpus"], 8)
    # the test extra is installed (this run needs it); its packages are listed with what is missing
    assert report["extras"]["test"] == {"installed": True, "missing": []}
    try:
        metadata.version("onnxruntime-gpu")
        gpu_installed = True
    except metadata.PackageNotFoundError:
        gpu_installed = False
    assert report["extras"]["gpu"]["installed"] == gpu_installed


def test_the_human_report_says_the_same(report):
    code, stdout, err = run_cli("doctor")
    assert code == 0, err
    assert stdout.startswith(f"cnnspec {report['cnnspec']}")
    assert "cpu: ok (a test model ran on CPUExecutionProvider" in stdout
    assert f"onnxruntime: {ort.__version__}" in stdout
    assert "\x1b[" not in stdout


@pytest.mark.skipif(CUDA_PRESENT, reason="this onnxruntime has the CUDA provider (see the cuda-marked test)")
def test_device_cuda_without_the_gpu_package_exits_1_and_says_why(report):
    cuda = report["devices"]["cuda"]
    assert cuda["ok"] is False and cuda["reason"] == "no-package"
    assert "onnxruntime-gpu" in cuda["message"]
    code, stdout, err = run_cli("doctor", "--device", "cuda", "--json")
    assert code == 1, err
    assert json.loads(stdout)["devices"]["cuda"]["reason"] == "no-package"  # still one document on stdout


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_PRESENT, reason="needs onnxruntime's CUDAExecutionProvider")
def test_device_cuda_really_runs_on_the_gpu():
    code, stdout, err = run_cli("doctor", "--device", "cuda", "--json")
    cuda = json.loads(stdout)["devices"]["cuda"]
    assert code == 0 and cuda["ok"] and cuda["provider"] == "CUDAExecutionProvider", (cuda, err)


# ---- the reasons, with the library loader replaced -----------------------------------------------------------


def loader(missing: set[str], message: str = "{name}: cannot open shared object file: No such file or directory"):
    def load(name: str):
        base = os.path.basename(name)
        if base in missing:
            raise OSError(message.format(name=base))
        return object()

    return load


def test_no_driver():
    result = doctor.diagnose_cuda("anything", load=loader({doctor.DRIVER_LIBRARY}))
    assert result["ok"] is False and result["reason"] == "no-driver"
    assert doctor.DRIVER_LIBRARY in result["message"]


def test_a_library_named_in_onnxruntimes_error():
    error = (
        "Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared "
        "object file: No such file or directory"
    )
    result = doctor.diagnose_cuda(error, load=loader(set()))
    assert result["reason"] == "library-missing" and result["message"].startswith("libcudnn.so.9 cannot be loaded")


def test_a_library_found_by_loading_the_cuda_provider(tmp_path):
    (tmp_path / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    (tmp_path / "libonnxruntime_providers_shared.so").write_bytes(b"")
    missing = doctor._provider_library_problem(
        loader({"libonnxruntime_providers_cuda.so"}, "libcublasLt.so.12: cannot open shared object file: No such"),
        capi=tmp_path,
    )
    assert missing == "libcublasLt.so.12"


def test_otherwise_onnxruntimes_message():
    result = doctor.diagnose_cuda("CUDA failure 100: no CUDA-capable device is detected", load=loader(set()))
    assert result["reason"] == "cuda-failed" and "no CUDA-capable device" in result["message"]


def test_the_missing_library_pattern_reads_the_real_loaders_message():
    with pytest.raises(OSError) as err:
        ctypes.CDLL("libcnnspec-doctor-test-missing.so.9")
    assert doctor._missing_library(str(err.value)) == "libcnnspec-doctor-test-missing.so.9"


def test_exit_code_only_for_the_device_asked_for():
    broken = {"devices": {"cpu": {"ok": True}, "cuda": {"ok": False}}}
    assert doctor.exit_code(broken, None) == 0
    assert doctor.exit_code(broken, "cpu") == 0
    assert doctor.exit_code(broken, "cuda") == 1


def test_two_onnxruntime_distributions_are_a_warning(monkeypatch):
    real = doctor.onnxruntime_info()
    both = [{"name": "onnxruntime", "version": "1"}, {"name": "onnxruntime-gpu", "version": "1"}]
    two = {**real, "distributions": both}
    monkeypatch.setattr(doctor, "onnxruntime_info", lambda: two)
    warnings = doctor.environment()["warnings"]
    assert len(warnings) == 1 and "onnxruntime and onnxruntime-gpu" in warnings[0]
