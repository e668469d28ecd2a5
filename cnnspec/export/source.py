"""What every export target shares: the source model (checked like `run` checks it), its preprocessing, the data
sets it is calibrated and scored on, and the output's contract (names, shapes, metadata) before it is written.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..data import Dataset, load_dataset
from ..errors import CnnspecError, ModelError, UsageError
from ..foreign import Preprocess, preprocess_from_options
from ..graph_stats import graph_stats
from ..modelfile import ModelInfo, check_runnable, parse_model, read_model_bytes
from ..runtime import softmax
from ..sandbox import probe_model
from ..sessions import make_session

# The ops whose inputs are weights: a graph node downstream of none of them is preprocessing (kept float).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Keys that onnxruntime's tools add to the metadata; the exported file carries the source's keys and cnnspec's.
_TOOL_KEYS = ("onnx.infer", "onnx.quant.pre_process")


@dataclass
class Source:
    """The model being exported, checked and loaded once in the sandbox like `run` does."""

    path: Path
    data: bytes
    model: onnx.ModelProto
    info: ModelInfo
    preprocess: Preprocess | None
    classes: int
    threads: int | None = None

    @property
    def is_cnnspec(self) -> bool:
        return "cnnspec.spec" in self.info.metadata

    @property
    def labels(self) -> list[str] | None:
        import json

        raw = self.info.metadata.get("cnnspec.labels")
        try:
            labels = json.loads(raw) if raw and self.is_cnnspec else None
        except ValueError:
            return None
        return labels if isinstance(labels, list) and len(labels) == self.classes else None

    def feed(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels -> what the graph's input takes (foreign models preprocess outside the graph)."""
        x = self.preprocess.apply(x) if self.preprocess is not None else x
        return np.ascontiguousarray(x, dtype=np.float32)

    def load(self, path: str | Path, what: str) -> Dataset:
        """A data set read as `train`/`evaluate` read it, for this model's input size and classes."""
        c, h, w = self.info.chw
        try:
            return load_dataset(path, (h, w, c), labels=self.labels, num_classes=self.classes)
        except CnnspecError as exc:  # DataError, UsageError: the same kind, saying which data set it was
            raise type(exc)(f"{what}: {exc}") from None


def load_source(
    path: Path,
    scale: float | None = None,
    mean: str | None = None,
    std: str | None = None,
    threads: int | None = None,
    needs_pixels: bool = True,
) -> Source:
    """Read and check MODEL; a model without cnnspec metadata must say how it preprocesses (as `run` needs)."""
    data = read_model_bytes(path)
    model = parse_model(data, str(path))
    info = check_runnable(model, str(path))
    precision = graph_stats(model).precision
    if precision not in ("fp32", "none"):  # "none": no Conv/Gemm/MatMul weights to tell by
        raise UsageError(f"'{path}' already holds {precision} weights; export converts fp32 models (give the original)")
    preprocess = preprocess_from_options(scale, mean, std)
    is_cnnspec = "cnnspec.spec" in info.metadata
    if preprocess is not None and is_cnnspec:
        raise UsageError(
            "--scale/--mean/--std are for models made elsewhere; this cnnspec model preprocesses inside the graph "
            f"({info.metadata.get('cnnspec.preprocess', '?')})"
        )
    if preprocess is None and not is_cnnspec and needs_pixels:
        raise UsageError(
            f"'{path}' has no cnnspec metadata, so export cannot know what its input expects: give its "
            "preprocessing with --scale/--mean/--std as for `cnnspec run` (--scale 1 when it takes raw 0..255 pixels)"
        )
    probe_model(data, info, str(path))
    source = Source(path, data, model, info, preprocess, classes=info.classes or 0, threads=threads)
    if not source.classes:
        source.classes = int(Scorer(data, info, threads).run(np.zeros((1, *info.chw), np.float32)).shape[1])
    return source


