"""Data-parallel `cnnspec train` under torchrun: one process per rank, gradients summed with torch.distributed.

    torchrun --standalone --nproc-per-node 2 -m cnnspec train SPEC --data D -o M.onnx

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1
`cnnspec train` runs here instead of the one-process loop. Every rank loads the same data and draws the same
shuffle and dropout masks (loop.py: keyed on seed, epoch and batch), runs the staged gradients program on its
slice of each global batch (staged.py), and the update program on the all-reduced gradients. Rank 0 alone
reads and writes checkpoints (it broadcasts the start state, so `--resume` works with any number of ranks),
writes the model and metrics, and logs.

torch is the optional extra `cnnspec[distributed]`; this module imports it only inside the functions that
start a process group. gloo on the CPU; NCCL on CUDA, where the all-reduced buffers are torch tensors on the
rank's GPU that onnxruntime reads and writes in place through IOBinding (no host round trip).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnspecError, UsageError
from .loop import Data, Loop, Result, Settings
from .staged import StagedStepRunner, build_staged

TIMEOUT_S = 300
"""How long a rank waits in a collective for the others (CNNSPEC_DIST_TIMEOUT overrides it). A rank that dies
closes its connections, so gloo fails the others at once and torchrun stops the job as soon as one worker
exits; the timeout bounds the wait only for a rank that hangs alive."""
INSTALL = "pip install 'cnnspec[distributed]'"


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world: int
    local_rank: int
    local_world: int


def launch_env() -> LaunchEnv | None:
    """The torchrun variables when this process is one of several ranks; None for a plain run (or a world of 1,
    unless CNNSPEC_DISTRIBUTED=1 asks for the data-parallel path anyway: a check of it on one GPU)."""
    env = os.environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1 and not ("WORLD_SIZE" in env and env.get("CNNSPEC_DISTRIBUTED") == "1"):
            return None
        rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError):
        raise UsageError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers; start data-parallel training "
            "with torchrun --nproc-per-node N -m cnnspec train ..."
        ) from None
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise UsageError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT; start it with torchrun")
    return LaunchEnv(rank, world, local, local_world)


def _torch() -> tuple[Any, Any]:
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise CnnspecError(f"data-parallel training needs torch: {INSTALL}") from None
    return torch, dist


class TorchComm:
    """staged.Comm over torch.distributed: flat float32 tensors on this rank's device, summed in place."""

    def __init__(self, launch: LaunchEnv, device: str) -> None:
        self.torch, self.dist = _torch()
        self.rank, self.world = launch.rank, launch.world
        self.device = ("cuda", launch.local_rank) if device == "cuda" else ("cpu", 0)
        self._where = f"cuda:{launch.local_rank}" if device == "cuda" else "cpu"
        self.step = -1

    def buffer(self, size: int) -> Any:
        buffer = self.torch.zeros(size, dtype=self.torch.float32, device=self._where)
        if self.device[0] == "cuda":  # zeroed before onnxruntime, on its own stream, writes into it
            self.torch.cuda.synchronize()
        return buffer

    def pointer(self, buffer: Any) -> int:
        return buffer.data_ptr()

    def zero(self, buffer: Any) -> None:
        buffer.zero_()

    def all_reduce(self, buffer: Any) -> None:
        try:
            self.dist.all_reduce(buffer)
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise RuntimeError or DistBackendError
            raise lost_peers(self.rank, self.step, exc) from None
        if self.device[0] == "cuda":  # onnxruntime reads the sums next, on its own stream
            self.torch.cuda.current_stream().synchronize()

    def put(self, buffer: Any, index: int, value: float) -> None:
        buffer[index] = value

    def read(self, buffer: Any, start: int, stop: int) -> np.ndarray:
        return buffer[start:stop].cpu().numpy()


def lost_peers(rank: int, step: int, exc: BaseException) -> CnnspecError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return CnnspecError(
        f"rank {rank}: a collective failed at step {step + 1} ({first}); another rank has stopped or died "
        "(torchrun's summary names it); resume from the last checkpoint with --resume"
    )


class RankRunner(StagedStepRunner):
    """The staged runner with the step number kept for error messages and the tests' kill hook."""

    def step(self, x, y, lr: float, step: int, masks: dict[str, np.ndarray]) -> tuple[float, int]:
        self.comm.step = step
        # CNNSPEC_TEST_HOOK=kill_rank<r>_step<s>: rank r SIGKILLs itself before step s (tests only)
        if os.environ.get("CNNSPEC_TEST_HOOK") == f"kill_rank{self.comm.rank}_step{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(x, y, lr, step, masks)


