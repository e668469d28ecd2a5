"""Data-parallel train steps: the gradients program cut into stages at its all-reduces, and the runner of one rank.

Every rank runs the gradients-only train step on its slice of the global batch. Two things in that step need
the whole batch: the loss's mean (each rank adds Σ_local ℓ / N_global, so the cotangents are those of the global
loss and everything downstream simply adds up) and BatchNormalization's batch statistics (sync BN: per-channel
sums of x, of (x - mean)², and in the backward of dy and dy ⊙ x̂, all-reduced; see BatchNormalization).

The program is built with a SyncPoints object on its GraphBuilder: each all-reduce records the local tensors it
sums and returns new graph inputs standing for the totals. split_stages() then cuts the graph: a node belongs to
stage k when the newest total it depends on (through any input) is that of all-reduce k - 1, so stage k ends with
everything all-reduce k needs. A rank runs stage 0, all-reduces, runs stage 1, ... and finally all-reduces the
parameter gradients (with the loss and the number of correct predictions) in one flat buffer, and every rank runs
the same optimizer update program on the same sums: the weights stay identical on all ranks.

Nothing here imports torch: the collective is a `Comm` (distributed.py's torch.distributed one, or LocalComm,
which is one rank on its own) that owns flat float32 buffers the sessions read and write through their
pointers (IOBinding), so on CUDA the sums stay on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..builder import make_model
from ..compiler import model_bytes
from ..sessions import make_session
from .optimizers import Optimizer
from .program import (
    CORRECT,
    INPUT,
    LABELS,
    LOSS,
    LR,
    STEP,
    TRAIN_OPSET,
    Program,
    build_shard_update,
    build_train_step,
    new,
    shard_grad,
    shard_weight,
)

GLOBAL_BATCH = "sync.batch"
"""Graph input: the number of images in the global batch (float scalar), the divisor of the loss's mean."""


@dataclass
class Collective:
    """One all-reduce: the local tensors (each of `shape`) and the graph inputs that receive their totals."""

    local: list[str]
    total: list[str]
    shape: tuple[int, ...]
    after: int = 0
    """How many nodes the builder had emitted when the all-reduce was asked for (see split_stages)."""

    @property
    def size(self) -> int:
        return len(self.local) * math.prod(self.shape)


@dataclass
class SyncPoints:
    """GraphBuilder.sync while a data-parallel program is built (see BatchNormalization and cross_entropy)."""

    collectives: list[Collective] = field(default_factory=list)

    def count(self, g: Any, scope: str, per_sample: int) -> str:
        """How many values a per-channel statistic sums over the global batch: N_global · per_sample."""
        if per_sample == 1:
            return GLOBAL_BATCH
        return g.op("Mul", [GLOBAL_BATCH, g.constant(scope, float(per_sample))], scope)

    def all_reduce(self, g: Any, tensors: list[str], shape: tuple[int, ...], scope: str) -> list[str]:
        """Names standing for Σ over the ranks of each tensor (all of `shape`)."""
        index = len(self.collectives)
        totals = [f"sync.{index}.{i}.{scope}" for i in range(len(tensors))]
        self.collectives.append(Collective(list(tensors), totals, tuple(shape), after=len(g.nodes)))
        return totals

    def inputs(self) -> list[onnx.ValueInfoProto]:
        value = helper.make_tensor_value_info
        infos = [value(GLOBAL_BATCH, TensorProto.FLOAT, [])]
        return infos + [value(t, TensorProto.FLOAT, list(c.shape)) for c in self.collectives for t in c.total]


@dataclass
class Stage:
    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]


@dataclass
class StagedProgram:
    program: Program
    """The whole gradients-only program (its masks, params and trainable lists are the stages')."""
    sync: SyncPoints
    stages: list[Stage]


def build_staged(spec, report, optimizer: Optimizer, smoothing: float, device: str, serial: bool) -> StagedProgram:
    sync = SyncPoints()
    program = build_train_step(
        spec, report, optimizer, smoothing, gradients_only=True, device=device, serial=serial, sync=sync
    )
    return StagedProgram(program, sync, split_stages(program.model, sync))


