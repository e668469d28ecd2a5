"""`cnnspec doctor`: what this installation can do, checked rather than assumed.

Versions (cnnspec, Python, onnx, which onnxruntime distribution, numpy, Pillow, ...), the execution providers,
and for each device whether a tiny model really runs there: the CUDA check creates a session with the CUDA
provider alone and CPU fallback disabled, then compares the output with numpy, because onnxruntime otherwise
falls back to the CPU with only a log line. When CUDA cannot work it says why: no GPU package, no driver, or a
CUDA/cuDNN library that cannot be loaded. Also the CPU cores and threads cnnspec will use, and the extras.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PACKAGES = ("onnx", "numpy", "Pillow", "pydantic", "PyYAML", "typer", "rich")
GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
DRIVER_LIBRARY = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"
_MISSING = re.compile(r"([\w.+-]+\.(?:so(?:\.[\w.]+)?|dll|dylib))\s*:\s*cannot open shared object file", re.I)


def environment() -> dict[str, Any]:
    """The whole report, as data (`doctor --json` prints it)."""
    ort_info = onnxruntime_info()
    report: dict[str, Any] = {
        "cnnspec": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "onnxruntime": ort_info,
        "devices": {"cpu": probe("cpu"), "cuda": probe("cuda")},
        "threads": threads(),
        "extras": extras(),
        "warnings": [],
    }
    names = [d["name"] for d in ort_info["distributions"]]
    if len(names) > 1:
        report["warnings"].append(
            f"{' and '.join(names)} are all installed and share the `onnxruntime` module, so one overwrote the "
            f"other's files; keep one: pip uninstall -y {' '.join(names)} && pip install <the one you want>"
        )
    return report


def exit_code(report: dict[str, Any], device: str | None) -> int:
    """0 unless the device the user asked about cannot run a model."""
    return 1 if device is not None and not report["devices"][device]["ok"] else 0


# ---- versions -----------------------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def onnxruntime_info() -> dict[str, Any]:
    """The installed onnxruntime distributions (onnxruntime, onnxruntime-gpu, onnxruntime-training, ...), the
    version and location of the module they provide, and its execution providers."""
    distributions = sorted(
        {
            (dist.metadata["Name"].lower(), dist.version)
            for dist in metadata.distributions()
            if (dist.metadata["Name"] or "").lower().startswith(("onnxruntime", "ort-nightly", "ort_nightly"))
            and "extensions" not in (dist.metadata["Name"] or "").lower()
        }
    )
    info: dict[str, Any] = {"distributions": [{"name": n, "version": v} for n, v in distributions]}
    try:
        import onnxruntime as ort

        path = str(Path(ort.__file__).parent)
        info.update(version=ort.__version__, path=path, providers=ort.get_available_providers())
    except Exception as exc:  # noqa: BLE001 - a broken install is what doctor reports, not a crash
        info.update(version=None, path=None, providers=[], error=f"import onnxruntime failed: {_first_line(exc)}")
    return info


def extras() -> dict[str, dict[str, Any]]:
    """cnnspec's optional extras and whether each one's packages are installed (versions not compared)."""
    wanted: dict[str, list[str]] = {}
    try:
        requirements = metadata.requires("cnnspec") or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        requirements = []
    for requirement in requirements:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if extra and name and name.group(1).lower() != "cnnspec":  # `cnnspec[viz]` inside test: listed under viz
            if _applies(requirement):
                wanted.setdefault(extra.group(1), []).append(name.group(1))
    found = {}
    for extra, names in sorted(wanted.items()):
        missing = [n for n in names if _version(n) is None]
        found[extra] = {"installed": not missing, "missing": missing}
    return found


def _applies(requirement: str) -> bool:
    """A requirement's environment markers, other than the extra, hold here (atheris is Linux x86_64 only)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging is almost always there (pip vendors its own copy); without it, count it
        return True
    marker = Requirement(requirement).marker
    if marker is None:
        return True
    extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
    return marker.evaluate({"extra": extra.group(1) if extra else ""})


# ---- devices -----------------------------------------------------------------------------------------------


