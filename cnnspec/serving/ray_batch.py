"""`cnnspec run M.onnx INPUTS... --engine ray`: batch inference on Ray Data (the optional extra cnnspec[ray]).

The pipeline, one Ray Data dataset streamed end to end:
  driver      expands the inputs (folders, globs, and URIs of any file system pyarrow can open) into rows
              (row number, path), checks the model (sandboxed probe, as plain `run` does) and ships its bytes;
  map_batches decode tasks: cnnspec's own image loader -> float32 [N, C, H, W] raw pixels; a bad file becomes
              a row with an error, never a failed task;
  map_batches an actor pool: each actor holds one Classifier (one onnxruntime session, threads = its CPUs,
              CUDA when given GPUs) and emits rows with the columns of `run --json`;
  driver      streams the rows into Parquet or JSON Lines on a temp file next to the output (files.atomic_output),
              dropping any row number already written (a retried task after an actor restart), then renames.

Actors are restarted when they die and their in-flight batches retried (Ray Data's defaults for actor pools:
max_restarts=-1, max_task_retries=-1; bounding them needs Ray's deprecated ray_remote_args), so a killed worker
costs time, not rows; a model that crashes onnxruntime is stopped earlier, by the driver's sandboxed probe.
Without --address a local Ray is started (no dashboard, quiet logs) and shut down at the end; with it, the
driver joins that cluster (local paths must then be visible on every node, and cnnspec installed there).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import CnnspecError, UsageError
from ..files import atomic_output, check_output_path
from ..foreign import Preprocess
from ..images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_BYTES,
    ImageError,
    decode,
    expand_inputs,
    image_to_array,
    load_images,
    set_max_pixels,
)

Format = Literal["parquet", "jsonl"]
_ROWS_PER_BLOCK_BATCHES = 4  # rows per input block = 4 batches: enough blocks for the decode tasks to overlap
_CRASH_HOOK = "CNNSPEC_TEST_RAY_CRASH"  # tests: path of a marker file; the first actor to see it absent exits


@dataclass(frozen=True)
class RayJob:
    """What one `run --engine ray` does, apart from the inputs and the model."""

    output: Path
    address: str | None = None
    concurrency: int | None = None  # actors; default: default_concurrency()
    gpus_per_worker: float = 0.0
    threads: int = 1  # CPUs (and onnxruntime threads) per actor
    batch_size: int = 64
    top_k: int = 5
    resize: str = "stretch"
    labels: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    layout: str = "auto"  # foreign models: nchw, nhwc or auto
    max_pixels: int | None = None  # --max-pixels: the decompression-bomb cap, set in every decode worker


@dataclass(frozen=True)
class Summary:
    rows: int
    errors: int
    output: Path


def output_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise UsageError(f"--output must end in .parquet or .jsonl (the format follows the suffix); got '{path}'")


def import_ray() -> Any:
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data and pyarrow ({exc}): pip install 'cnnspec[ray]'") from None
    return ray


# ---- the command -------------------------------------------------------------------------------------------------


def check_engine_options(engine: str, ray_options: dict[str, Any], plain_options: dict[str, Any]) -> None:
    """Refuse options of the other engine (given = not None), and a ray run without --output."""
    if engine == "plain":
        given = [name for name, value in ray_options.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --engine ray")
        return
    given = [name for name, value in plain_options.items() if value is not None]
    if given:
        hint = " (use --gpus-per-worker for CUDA)" if "--device" in given else ""
        raise UsageError(f"{', '.join(given)} do not apply with --engine ray{hint}")
    if ray_options.get("--output") is None:
        raise UsageError("--engine ray writes its rows to a file: give --output preds.parquet or preds.jsonl")


def ray_run_command(model: Path, inputs: Sequence[str], output: Path | None, address: str | None,
                    concurrency: int | None, gpus_per_worker: float, threads: int | None, batch_size: int,
                    top_k: int, resize: str, labels: Path | None, scale: float | None, mean: str | None,
                    std: str | None, layout: str = "auto", max_pixels: int | None = None) -> int:  # fmt: skip
    """`run --engine ray`: the exit code (1 when any image could not be classified, as plain `run`)."""
    from ..foreign import preprocess_from_options, read_labels_file

    assert output is not None  # check_engine_options requires it
    job = RayJob(output=output, address=address, concurrency=concurrency, gpus_per_worker=gpus_per_worker,
                 threads=threads or 1, batch_size=batch_size, top_k=top_k, resize=resize,
                 labels=tuple(read_labels_file(labels)) if labels is not None else None,
                 preprocess=preprocess_from_options(scale, mean, std), layout=layout,
                 max_pixels=max_pixels)  # fmt: skip
    summary = run_ray(model, inputs, job)
    print(f"wrote {summary.rows} row(s) to {summary.output}", file=sys.stderr)
    if summary.errors:
        print(f"error: {summary.errors} of {summary.rows} image(s) could not be classified", file=sys.stderr)
    return 1 if summary.errors else 0


# ---- inputs -------------------------------------------------------------------------------------------------------


def is_uri(item: str) -> bool:
    return "://" in item and not os.path.lexists(item)


def expand_sources(inputs: Sequence[str]) -> list[str]:
    """Local inputs as `run` expands them; a URI (s3://, gs://, hdfs://, file://...) through pyarrow's file
    systems: a folder is listed recursively for image suffixes (sorted), a file is kept as given."""
    out: list[str] = []
    for item in inputs:
        out.extend(_expand_uri(item) if is_uri(item) else expand_inputs([item]))
    return out


def _expand_uri(uri: str) -> list[str]:
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type != fs.FileType.Directory:
            return [uri]  # a file, or a missing one that gets its own error row
        listing = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot list '{uri}': {exc}") from None
    prefix = uri[: len(uri) - len(uri.split("://", 1)[1])]  # the scheme, kept so workers can reopen each file
    found = sorted(
        f.path for f in listing if f.type == fs.FileType.File and os.path.splitext(f.path)[1].lower() in IMAGE_SUFFIXES
    )
    return [prefix + p.lstrip("/") if prefix != "file://" else prefix + p for p in found] or [uri]


def _read_uri(uri: str) -> bytes:
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise ImageError(f"'{uri}' does not exist")
        if info.type != fs.FileType.File:
            raise ImageError(f"'{uri}' is not a regular file")
        if info.size is not None and info.size > MAX_IMAGE_BYTES:
            raise ImageError(f"'{uri}' is {info.size / (1 << 20):.0f} MiB; limit {MAX_IMAGE_BYTES >> 20} MiB")
        with filesystem.open_input_stream(path) as f:
            return f.read(MAX_IMAGE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise ImageError(f"'{uri}' cannot be read: {exc}") from None


def display_path(raw: bytes) -> str:
    """The path as `run --json` shows it: undecodable bytes as \\xNN (Arrow strings must be valid UTF-8)."""
    return os.fsdecode(raw).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ---- the two stages (run inside Ray workers) ----------------------------------------------------------------------


def decode_batch(batch: dict[str, np.ndarray], chw: tuple[int, int, int], resize: str,
                 max_pixels: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """{row, source, given} -> {row, path, pixels [N, C, H, W], error ('' when fine)}; bad files keep zero pixels.

    `source` is what the worker opens (local paths made absolute: a worker's cwd is not the driver's), `given` the
    path as the user typed it, which the row and its error message show, as in `run --json`.
    """
    if max_pixels is not None:  # a worker is another process: the driver's --max-pixels does not reach it
        set_max_pixels(max_pixels)
    sources = [os.fsdecode(bytes(s)) for s in batch["source"]]
    given = [os.fsdecode(bytes(s)) for s in batch["given"]]
    local = [i for i, s in enumerate(sources) if not is_uri(s)]
    decoded = load_images([sources[i] for i in local], chw, resize, workers=1)  # one CPU per decode task
    loaded: dict[int, Any] = dict(zip(local, decoded, strict=True))
    pixels = np.zeros((len(sources), *chw), np.float32)
    errors = []
    for i, source in enumerate(sources):
        arr = loaded[i] if i in loaded else _load_uri(source, chw, resize)
        if isinstance(arr, ImageError):
            errors.append(str(arr).replace(f"'{source}'", f"'{given[i]}'"))
        else:
            pixels[i] = arr
            errors.append("")
    paths = [display_path(os.fsencode(g)) for g in given]
    return {"row": batch["row"], "path": np.array(paths, dtype=object), "pixels": pixels,
            "error": np.array([display_path(os.fsencode(e)) for e in errors], dtype=object)}  # fmt: skip


def _load_uri(uri: str, chw: tuple[int, int, int], resize: str) -> np.ndarray | ImageError:
    c, h, w = chw
    try:
        img = decode(_read_uri(uri), uri, (h, w), "L" if c == 1 else "RGB")
        return image_to_array(img, c, (h, w), resize, uri)  # type: ignore[arg-type]
    except ImageError as exc:
        return exc
    except MemoryError:
        return ImageError(f"'{uri}': not enough memory to decode this image")


class ClassifyActor:
    """One per Ray actor: a Classifier built from the model bytes the driver checked; __call__ classifies one batch."""

    def __init__(self, model: bytes, device: str, threads: int, job: RayJob, crash_marker: str | None) -> None:
        from ..runtime import Classifier

        self._dir = tempfile.TemporaryDirectory(prefix="cnnspec-ray-")
        path = Path(self._dir.name) / "model.onnx"
        path.write_bytes(model)
        # The driver already probed these bytes in a sandbox; the actor itself is the isolation here.
        labels = list(job.labels) if job.labels is not None else None
        self.clf = Classifier(path, device=device, threads=threads, labels=labels, preprocess=job.preprocess,  # type: ignore[arg-type]
                              layout=job.layout, sandbox=False)  # fmt: skip
        self.top_k, self.batch_size = job.top_k, job.batch_size
        self._crash_marker, self._batches = crash_marker, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        self._maybe_crash()
        errors = [str(e) for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if not e]
        preds: list[list[dict[str, Any]]] = [[] for _ in errors]
        if good:
            results = self.clf.predict(batch["pixels"][good], top_k=self.top_k, batch_size=self.batch_size)
            for i, r in zip(good, results, strict=True):
                preds[i] = r.as_dict()["predictions"]
                if r.error is not None:  # NaN or infinite scores: the message names the file, as in `run`
                    errors[i] = r.error.replace(r.path, str(batch["path"][i]), 1)
        return rows_table(batch["row"], [str(p) for p in batch["path"]], preds, [e or None for e in errors])

    def _maybe_crash(self) -> None:
        # Test hook: the first actor to reach its second batch while the marker is absent dies mid-job, once.
        self._batches += 1
        if self._crash_marker and self._batches == 2:
            try:
                os.close(os.open(self._crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)


def rows_table(rows: Any, paths: list[str], preds: list[list[dict[str, Any]]], errors: list[str | None]) -> Any:
    import pyarrow as pa

    return pa.table({"row": pa.array(np.asarray(rows, np.int64)), "path": paths, "predictions": preds,
                     "error": errors}, schema=_schema(with_row=True))  # fmt: skip


def _schema(with_row: bool) -> Any:
    """The columns of `run --json`: path, predictions [{label, index, score}], error (null when fine)."""
    import pyarrow as pa

    pred = pa.struct([("label", pa.string()), ("index", pa.int64()), ("score", pa.float64())])
    fields = [("path", pa.string()), ("predictions", pa.list_(pred)), ("error", pa.string())]
    return pa.schema(([("row", pa.int64())] if with_row else []) + fields)


# ---- the driver ---------------------------------------------------------------------------------------------------


def run_ray(model_path: Path, inputs: Sequence[str], job: RayJob, notify: Any = None) -> Summary:
    """Classify every input on Ray and write job.output; returns the row and error counts."""
    from ..runtime import Classifier

    fmt = output_format(job.output)
    check_output_path(job.output, not_same_as={"model": model_path})
    ray = import_ray()
    device = "cuda" if job.gpus_per_worker > 0 else "cpu"
    # Checks the model in this process (allowlist, sandboxed probe) before any worker sees it; CPU is enough here.
    labels = list(job.labels) if job.labels is not None else None
    clf = Classifier(model_path, device="cpu", threads=1, labels=labels, preprocess=job.preprocess, layout=job.layout)
    for warning in clf.warnings:
        (notify or _stderr)(f"warning: {warning}")
    clf.session  # noqa: B018 - waits for the sandboxed probe: a model that crashes onnxruntime stops here
    model = Path(model_path).read_bytes()
    sources = expand_sources(inputs)
    started = _start(ray, job.address)
    try:
        return _execute(ray, model, clf.chw, sources, job, device, fmt)
    finally:
        if started:
            ray.shutdown()


def _start(ray: Any, address: str | None) -> bool:
    """Join `address`, or start a quiet local Ray; False when this process already had one (tests, notebooks)."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    try:
        if address is not None:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray"
        raise CnnspecError(f"could not start {where}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return True


def _execute(ray: Any, model: bytes, chw: tuple[int, int, int], sources: list[str], job: RayJob, device: str,
             fmt: Format) -> Summary:  # fmt: skip
    import pyarrow as pa

    for name in ("ray", "ray.data"):  # Ray Data logs every execution; `run` prints its own summary
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # rows come out in input order, as with plain `run`
    step = max(1, job.batch_size * _ROWS_PER_BLOCK_BATCHES)
    given = [os.fsencode(s) for s in sources]
    opened = [os.fsencode(s if is_uri(s) else os.path.abspath(s)) for s in sources]
    blocks = [
        pa.table({"row": pa.array(range(i, min(i + step, len(given))), pa.int64()),
                  "source": pa.array(opened[i : i + step], pa.binary()),
                  "given": pa.array(given[i : i + step], pa.binary())})
        for i in range(0, len(given), step)
    ]  # fmt: skip
    ds = ray.data.from_arrow(blocks)
    decode_args = {"chw": chw, "resize": job.resize, "max_pixels": job.max_pixels}
    ds = ds.map_batches(decode_batch, fn_kwargs=decode_args, batch_size=job.batch_size, batch_format="numpy",
                        num_cpus=1)  # fmt: skip
    resources = ray.cluster_resources()
    if job.address is None and job.gpus_per_worker > resources.get("GPU", 0):
        # A cluster may add GPU nodes on demand; a local Ray never will, and Ray Data would wait for them forever.
        raise CnnspecError(f"--gpus-per-worker {job.gpus_per_worker:g}: the local Ray has "
                           f"{resources.get('GPU', 0):g} GPU(s)")  # fmt: skip
    size = job.concurrency or default_concurrency(resources, job)
    ds = ds.map_batches(
        ClassifyActor,
        fn_constructor_kwargs={"model": model, "device": device, "threads": job.threads, "job": job,
                               "crash_marker": os.environ.get(_CRASH_HOOK)},
        batch_size=job.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=job.threads, num_gpus=job.gpus_per_worker or None,
    )  # fmt: skip
    try:
        return _write(ds.iter_batches(batch_format="pyarrow", batch_size=None), job.output, fmt)
    except ray.exceptions.RayError as exc:  # e.g. no node can hold an actor; the output is left as it was
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CnnspecError(f"the Ray job failed: {first}") from None


def default_concurrency(resources: dict[str, float], job: RayJob) -> int:
    """Actors when --concurrency is not given: every GPU's share, or every CPU.

    NOTE: on CPU the decode tasks and the actors ask for the same resources, so Ray Data fuses the two stages:
    each actor decodes and classifies its own batches (no pixel copies through the object store) and one actor
    per `threads` CPUs keeps every core busy. With --gpus-per-worker they stay apart: decode tasks on the CPUs,
    classification on the GPU actors.
    """
    if job.gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) / job.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)) // job.threads)


def _write(batches: Iterator[Any], output: Path, fmt: Format) -> Summary:
    """Stream the result rows into a temp file next to `output`, once per row number, then rename it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    seen: set[int] = set()
    rows = errors = 0
    with atomic_output(output) as temp:
        writer = pq.ParquetWriter(temp, _schema(with_row=False)) if fmt == "parquet" else None
        text = open(temp, "w", encoding="utf-8") if writer is None else None
        try:
            for table in batches:
                ids = table.column("row").to_pylist()
                keep = [i for i, r in enumerate(ids) if r not in seen]
                seen.update(ids)
                table = table.take(pa.array(keep, pa.int64())).drop_columns(["row"]).cast(_schema(with_row=False))
                rows += table.num_rows
                errors += table.num_rows - pc.sum(pc.is_null(table.column("error"))).as_py() if table.num_rows else 0
                if writer is not None:
                    writer.write_table(table)
                else:
                    text.writelines(json.dumps(e, ensure_ascii=False, allow_nan=False) + "\n"  # type: ignore[union-attr]
                                    for e in table.to_pylist())  # fmt: skip
        finally:
            if writer is not None:
                writer.close()
            if text is not None:
                text.close()
    return Summary(rows=rows, errors=errors, output=output)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
