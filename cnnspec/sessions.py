"""onnxruntime sessions and devices: the one place in cnnspec that creates a session.

Below everything that runs a model (sandbox, runtime, the training runners), so those import this and not
each other. Depends on errors only; onnxruntime loads when a function here is first called.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from .errors import ModelError, UsageError

Device = Literal["cpu", "cuda", "auto"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# NOTE: a train step is hundreds of operators; onnxruntime's spinning worker threads then lose most of
# the time when another process holds a core (measured here: 2 spinning threads 2x slower than 1).
# Without spinning, idle workers sleep and a busy machine costs little.
NO_SPINNING = {"session.intra_op.allow_spinning": "0"}
GPU_HINT = "install the GPU build: pip uninstall onnxruntime && pip install onnxruntime-gpu (CUDA 12/13 and cuDNN 9)"


def gpu_install_hint(installed=None) -> str:
    """The fix for a missing CUDA provider, from which onnxruntime distributions are installed.

    onnxruntime and onnxruntime-gpu both install the same `onnxruntime` package folder, and cnnspec depends on
    onnxruntime (pip cannot say "one or the other"), so `pip install 'cnnspec[gpu]'` installs both and whichever
    came last owns the folder. With both present, uninstalling the CPU one deletes files the GPU one shares: the
    GPU build must then be reinstalled. `installed(name)` returns a distribution's version or None (tests).
    """
    installed = installed or _installed_version
    cpu, gpu = installed("onnxruntime"), installed("onnxruntime-gpu")
    if gpu and cpu:
        return (
            f"onnxruntime {cpu} (CPU only) and onnxruntime-gpu {gpu} are both installed and share one package "
            "folder; keep only the GPU build: pip uninstall -y onnxruntime && pip install --force-reinstall "
            "--no-deps onnxruntime-gpu"
        )
    if gpu:
        return f"onnxruntime-gpu {gpu} is installed: check that the CUDA 12/13 and cuDNN 9 libraries can be loaded"
    return GPU_HINT


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when onnxruntime has the CUDA provider, else 'cpu'; 'cuda' without it is an error."""
    if device not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--device must be cpu, cuda or auto; got {device!r}")
    providers = sorted(available_providers(), key=lambda p: p != CPU) if device != "cpu" else [CPU]
    if device == "auto":
        return "cuda" if CUDA in providers else "cpu"
    if device == "cuda" and CUDA not in providers:
        raise ModelError(
            f"CUDA requested but CUDAExecutionProvider is not available (available: {', '.join(providers)}); "
            + gpu_install_hint()
        )
    return device


def make_session(
    model: bytes,
    device: str = "cpu",
    threads: int | None = None,
    config: dict[str, str] | None = None,
    cuda_graph: bool = False,
    device_id: int = 0,
    shared_arena: bool = False,
    training: bool = False,
) -> Any:
    """An onnxruntime session tuned for inference; the only place in cnnspec that creates one.

    ORT_ENABLE_ALL turns on the layout pass (NCHWc blocked Conv kernels on x86) and Conv+activation fusions.
    `device_id` picks the GPU (default 0). `shared_arena`: on the CPU, draw from one arena shared by every such
    session of the process (sessions run one after another, like the stages of a train step; see shared_cpu_arena).
    `training`: a train-step session: no spinning threads (NO_SPINNING) and no memory pattern. The pattern (one
    block planned after the first run, on top of what the arena kept from it) doubled a step's peak memory and
    cost time: seed on 2 threads at batch 1024, 2,708 -> 1,440 MiB and +11% img/s without it; at batch 64
    223 -> 142 MiB, +5-8%.
    NOTE: onnxruntime falls back to the CPU with only a log warning when CUDA cannot start, so the providers the
    session really got are checked: `cuda` never silently runs on the CPU.
    """
    import onnxruntime as ort

    device = resolve_device(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0  # 0: one per physical core
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings must not leak into `run --json` pipelines
    if training:
        options.enable_mem_pattern = False
        config = NO_SPINNING | (config or {})
    for key, value in (config or {}).items():  # session config entries
        options.add_session_config_entry(key, value)
    if shared_arena and device == "cpu":
        shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    providers: list[Any] = [CUDA, CPU] if device == "cuda" else [CPU]
    if device == "cuda" and (cuda_graph or device_id):
        # cudagraph.py binds fixed buffers and picks a graph per batch size; data-parallel training puts one
        # process on each GPU (its LOCAL_RANK)
        providers[0] = (CUDA, {**cuda_provider_options(cuda_graph), "device_id": str(device_id)})
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise ModelError(
            f"CUDA requested but the session could not start on CUDA (check the CUDA libraries); {gpu_install_hint()}"
        )
    return session


_shared_arena_lock = threading.Lock()
_shared_arena = False


def shared_cpu_arena() -> None:
    """Register one CPU arena with onnxruntime's environment (once per process) for the sessions that ask for it.

    Each session otherwise has its own arena, which keeps the peak it ever reached: the 25 stage sessions of a
    vgg32 step on 2 shards held 974 MiB at batch 64 against 307 MiB for one session of the whole step. Chunks are
    grown as requested, not to the next power of two, which saved another 8% there.
    """
    global _shared_arena
    import onnxruntime as ort

    with _shared_arena_lock:
        if not _shared_arena:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _shared_arena = True


def cuda_provider_options(cuda_graph: bool) -> dict[str, str]:
    """The CUDA provider's options: CUDA graphs on or off (onnxruntime's `enable_cuda_graph`)."""
    return {"enable_cuda_graph": "1" if cuda_graph else "0"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