@contextmanager
def process_group(launch: LaunchEnv, device: str) -> Iterator[TorchComm]:
    torch, dist = _torch()
    if device == "cuda":
        torch.cuda.set_device(launch.local_rank)
    try:
        seconds = int(os.environ.get("CNNSPEC_DIST_TIMEOUT", TIMEOUT_S))
    except ValueError:
        raise UsageError("CNNSPEC_DIST_TIMEOUT must be a whole number of seconds") from None
    try:
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(seconds=seconds))
    except Exception as exc:  # noqa: BLE001
        raise CnnspecError(f"rank {launch.rank}: cannot join the other ranks: {exc}") from None
    try:
        yield TorchComm(launch, device)
    finally:
        dist.destroy_process_group()


def train_distributed(
    launch: LaunchEnv,
    spec,
    train: Data,
    val: Data | None,
    settings: Settings,
    *,
    device: str = "cpu",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = False,
    log=None,
    init=None,
    on_epoch=None,
) -> Result:
    """Train on `launch.world` ranks; every rank returns the same result (rank 0 writes the files). As
    trainer.train_model: `init` turns rank 0's fresh weights into the start weights (`--init-from`), and rank 0
    calls `on_epoch` after each epoch (`--plots`)."""
    from ..analysis import check
    from .program import build_eval
    from .runner import Evaluator, cpu_cores
    from .trainer import augmentation_layers

    threads = threads or max(1, cpu_cores() // launch.local_world)
    report = check(spec)
    serial = device == "cpu" and threads == 1
    staged = build_staged(spec, report, settings.optimizer, settings.label_smoothing, device, serial)
    with ExitStack() as stack:
        comm = stack.enter_context(process_group(launch, device))
        runner = RankRunner(staged, settings.optimizer, comm, threads)
        evaluator = Evaluator(build_eval(spec, report, settings.label_smoothing), device, threads, comm.device[1])
        lead = launch.rank == 0
        start = (spec, report, settings, train, staged.program.trainable, init)
        ckpt, state = _shared_start(stack, comm, start, checkpoint_dir, resume, log, lead)
        bar = None
        if progress and lead:
            from .trainer import _progress

            bar = stack.enter_context(_progress())
        loop = Loop(settings, staged.program, runner, evaluator, train, val, state, ckpt, progress=bar,
                    augmentation=augmentation_layers(spec), on_epoch=on_epoch if lead else None)  # fmt: skip
        loop.log = (log or _stderr) if lead else _quiet
        return loop.run()


def _shared_start(stack: ExitStack, comm: TorchComm, start, checkpoint_dir, resume, log, lead):
    """Rank 0 opens the checkpoint folder (lock, --resume, fingerprint) and broadcasts the start state, or its
    error, to every rank; a rank whose spec, settings or data differ from rank 0's (the fingerprint) stops."""
    from ..compiler import initial_params
    from .checkpoints import CheckpointDir, TrainState
    from .trainer import _start_state, fingerprint, fingerprint_parts

    spec, report, settings, train, trainable, init = start
    key, parts = fingerprint(spec, settings, train), fingerprint_parts(spec, settings, train)
    ckpt, message = None, [None]
    if lead:
        try:
            ckpt = stack.enter_context(CheckpointDir(checkpoint_dir)) if checkpoint_dir else None
            state = _start_state(ckpt, resume, key, log or _stderr, parts, settings.epochs)
            if state is None:
                params = initial_params(spec, report, settings.seed)
                params = init(params) if init is not None else params
                state = TrainState(params, settings.optimizer.initial_state({p: params[p] for p in trainable}))
                state.fingerprint, state.seed = key, settings.seed
            state.fingerprint_parts = parts
            message = [("state", state)]
        except CnnspecError as exc:
            message = [("error", str(exc))]
            comm.dist.broadcast_object_list(message, src=0)
            raise
    comm.dist.broadcast_object_list(message, src=0)
    kind, value = message[0]
    if kind == "error":
        raise CnnspecError(f"rank {comm.rank}: rank 0 could not start: {value}")
    if value.fingerprint != key:
        raise CnnspecError(
            f"rank {comm.rank}: its spec, data or settings differ from rank 0's; every rank must train on the "
            "same files with the same options"
        )
    return ckpt, value


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _quiet(line: str) -> None:
    pass
