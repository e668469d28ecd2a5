"""Running the train-step program: parameters and optimizer state stay where the session runs.

With IOBinding, the new.<name> outputs of one step are bound as the <name> inputs of the next, so
on CUDA a step moves only the batch (and the two scalars loss/correct back); on the CPU it saves a
copy of every parameter per step.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compiler import model_bytes
from ..sessions import make_session
from .program import CORRECT, INPUT, LABELS, LOSS, LR, STEP, Program, build_shard_update, new, shard_grad, shard_weight

if TYPE_CHECKING:
    from .optimizers import Optimizer


class StepRunner:
    """One train-step session and the device-resident values of its parameters and state."""

    def __init__(self, program: Program, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        if program.serial and threads != 1:
            raise ValueError("a serial train-step program runs with threads=1")
        self.program, self.device = program, device
        self.session = make_session(model_bytes(program.model), device, threads, training=True)
        self.names = program.params + program.state
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._ort = ort
        self._device = ("cuda", 0) if device == "cuda" else ("cpu", 0)
        self.values: dict[str, Any] = {}

    def load(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        """Copy parameters and state to the device (once, at the start or on resume)."""
        kind, index = self._device
        values = params | state
        self.values = {
            n: self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(values[n]), kind, index) for n in self.names
        }

    def step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, masks: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        """One update; returns the batch's mean loss and number of correct predictions."""
        binding = self.session.io_binding()
        for name in self.names:
            binding.bind_ortvalue_input(name, self.values[name])
        feeds = {INPUT: x, LABELS: y, LR: np.asarray(lr, np.float32), STEP: np.asarray(step, np.int64)} | masks
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        kind, index = self._device
        for name in self.outputs:
            if name in (LOSS, CORRECT):
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, kind, index)
        self.session.run_with_iobinding(binding)
        got = dict(zip(self.outputs, binding.get_outputs(), strict=True))
        self.values = {n: got[new(n)] for n in self.names}
        return float(got[LOSS].numpy()), int(got[CORRECT].numpy())

    def arrays(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: np.array(self.values[n].numpy()) for n in names}

    def params(self) -> dict[str, np.ndarray]:
        return self.arrays(self.program.params)

    def state(self) -> dict[str, np.ndarray]:
        return self.arrays(self.program.state)