def tiny_model() -> tuple[bytes, Any, Any]:
    """A 1x1 convolution over a [1, 2, 3, 3] input, its input and the output numpy computes."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[[[0.5]], [[-2.0]]], [[[1.0]], [[0.25]]]], dtype=np.float32)  # [2 out, 2 in, 1, 1]
    x = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "cnnspec-doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    expected = np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x)
    return model.SerializeToString(), x, expected


def probe(device: str) -> dict[str, Any]:
    """Does a model really run on `device`? {ok, provider, seconds, reason, detail}."""
    provider = CUDA if device == "cuda" else CPU
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        return _failed("no-package", f"onnxruntime cannot be imported: {_first_line(exc)}")
    if provider not in ort.get_available_providers():
        return _failed(
            "no-package",
            f"the installed onnxruntime has no {provider} (providers: {', '.join(ort.get_available_providers())}); "
            f"for CUDA install the GPU build: {GPU_INSTALL}",
        )
    try:
        model, x, expected = tiny_model()
    except Exception as exc:  # noqa: BLE001 - a broken onnx or numpy is reported, not raised
        return _failed("failed", f"the test model cannot be built: {_first_line(exc)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if device == "cuda":  # every node on CUDA or no session at all: no silent CPU fallback
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=[provider])
        used = session.get_providers()
        if used[0] != provider:
            raise RuntimeError(f"the session runs on {', '.join(used)}, not {provider}")
        y = session.run(None, {"x": x})[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        return diagnose_cuda(str(exc)) if device == "cuda" else _failed("failed", _first_line(exc))
    import numpy as np

    if not np.allclose(y, expected, rtol=1e-4, atol=1e-4):
        return _failed("wrong-result", f"the test model's output on {provider} differs from numpy's")
    seconds = round(time.perf_counter() - started, 4)
    return {"ok": True, "provider": provider, "seconds": seconds, "reason": None, "message": None, "detail": None}


def diagnose_cuda(error: str, load: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Why a CUDA session failed: no driver, a library that cannot be loaded, or onnxruntime's own message.

    `load` opens a shared library (ctypes.CDLL; tests pass a fake)."""
    load = load or _load_library
    try:
        load(DRIVER_LIBRARY)
    except OSError as exc:
        return _failed(
            "no-driver",
            f"no NVIDIA driver: {DRIVER_LIBRARY} cannot be loaded ({_first_line(exc)}); install the driver, or in a "
            "container expose the GPU (docker run --gpus all)",
        )
    missing = _missing_library(error) or _provider_library_problem(load)
    if missing:
        return _failed(
            "library-missing",
            f"{missing} cannot be loaded: onnxruntime-gpu needs CUDA 12 and cuDNN 9 "
            "(pip install 'onnxruntime-gpu[cuda,cudnn]' brings both, or the system's CUDA toolkit and cuDNN)",
            detail=_first_line(error),
        )
    return _failed("cuda-failed", f"onnxruntime could not run the test model on CUDA: {_first_line(error)}")


def _missing_library(text: str) -> str | None:
    match = _MISSING.search(text)
    return match.group(1) if match else None


def _provider_library_problem(load: Callable[[str], Any], capi: Path | None = None) -> str | None:
    """dlopen onnxruntime's CUDA provider library: the loader names the first dependency it cannot find."""
    if capi is None:
        try:
            import onnxruntime as ort
        except Exception:  # noqa: BLE001
            return None
        capi = Path(ort.__file__).parent / "capi"
    shared, cuda = capi / "libonnxruntime_providers_shared.so", capi / "libonnxruntime_providers_cuda.so"
    if not cuda.exists():
        return None
    try:
        if shared.exists():
            load(str(shared))
        load(str(cuda))
    except OSError as exc:
        return _missing_library(str(exc)) or _first_line(exc)
    return None


def _load_library(name: str) -> Any:
    import ctypes

    return ctypes.CDLL(name, mode=getattr(ctypes, "RTLD_GLOBAL", 0))


def _failed(reason: str, message: str, detail: str | None = None) -> dict[str, Any]:
    return {"ok": False, "provider": None, "seconds": None, "reason": reason, "message": message, "detail": detail}


def _first_line(exc: BaseException | str) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__


# ---- threads -----------------------------------------------------------------------------------------------


def threads() -> dict[str, Any]:
    """The CPUs this process may use and the threads cnnspec takes by default (`--threads N` overrides both)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    physical = physical_cores()
    return {
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical,
        # make_session leaves intra_op_num_threads at 0: onnxruntime's default, one thread per physical core
        "run": min(physical, usable) if physical else usable,
        # training cuts each batch into one shard per usable CPU (at most 8, each of at least 8 images)
        "train": usable,
        "train_max_shards": min(usable, 8),
    }


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo; None where that file does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[^\n]*\n(?:[^\n]+\n)*?core id\s*:\s*(\d+)", text))
    return len(cores) or None


# ---- the human report --------------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    ort_info, t = report["onnxruntime"], report["threads"]
    dists = ", ".join(f"{d['name']} {d['version']}" for d in ort_info["distributions"]) or "none installed"
    packages = ", ".join(f"{n} {v or '(missing)'}" for n, v in report["packages"].items())
    lines = [
        f"cnnspec {report['cnnspec']}  (Python {report['python']['version']}, {report['platform']})",
        f"packages: {packages}",
        f"onnxruntime: {ort_info.get('version') or 'not importable'} from {dists}",
        f"providers: {', '.join(ort_info['providers']) or '-'}",
    ]
    if ort_info.get("error"):
        lines.append(f"  {ort_info['error']}")
    for device, result in report["devices"].items():
        if result["ok"]:
            lines.append(f"{device}: ok (a test model ran on {result['provider']}, {1000 * result['seconds']:.0f} ms)")
        else:
            lines.append(f"{device}: cannot run ({result['reason']}): {result['message']}")
    physical = f", {t['physical_cores']} physical core(s)" if t["physical_cores"] else ""
    lines.append(
        f"threads: {t['usable_cpus']} usable CPU(s) of {t['logical_cpus']}{physical}; run/evaluate use "
        f"{t['run']}, train {t['train']} (up to {t['train_max_shards']} shards); --threads N overrides"
    )
    extras_text = ", ".join(
        f"{name} {'yes' if e['installed'] else 'no (missing ' + ', '.join(e['missing']) + ')'}"
        for name, e in report["extras"].items()
    )
    lines.append(f"extras: {extras_text or '-'}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
