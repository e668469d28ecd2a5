"""Load an untrusted model once in a forked child with memory and time limits before trusting it in-process.

ONNX and PyTorch both leave sandboxing untrusted models to the caller. The pre-checks in modelfile.py refuse
everything outside cnnspec's operator allowlist, but onnxruntime is native code: if loading the model (or running
it once on a zero batch) kills the process with a signal, exhausts memory or hangs, it does so in the child here,
and the user gets one line: "the inference worker crashed (signal 11) while loading the model".

Cost: one fork plus one single-threaded session (about the time of loading the model once more).
"""

from __future__ import annotations

import os
import select
import signal
import time

from .errors import ModelError
from .modelfile import ModelInfo
from .sessions import make_session

TIMEOUT_S = 60.0
MIN_ADDRESS_SPACE = 4 << 30  # on top of what the process already maps (Python, numpy, onnxruntime)
TEST_HOOK = "CNNSPEC_TEST_HOOK"  # "crash_inference_worker": the child kills itself with SIGSEGV (tests only)


class Probe:
    """A model being loaded in a forked child; `wait()` raises ModelError if that went wrong.

    Started before the images are decoded, so the two overlap; this process creates its own session only
    after `wait()` returned.
    """

    def __init__(self, data: bytes, info: ModelInfo, source: str, timeout_s: float = TIMEOUT_S) -> None:
        self.source, self.timeout_s, self.pid = source, timeout_s, 0
        if not hasattr(os, "fork") or os.environ.get("CNNSPEC_NO_SANDBOX") == "1":
            return
        _warm_onnxruntime()
        self.read_fd, write_fd = os.pipe()
        self.started = time.monotonic()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            os.close(self.read_fd)
            _child(data, info, write_fd)
        os.close(write_fd)

    def wait(self) -> None:
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        try:
            message = _read_until_exit(self.read_fd, self.started + self.timeout_s)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise ModelError(f"'{self.source}': loading the model took longer than {self.timeout_s:.0f} s") from None
        finally:
            os.close(self.read_fd)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            raise ModelError(
                f"'{self.source}': the inference worker crashed (signal {sig}) while loading the model "
                f"({signal.Signals(sig).name}: the model is damaged or hostile)"
            )
        if os.WEXITSTATUS(status) != 0:
            raise ModelError(f"'{self.source}': {message or 'the inference worker failed while loading the model'}")


_WARM: list[object] = []


def _warm_onnxruntime() -> None:
    """Pay onnxruntime's one-time start-up (kernel registries: ~35 ms, 10x a small session) once, before the fork.

    The child then inherits it copy-on-write, and so does this process's own session later: the sandbox costs a
    fork and a small session instead of a second cold start. Done with a one-node model built here, never with
    the untrusted one.
    """
    if _WARM:
        return
    import numpy as np

    from .protos import ModelProto, TensorProto

    # Relu(x: float[1]) -> y, written with the protobuf classes: onnx.helper would import all of onnx (~0.65 s).
    model = ModelProto(ir_version=8)
    model.opset_import.add(domain="", version=17)
    model.graph.name = "warm"
    model.graph.node.add(op_type="Relu", input=["x"], output=["y"])
    for values, name in ((model.graph.input, "x"), (model.graph.output, "y")):
        tensor = values.add(name=name).type.tensor_type
        tensor.elem_type = TensorProto.FLOAT
        tensor.shape.dim.add(dim_value=1)
    session = make_session(model.SerializeToString(), "cpu", threads=1)
    session.run(["y"], {"x": np.zeros(1, np.float32)})
    _WARM.append(session)


def probe_model(data: bytes, info: ModelInfo, source: str, timeout_s: float = TIMEOUT_S) -> None:
    """Raise ModelError when the model crashes, hangs or fails to load in a child process; return otherwise."""
    Probe(data, info, source, timeout_s).wait()


def _read_until_exit(fd: int, deadline: float) -> str:
    """Everything the child writes; EOF means it exited (the pipe's only writer closed)."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode("utf-8", "replace").strip()
            chunks.append(chunk)


def _child(data: bytes, info: ModelInfo, write_fd: int) -> None:
    code = 0
    try:
        _quiet_stderr()
        _limit_memory(len(data))
        if os.environ.get(TEST_HOOK) == "crash_inference_worker":
            os.kill(os.getpid(), signal.SIGSEGV)
        import numpy as np

        session = make_session(data, "cpu", threads=1)
        session.run([info.output_name], {info.input_name: np.zeros(info.input_batch(1), np.float32)})
    except MemoryError:
        os.write(write_fd, b"loading the model needs more memory than the limit; refused")
        code = 3
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        os.write(write_fd, str(exc).encode("utf-8", "replace")[:4000])
        code = 3
    os._exit(code)  # no atexit handlers, no flushing of the parent's copied stdio buffers


def _quiet_stderr() -> None:
    """The child reports through the pipe only: no faulthandler dump, no native log lines on the user's terminal."""
    import faulthandler

    faulthandler.disable()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _limit_memory(model_bytes: int) -> None:
    import resource

    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc (not Linux): the timeout still applies
        return
    limit = mapped + max(MIN_ADDRESS_SPACE, 8 * model_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