def split_stages(model: onnx.ModelProto, sync: SyncPoints) -> list[Stage]:
    """Cut `model` into len(sync.collectives) + 1 graphs run one after another (see the module's docstring)."""
    graph = model.graph
    stage_of = {t: j + 1 for j, c in enumerate(sync.collectives) for t in c.total}
    node_stage, passed = [], 0
    for i, node in enumerate(graph.node):  # the builder appends nodes in a topological order
        while passed < len(sync.collectives) and sync.collectives[passed].after <= i:
            passed += 1
        # NOTE: no earlier than the builder emitted it: a backward node that reads only forward values (the
        # strided slices of a layer's input for dL/dW) would otherwise run in an early stage and its outputs
        # be handed on to the end of the forward pass: nine 8 MiB slices per resnet18_cifar layer-1 conv
        k = max(passed, *(stage_of.get(t, 0) for t in node.input if t))
        node_stage.append(k)
        stage_of.update({t: k for t in node.output})
    for j, c in enumerate(sync.collectives):
        late = [t for t in c.local if stage_of[t] > j]
        if late:
            raise ValueError(f"all-reduce {j} needs {late}, which depends on a later all-reduce")
    # a local sum's buffer holds the total after its all-reduce: only its own stage may read the local value
    local = {t for c in sync.collectives for t in c.local}
    for node, k in zip(graph.node, node_stage, strict=True):
        if any(t in local and stage_of[t] < k for t in node.input):
            raise ValueError(f"{node.name} reads a local sum after its all-reduce")
    finals = {o.name for o in graph.output}
    wanted: dict[int, set[str]] = {}  # tensors a stage must hand on: read later, graph outputs, all-reduced
    for node, k in zip(graph.node, node_stage, strict=True):
        for t in node.input:
            if t and stage_of.get(t, 0) < k:
                wanted.setdefault(stage_of.get(t, 0), set()).add(t)
    for t in finals:
        wanted.setdefault(stage_of[t], set()).add(t)
    for c in sync.collectives:
        for t in c.local:
            wanted.setdefault(stage_of[t], set()).add(t)
    types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    inits = {i.name: i for i in graph.initializer}
    stages = []
    for k in range(len(sync.collectives) + 1):
        nodes = [n for n, s in zip(graph.node, node_stage, strict=True) if s == k]
        produced = {t for n in nodes for t in n.output}
        used = list(dict.fromkeys(t for n in nodes for t in n.input if t and t not in produced))
        inputs = [t for t in used if t not in inits]
        outputs = sorted(t for t in wanted.get(k, set()) if t in produced)
        missing = [t for t in inputs + outputs if t not in types]
        if missing:
            raise ValueError(f"stage {k}: no type for {missing[:5]}")
        sub = helper.make_graph(
            nodes, f"{graph.name}-stage{k}", [types[t] for t in inputs], [types[t] for t in outputs],
            initializer=[inits[t] for t in used if t in inits],
        )  # fmt: skip
        stages.append(Stage(make_model(sub, TRAIN_OPSET), inputs, outputs))
    return stages


class Comm(Protocol):
    """The collective a StagedStepRunner uses: flat float32 buffers and an in-place sum over the ranks."""

    rank: int
    world: int
    device: tuple[str, int]

    def buffer(self, size: int) -> Any: ...
    def pointer(self, buffer: Any) -> int: ...
    def zero(self, buffer: Any) -> None: ...
    def all_reduce(self, buffer: Any) -> None: ...
    def put(self, buffer: Any, index: int, value: float) -> None: ...
    def read(self, buffer: Any, start: int, stop: int) -> np.ndarray: ...