MIN_SHARD = 8
"""Fewest images per shard: below that the GEMMs shrink until a shard costs more than the core it saves.
Measured on the seed net at batch 64 on 16 cores (img/s): 4 shards x 4 threads 2,868, 8 x 2 3,208, 16 x 1
2,873; at batch 16 on 2 cores two shards of 8 beat one session by 29%."""
MAX_SHARDS = 8


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shard_count(device: str, threads: int | None, batch_size: int, mixes_batch: bool) -> int:
    """How many shards a CPU step's batch is cut into: one per core, each of at least MIN_SHARD images;
    1 (one session, all threads) on CUDA or when a layer mixes the samples of a batch (BatchNormalization)."""
    if device != "cpu" or mixes_batch:
        return 1
    return max(1, min(threads or cpu_cores(), batch_size // MIN_SHARD, MAX_SHARDS))


class ShardedStepRunner:
    """A CPU step as data parallelism: the batch is cut into K contiguous shards whose forward and backward
    (the gradients-only program) run at the same time, each in its own session on its own thread; a
    small update program then takes g = Σ_k (n_k / n)·grad_k and applies the optimizer.

    NOTE: onnxruntime runs a train step's ~300 operators one after another, and many of them (Transpose,
    Col2Im, ConvTranspose's per-image GEMMs, MaxPool with indices) gain little from a second thread: on
    the seed net at batch 64 on 2 cores, two 32-image sessions side by side took 39 ms per step against
    51 ms for one session with 2 threads; onnxruntime's own ORT_PARALLEL executor, given the two halves as
    one graph, did not overlap them (80 ms). Same inputs, same shards: same result, bit for bit; the
    rounding of the gradient's sum depends on K, so K comes from the core count, never from timing.

    Parameters and state live in two sets of buffers, A and B: a step reads one and the update writes
    the other, so every binding is made once and a step binds only the batch and the scalars (binding
    ~100 values per step cost ~1.5 ms of a 42 ms step).
    """

    def __init__(self, gradients: Program, optimizer: Optimizer, shards: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        if gradients.trainable != gradients.params:
            raise ValueError("sharded steps need every parameter trainable (no forward-updated statistics)")
        self.program, self.optimizer, self.shards = gradients, optimizer, shards
        self._ort, self._threads = ort, threads or cpu_cores()
        data = model_bytes(gradients.model)
        per_shard = max(1, self._threads // shards)
        if gradients.serial and per_shard != 1:
            raise ValueError("a serial gradients program runs with one thread per shard")
        self.sessions = [make_session(data, "cpu", per_shard, training=True) for _ in range(shards)]
        self._updates: dict[int, tuple[Any, Program]] = {}
        self.state_names = self._update(shards)[1].state
        self.names = gradients.params + self.state_names
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in gradients.model.graph.input}
        self._outputs = [o.name for o in self.sessions[0].get_outputs()]
        kinds = {name: np.int64 if name == CORRECT else np.float32 for name in self._outputs}
        sizes = {name: shapes.get(name.removeprefix("grad."), []) for name in self._outputs}  # loss, correct: []
        self._results = [{n: self._buffer(sizes[n], kinds[n]) for n in self._outputs} for _ in range(shards)]
        shapes |= {n: shapes[n.split(".", 1)[1]] for n in self.state_names}  # 'm.conv2d.weight': its parameter's
        self._sets = [{n: self._buffer(shapes[n], np.float32) for n in self.names} for _ in range(2)]
        self._current = 0
        self._shard_bindings = [[self._bind_shard(k, side) for k in range(shards)] for side in range(2)]
        self._update_bindings: dict[tuple[int, int], Any] = {}
        self._pool = ThreadPoolExecutor(shards - 1, thread_name_prefix="cnnspec-shard") if shards > 1 else None
        if self._pool is not None:  # its idle threads go with the runner, not at interpreter exit
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def _buffer(self, shape: list[int], dtype: type) -> Any:
        return self._ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype)

    def _update(self, shards: int) -> tuple[Any, Program]:
        """The update session for `shards` shards (the last batch of an epoch may have fewer images than K)."""
        if shards not in self._updates:
            program = build_shard_update(self.program, self.optimizer, shards)
            session = make_session(model_bytes(program.model), "cpu", self._threads, training=True)
            self._updates[shards] = (session, program)
        return self._updates[shards]

    def _bind_shard(self, k: int, side: int) -> Any:
        binding = self.sessions[k].io_binding()
        for name in self.program.params:
            binding.bind_ortvalue_input(name, self._sets[side][name])
        for name in self._outputs:
            binding.bind_ortvalue_output(name, self._results[k][name])
        return binding

    def _update_binding(self, shards: int, side: int) -> Any:
        """Reads parameter set `side` and the first `shards` results, writes the other set."""
        if (shards, side) not in self._update_bindings:
            session, program = self._update(shards)
            binding = session.io_binding()
            for name in program.params + program.state:
                binding.bind_ortvalue_input(name, self._sets[side][name])
                binding.bind_ortvalue_output(new(name), self._sets[1 - side][name])
            for k in range(shards):
                for p in program.trainable:
                    binding.bind_ortvalue_input(shard_grad(k, p), self._results[k][f"grad.{p}"])
            self._update_bindings[(shards, side)] = binding
        return self._update_bindings[(shards, side)]

    def load(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        """Copy parameters and state into the buffers the next step reads."""
        values = params | state
        for name in self.names:
            self._sets[self._current][name].update_inplace(np.ascontiguousarray(values[name], np.float32))

    def _shard(self, k: int, feeds: dict[str, np.ndarray]) -> None:
        binding = self._shard_bindings[self._current][k]
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        self.sessions[k].run_with_iobinding(binding)

    def step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, masks: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        """One update; returns the batch's mean loss and number of correct predictions."""
        n = len(y)
        k = min(self.shards, n)
        cuts = [n * i // k for i in range(k + 1)]
        feeds = [
            {INPUT: x[lo:hi], LABELS: y[lo:hi]} | {m: v[lo:hi] for m, v in masks.items()}
            for lo, hi in zip(cuts, cuts[1:], strict=False)
        ]
        pending = [self._pool.submit(self._shard, i, feeds[i]) for i in range(1, k)] if self._pool else []
        self._shard(0, feeds[0])
        for job in pending:
            job.result()
        weights = [(hi - lo) / n for lo, hi in zip(cuts, cuts[1:], strict=False)]
        binding = self._update_binding(k, self._current)
        for i, weight in enumerate(weights):
            binding.bind_cpu_input(shard_weight(i), np.asarray(weight, np.float32))
        binding.bind_cpu_input(LR, np.asarray(lr, np.float32))
        binding.bind_cpu_input(STEP, np.asarray(step, np.int64))
        self._update(k)[0].run_with_iobinding(binding)
        self._current = 1 - self._current
        losses = [float(self._results[i][LOSS].numpy()) for i in range(k)]
        correct = sum(int(self._results[i][CORRECT].numpy()) for i in range(k))
        return sum(w * loss for w, loss in zip(weights, losses, strict=True)), correct

    def arrays(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: np.array(self._sets[self._current][n].numpy()) for n in names}

    def params(self) -> dict[str, np.ndarray]:
        return self.arrays(self.program.params)

    def state(self) -> dict[str, np.ndarray]:
        return self.arrays(self.state_names)


class Evaluator:
    """Loss and accuracy of the inference forward (running statistics, no dropout) on a data set."""

    def __init__(self, program: Program, device: str = "cpu", threads: int | None = None, device_id: int = 0) -> None:
        self.program = program
        self.session = make_session(model_bytes(program.model), device, threads, training=True, device_id=device_id)

    def __call__(self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int) -> tuple[float, float]:
        total, correct = 0.0, 0
        for start in range(0, len(y), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            loss, hits = self.session.run([LOSS, CORRECT], params | {INPUT: xb, LABELS: yb})
            total += float(loss) * len(yb)
            correct += int(hits)
        return total / len(y), correct / len(y)