class Scorer:
    """Class probabilities from model bytes on the CPU (a softmax added when the model ends in logits)."""

    def __init__(self, data: bytes, info: ModelInfo, threads: int | None = None) -> None:
        self.session = make_session(data, "cpu", threads)
        self.info = info

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.info.output_name], {self.info.input_name: x})[0]

    def probabilities(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        outs = [self.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        out = np.concatenate(outs).astype(np.float32)
        return out if self.info.ends_in_softmax else softmax(out)


def split_samples(n: int, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, held-out indices): a seeded choice of `samples` of n, the rest held out; sorted."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:samples]), np.sort(order[samples:])


def array_digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def preprocessing_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that no weighted op (Conv, Gemm, MatMul) feeds: the in-graph preprocessing.

    They work on raw pixel values (0..255) and must stay float32 in every target.
    """
    downstream: set[str] = set()
    names = []
    for node in graph.node:  # ONNX graphs are stored in topological order
        fed = node.op_type in WEIGHTED_OPS or any(i in downstream for i in node.input)
        if fed:
            downstream.update(node.output)
        else:
            names.append(node.name)
    return names


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a name (op and position) so that block lists can point at it."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def restore_contract(source: Source, model: onnx.ModelProto, metadata: dict[str, str]) -> bytes:
    """The converted graph with the source's input/output declarations, producer, graph name and metadata (plus
    `metadata`), serialized deterministically and checked as `run` will check it."""
    src = source.model.graph
    feeds = [v for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    if [v.name for v in feeds] != [source.info.input_name] or [v.name for v in model.graph.output] != [
        v.name for v in src.output
    ]:
        raise ModelError(
            f"internal error: the converted graph's inputs/outputs {[v.name for v in feeds]} -> "
            f"{[v.name for v in model.graph.output]} differ from the source's"
        )
    _replace(model.graph.input, [v for v in src.input if v.name == source.info.input_name])
    _replace(model.graph.output, list(src.output))
    topological_sort(model.graph)
    model.producer_name, model.producer_version = source.model.producer_name, source.model.producer_version
    model.graph.name, model.doc_string = src.name, source.model.doc_string
    keys = {p.key: p.value for p in source.model.metadata_props if p.key not in _TOOL_KEYS}
    keys.update(metadata)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(sorted(keys.items())))
    data = model.SerializeToString(deterministic=True)
    try:
        check_runnable(parse_model(data, "exported model"), "exported model")
    except ModelError as exc:
        raise ModelError(f"internal error: the exported model would not pass `cnnspec run`'s checks: {exc}") from None
    return data


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order the nodes so each comes after the producers of its inputs (ONNX requires it; the float16 converter
    appends its Cast nodes at the end). Stable: among ready nodes, the earlier one in the old order goes first."""
    import heapq

    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    waits = [{produced_by[x] for x in node.input if x in produced_by} for node in graph.node]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(waits):
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, deps in enumerate(waits) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waits[u].discard(i)
            if not waits[u]:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise ModelError("internal error: the converted graph has a cycle")
    nodes = [onnx.NodeProto.FromString(graph.node[i].SerializeToString()) for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _replace(field: Any, values: Iterable[onnx.ValueInfoProto]) -> None:
    copies = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in values]
    del field[:]
    field.extend(copies)


def prepare(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """onnxruntime's quant_pre_process: shape inference and the basic graph optimizations (BatchNormalization
    folded into the Conv before it, Dropout and Identity removed), so the quantizer sees the graph that runs.

    NOTE: its symbolic shape inference (for dynamic transformer shapes) needs sympy; CNN inputs here have static
    C, H, W, and ONNX's own shape inference, which it also runs, gives every shape.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = folder / "prepared.onnx"
    try:
        with quiet():
            quant_pre_process(model, str(path), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ModelError(f"onnxruntime's quantization pre-processing failed: {first_line(exc)}") from None
    prepared = onnx.load_model(str(path))
    name_nodes(prepared)
    return prepared


@contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's quantization tools log advice at INFO/WARNING and print calibration progress on stdout;
    cnnspec reports itself (and `export --json` owns stdout)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