class LocalComm:
    """One rank on its own (the all-reduce of one value is that value): tests and a world of 1."""

    rank, world, device = 0, 1, ("cpu", 0)

    def buffer(self, size: int) -> np.ndarray:
        return np.zeros(size, np.float32)

    def pointer(self, buffer: np.ndarray) -> int:
        return buffer.ctypes.data

    def zero(self, buffer: np.ndarray) -> None:
        buffer[:] = 0

    def all_reduce(self, buffer: np.ndarray) -> None:
        pass

    def put(self, buffer: np.ndarray, index: int, value: float) -> None:
        buffer[index] = value

    def read(self, buffer: np.ndarray, start: int, stop: int) -> np.ndarray:
        return np.array(buffer[start:stop])


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of n: sizes differ by at most one, in rank order."""
    return slice(n * rank // world, n * (rank + 1) // world)


class StagedStepRunner:
    """One rank's train step (load/step/params/state, the interface of runner.py): the loop hands it the global
    batch; it runs the stages on its slice, all-reducing between them, then the update program."""

    def __init__(
        self,
        staged: StagedProgram,
        optimizer: Optimizer,
        comm: Comm,
        threads: int | None = None,
        update_threads: int | None = 0,
    ) -> None:
        """`update_threads`: the update session's threads (0: `threads`; None: no update session, for the
        shards of shards.py other than the first, whose update that one runs)."""
        if staged.program.serial and threads != 1:
            raise ValueError("a serial gradients program runs with threads=1")
        self.staged, self.comm, self.program = staged, comm, staged.program
        kind, index = comm.device
        self.sessions = [
            make_session(model_bytes(s.model), kind, threads, device_id=index, shared_arena=True, training=True)
            for s in staged.stages
        ]
        update = build_shard_update(self.program, optimizer, 1)
        self.update_program = update
        self.update = None
        if update_threads is not None:
            self.update = make_session(
                model_bytes(update.model), kind, update_threads or threads, device_id=index, training=True
            )  # fmt: skip
        self.state_names = update.state
        self.names = self.program.params + self.state_names
        self._shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in update.model.graph.input}
        # where each all-reduced value lives: (buffer, element offset, shape)
        self._slots: dict[str, tuple[Any, int, list[int]]] = {}
        self._buffers = []
        for c in staged.sync.collectives:
            buffer = comm.buffer(c.size)
            self._buffers.append(buffer)
            per = math.prod(c.shape)
            for i, (local, total) in enumerate(zip(c.local, c.total, strict=True)):
                self._slots[local] = self._slots[total] = (buffer, i * per, list(c.shape))
        offset = 0
        self._grads = []  # the last buffer: every trainable gradient, then the loss and the correct count
        for p in self.program.trainable:
            self._grads.append((p, offset))
            offset += math.prod(self._shapes[p])
        self._flat = comm.buffer(offset + 2)
        self._loss_at = offset
        for p, at in self._grads:
            self._slots[f"grad.{p}"] = self._slots[shard_grad(0, p)] = (self._flat, at, self._shapes[p])
        self._slots[LOSS] = (self._flat, offset, [])
        self.values: dict[str, Any] = {}
        outputs = {t for stage in staged.stages for t in stage.outputs}
        self._stats = {new(n): n for n in self.names if new(n) in outputs}  # forward-updated: running statistics
        # a value handed from stage to stage is dropped after the last stage that reads it (not at the end of the
        # step), so the later stages can reuse its memory
        last_read = {t: k for k, s in enumerate(staged.stages) for t in s.inputs}
        finals = {o.name for o in self.program.model.graph.output}
        self._done_after: list[list[str]] = [[] for _ in staged.stages]
        for stage in staged.stages:
            for t in stage.outputs:
                if t in last_read and t not in self._slots and t not in finals:
                    self._done_after[last_read[t]].append(t)

    def load(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        kind, index = self.comm.device
        values = params | state
        self.values = {
            n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(values[n], np.float32), kind, index)
            for n in self.names
        }
        self.new_stat_buffers()

    def new_stat_buffers(self) -> None:
        """The buffers the stages write forward-updated statistics (new.<running stat>) into, swapped with
        `values` after each step.

        NOTE: a stage output left for onnxruntime to allocate and kept past its step (as the running statistics
        are, until the next step reads them) held on to most of its stage's memory: resnet18_cifar's 40 kept
        ~900 MiB between the steps of a 32-image shard, the step itself needing ~700 MiB."""
        import onnxruntime as ort

        kind, index = self.comm.device
        self._spare = {
            n: ort.OrtValue.ortvalue_from_shape_and_type(self.values[n].shape(), np.float32, kind, index)
            for n in self._stats.values()
        }

    def _bind_slot(self, binding: Any, name: str, output: bool) -> None:
        buffer, offset, shape = self._slots[name]
        kind, index = self.comm.device
        pointer = self.comm.pointer(buffer) + 4 * offset
        bind = binding.bind_output if output else binding.bind_input
        bind(name, kind, index, np.float32, shape, pointer)

    def _run_stage(self, k: int, feeds: dict[str, np.ndarray], produced: dict[str, Any]) -> None:
        stage, session = self.staged.stages[k], self.sessions[k]
        binding = session.io_binding()
        kind, index = self.comm.device
        for name in stage.inputs:
            if name in feeds:
                binding.bind_cpu_input(name, feeds[name])
            elif name in self._slots:
                self._bind_slot(binding, name, output=False)
            else:
                binding.bind_ortvalue_input(name, self.values[name] if name in self.values else produced[name])
        for name in stage.outputs:
            if name in self._slots:
                self._bind_slot(binding, name, output=True)
            elif name in self._stats:
                binding.bind_ortvalue_output(name, self._spare[self._stats[name]])
            elif name == CORRECT:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, kind, index)
        session.run_with_iobinding(binding)
        produced.update(zip(stage.outputs, binding.get_outputs(), strict=True))
        # NOTE: an output taken from a binding keeps the binding alive, and with it every input bound to it (a
        # standalone check: a kept 256-byte output held its 8 MiB input); released here, resnet18_cifar's 2-shard
        # step at batch 64 peaked 3% lower
        binding.clear_binding_inputs()

    def step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, masks: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        """One update on the global batch (x, y; masks drawn for all of it); returns its mean loss and hits."""
        produced = self.gradients(x, y, masks)
        self.comm.all_reduce(self._flat)
        self._apply(lr, step, produced)
        loss, hits = self.comm.read(self._flat, self._loss_at, self._loss_at + 2)
        return float(loss), int(round(float(hits)))

    def gradients(self, x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, Any]:
        """The stages on this rank's slice: its gradients, loss share and hits in the flat buffer (not yet
        summed); returns the other values the stages produced (new.<running stat>)."""
        part = rank_slice(len(y), self.comm.rank, self.comm.world)
        feeds = {INPUT: x[part], LABELS: y[part], GLOBAL_BATCH: np.asarray(len(y), np.float32)}
        feeds |= {m: v[part] for m, v in masks.items()}
        produced: dict[str, Any] = {}
        for k in range(len(self.sessions)):
            self._run_stage(k, feeds, produced)
            for name in self._done_after[k]:
                del produced[name]
            if k < len(self._buffers):
                self.comm.all_reduce(self._buffers[k])
        correct = produced.pop(CORRECT, None)
        self.comm.put(self._flat, self._loss_at + 1, float(correct.numpy()) if correct is not None else 0.0)
        return produced

    def _apply(self, lr: float, step: int, produced: dict[str, Any]) -> None:
        """The optimizer update on the summed gradients; forward-updated statistics (new.<running stat>) as
        the stages computed them (from global statistics, so the same on every rank)."""
        kind, index = self.comm.device
        binding = self.update.io_binding()
        for name in self.update_program.params + self.state_names:
            binding.bind_ortvalue_input(name, self.values[name])
        for p in self.update_program.trainable:
            self._bind_slot(binding, shard_grad(0, p), output=False)
        binding.bind_cpu_input(shard_weight(0), np.asarray(1.0, np.float32))
        binding.bind_cpu_input(LR, np.asarray(lr, np.float32))
        binding.bind_cpu_input(STEP, np.asarray(step, np.int64))
        outputs = [o.name for o in self.update.get_outputs()]
        for name in outputs:
            binding.bind_output(name, kind, index)
        self.update.run_with_iobinding(binding)
        got = dict(zip(outputs, binding.get_outputs(), strict=True))
        binding.clear_binding_inputs()
        for name in self.names:
            if new(name) in got:
                self.values[name] = got[new(name)]
            elif new(name) in produced:  # written into the spare buffer (new_stat_buffers)
                self.values[name], self._spare[name] = self._spare[name], self.values[name]

    def arrays(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: np.array(self.values[n].numpy()) for n in names}

    def params(self) -> dict[str, np.ndarray]:
        return self.arrays(self.program.params)

    def state(self) -> dict[str, np.ndarray]:
        return self.arrays(self.state_names)
