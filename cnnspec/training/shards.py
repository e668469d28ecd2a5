"""A CPU step of a net with BatchNormalization as shards side by side: the staged program (staged.py) on K threads
of one process, with the all-reduces between its stages done in memory.

runner.ShardedStepRunner cuts a batch into shards for nets whose samples never meet; BatchNormalization's batch
statistics mix them, so its nets run the staged program instead, whose shards add up their per-channel sums
between stages: the statistics of the whole batch, as in one session (sync BN, as across processes).
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .optimizers import Optimizer
from .staged import LocalComm, StagedProgram, StagedStepRunner


class ShardGroup:
    """K shards of one batch in one process, each on its own thread: an all-reduce is two barriers around a sum
    of the K buffers in shard order (the same bits on every shard). A shard that fails breaks the barrier, so the
    others stop too instead of waiting for ever."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.barrier = threading.Barrier(shards)
        self.posted: list[Any] = [None] * shards


class ThreadComm(LocalComm):
    """staged.Comm for shard `rank` of a ShardGroup (CPU, numpy buffers)."""

    def __init__(self, group: ShardGroup, rank: int) -> None:
        self.group, self.rank, self.world = group, rank, group.shards

    def all_reduce(self, buffer: np.ndarray) -> None:
        group = self.group
        group.posted[self.rank] = buffer
        group.barrier.wait()
        total = group.posted[0].copy()
        for other in group.posted[1:]:
            total += other
        group.barrier.wait()  # every shard has read every buffer: now each may overwrite its own
        buffer[:] = total


class ShardedStagedRunner:
    """A CPU step of a net with BatchNormalization as shards side by side (runner.ShardedStepRunner's idea for
    nets that mix the batch): K shards run the staged program on threads, their batch statistics summed between
    stages (sync BN, as across processes), then one update on the summed gradients. Same inputs and K: the same
    bits (sums in shard order); the rounding depends on K, which comes from the thread count."""

    def __init__(self, staged: StagedProgram, optimizer: Optimizer, shards: int, threads: int) -> None:
        self.group, self.shards = ShardGroup(shards), shards
        per = max(1, threads // shards)
        self.workers = [
            StagedStepRunner(
                staged, optimizer, ThreadComm(self.group, k), per, update_threads=threads if k == 0 else None
            )
            for k in range(shards)
        ]
        self.program, self.state_names = staged.program, self.workers[0].state_names
        self._pool = ThreadPoolExecutor(shards - 1, thread_name_prefix="cnnspec-shard")
        weakref.finalize(self, self._pool.shutdown, wait=False)

    def load(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        lead = self.workers[0]
        lead.load(params, state)
        for worker in self.workers[1:]:
            worker.values = lead.values  # one dict: the update below replaces its entries for every shard
            worker.new_stat_buffers()  # each shard writes the (equal) new statistics into its own

    def _gradients(self, worker: StagedStepRunner, x, y, masks) -> dict[str, Any]:
        try:
            return worker.gradients(x, y, masks)
        except BaseException:
            self.group.barrier.abort()
            raise

    def step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, masks: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        lead, rest = self.workers[0], self.workers[1:]
        pending = [self._pool.submit(self._gradients, w, x, y, masks) for w in rest]
        produced = self._gradients(lead, x, y, masks)
        for job in pending:
            job.result()
        for worker in rest:  # the gradients' sum, in shard order
            lead._flat += worker._flat
        lead._apply(lr, step, produced)
        loss, hits = lead._flat[lead._loss_at], lead._flat[lead._loss_at + 1]
        return float(loss), int(round(float(hits)))

    def params(self) -> dict[str, np.ndarray]:
        return self.workers[0].params()

    def state(self) -> dict[str, np.ndarray]:
        return self.workers[0].state()
