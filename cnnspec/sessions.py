"""onnxruntime sessions and devices: the one place in cnnspec that creates a session.

Below everything that runs a model (sandbox, runtime, the training runners), so those import this and not
each other. Depends on errors only; onnxruntime loads when a function here is first called.
"""

from __future__ import annotations

from typing import Any, Literal

from .errors import ModelError, UsageError

Device = Literal["cpu", "cuda", "auto"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_HINT = "install the GPU build: pip uninstall onnxruntime && pip install onnxruntime-gpu (CUDA 12/13 and cuDNN 9)"


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
            + GPU_HINT
        )
    return device


def make_session(
    model: bytes,
    device: str = "cpu",
    threads: int | None = None,
    config: dict[str, str] | None = None,
    device_id: int = 0,
) -> Any:
    """An onnxruntime session tuned for inference; the only place in cnnspec that creates one.

    ORT_ENABLE_ALL turns on the layout pass (NCHWc blocked Conv kernels on x86) and Conv+activation fusions.
    `device_id` picks the GPU (default 0).
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
    for key, value in (config or {}).items():  # session config entries (training turns off spinning)
        options.add_session_config_entry(key, value)
    providers: list[Any] = [CUDA, CPU] if device == "cuda" else [CPU]
    if device == "cuda" and device_id:  # one GPU per process in data-parallel training (its LOCAL_RANK)
        providers[0] = (CUDA, {"device_id": str(device_id)})
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise ModelError(
            f"CUDA requested but the session could not start on CUDA (check the CUDA libraries); {GPU_HINT}"
        )
    return session


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
