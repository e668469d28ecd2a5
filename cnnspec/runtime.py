"""Running models: Classifier (predictions) and evaluation; sessions and devices come from sessions.py.

A model file is untrusted until proven otherwise: it is read with a size cap, parsed from bytes, checked against
cnnspec's operator allowlist (modelfile.check_runnable), then loaded once in a forked child process with an address
space limit and a timeout (sandbox.probe_model), so a crash in native code becomes one error line. Only then does
this process build its own session, from the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CnnspecError, UsageError
from .foreign import MAX_LABELS_BYTES, Preprocess
from .modelfile import ModelInfo, check_runnable, parse_model, read_model_bytes
from .sandbox import Probe
from .sessions import Device, make_session, resolve_device


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass
class Result:
    """One input's outcome; `as_dict` is exactly one entry of `run --json`."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        preds = [{"label": p.label, "index": p.index, "score": p.score} for p in self.predictions]
        return {"path": self.path, "predictions": preds, "error": self.error}


class Classifier:
    """An image classifier from an .onnx file: cnnspec's own (labels and preprocessing from its metadata) or a
    foreign one with one float32 [N,C,H,W] input, for which `labels` and `preprocess` come from the caller.

    >>> clf = Classifier("model.onnx")                     # doctest: +SKIP
    >>> clf.predict(["cat.png", "dog.jpg"], top_k=3)       # doctest: +SKIP
    """

    def __init__(
        self,
        model_path: str | Path,
        device: Device = "cpu",
        threads: int | None = None,
        labels: Sequence[str] | None = None,
        preprocess: Preprocess | None = None,
        sandbox: bool = True,
        cuda_graph: bool = True,
        notify: Callable[[str], None] | None = None,
        layout: str = "auto",
    ) -> None:
        self.path = str(model_path)
        data = read_model_bytes(model_path)
        if layout not in ("auto", "nchw", "nhwc"):
            raise UsageError(f"layout must be auto, nchw or nhwc; got {layout!r}")
        self.info: ModelInfo = check_runnable(parse_model(data, self.path), self.path, layout)
        self.is_cnnspec = "cnnspec.spec" in self.info.metadata
        if preprocess is not None and self.is_cnnspec:
            raise UsageError(
                "--scale/--mean/--std are for models made elsewhere; this cnnspec model preprocesses inside the graph "
                f"({self.info.metadata.get('cnnspec.preprocess', '?')})"
            )
        self.preprocess = preprocess
        self.warnings: list[str] = []
        if self.info.layout == "nhwc" and layout == "auto":
            c, h, w = self.info.chw
            self.warnings.append(
                f"the model takes channels-last input [N, {h}, {w}, {c}] (NHWC, as Keras and tf2onnx export); "
                "images are fed that way (--layout nchw to override)"
            )
        self.device = resolve_device(device)
        self._data, self._threads, self._session = data, threads, None
        self._probe = None
        # --device cuda: CUDA graphs unless turned off (cudagraph.py); `notify` hears once when they cannot be used
        self._cuda_graph, self._notify, self._cuda = cuda_graph, notify or _warn, None
        if sandbox:
            self._probe = Probe(data, self.info, self.path)  # runs while the caller decodes images
        outputs = self.info.classes or self._probe_classes()
        self.binary = outputs == 1 and self.info.output_op == "Sigmoid"
        """One sigmoid output: Keras's binary head, P(second class); scores() gives both classes' probabilities."""
        self.classes = 2 if self.binary else outputs
        self.labels = self._labels(labels)

    def __del__(self) -> None:  # reap the probe's child if no prediction ever asked for the session
        probe = getattr(self, "_probe", None)
        if probe is not None:
            try:
                probe.wait()
            except CnnspecError:
                pass

    @property
    def session(self) -> Any:
        """The onnxruntime session, created (from the checked bytes) once the sandboxed probe has passed."""
        if self._session is None:
            if self._probe is not None:
                self._probe.wait()
            if self.device == "cuda":
                from .cudagraph import CudaRunner

                info = self.info
                self._cuda = CudaRunner(self._data, info.input_name, info.output_name, info.classes, self._threads,
                                        use_graph=self._cuda_graph, notify=self._notify)  # fmt: skip
                self._session = self._cuda.session
            else:
                self._session = make_session(self._data, self.device, self._threads)
            self._data = b""
        return self._session

    @property
    def chw(self) -> tuple[int, int, int]:
        return self.info.chw

    def _probe_classes(self) -> int:
        return int(self._run(np.zeros((1, *self.chw), np.float32)).shape[1])

    def _labels(self, given: Sequence[str] | None) -> list[str]:
        if given is not None:
            if len(given) != self.classes:
                raise UsageError(f"--labels gives {len(given)} labels but the model has {self.classes} outputs")
            return [str(x) for x in given]
        raw = self.info.metadata.get("cnnspec.labels")
        if raw is None:
            return [str(i) for i in range(self.classes)]
        labels = _parse_labels(raw)
        if labels is None or len(labels) != self.classes:
            count = "malformed" if labels is None else f"{len(labels)} labels"
            self.warnings.append(
                f"model metadata cnnspec.labels is {count} for {self.classes} outputs; showing class indices instead"
            )
            return [str(i) for i in range(self.classes)]
        return labels

    # ---- running ----------------------------------------------------------------------------------------------

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.preprocess is not None:
            x = self.preprocess.apply(x)
        if self.info.layout == "nhwc":  # cnnspec works in NCHW; a channels-last model gets its own layout
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.device == "cuda":
            return self._run_cuda(x)
        return self.session.run([self.info.output_name], {self.info.input_name: x})[0]

    def _run_cuda(self, x: np.ndarray) -> np.ndarray:
        """IOBinding on fixed device buffers per batch size, replayed as a CUDA graph (cudagraph.py)."""
        self.session  # noqa: B018 - creates the runner once the sandboxed probe has passed
        return self._cuda.run(x)

    def scores(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, classes] for raw pixels: [N, C, H, W], or any layout `as_nchw` reads.

        The model's output is taken as probabilities when it ends in Softmax and as logits otherwise (they get
        a softmax). A binary head (one output unit) gives p = P(second class), through a sigmoid unless the
        model ends in Sigmoid; its scores are the two columns [1 - p, p].
        """
        x = as_nchw(np.asarray(x), self.chw)
        outs = [self._run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        out = np.concatenate(outs) if outs else np.zeros((0, 1 if self.binary else self.classes), np.float32)
        if self.binary:
            return np.concatenate([1 - out, out], axis=1).astype(np.float32)
        return out if self.info.ends_in_softmax else softmax(out)

    def predict(self, inputs: Any, top_k: int = 5, batch_size: int = 64, resize: str = "stretch") -> list[Result]:
        """Top-k predictions for image files, folders (searched recursively) and globs, as `cnnspec run` takes
        them, PIL images, or raw-pixel arrays in either layout (see `as_nchw` for the rule: [N, C, H, W],
        [N, H, W, C], one image [C, H, W] / [H, W, C], or [H, W] grey); a single item or a list of them.

        Bad files get a Result with `error` set; the rest are still classified. An array that fits no layout
        raises UsageError at once. `top_k` above the class count gives every class.
        """
        return list(self.iter_predict(inputs, top_k, batch_size, resize))

    def iter_predict(
        self, inputs: Any, top_k: int = 5, batch_size: int = 64, resize: str = "stretch"
    ) -> Iterator[Result]:
        """`predict`, one Result at a time as each batch is classified (`run --jsonl` streams these)."""
        if top_k < 1:
            raise UsageError(f"top_k must be >= 1; got {top_k}")
        items = _as_items(inputs, self.chw)
        size = max(batch_size, 1) * 4  # decode a few batches at a time, never the whole folder at once
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        # A pipeline: the next chunk decodes (Pillow releases the GIL) while onnxruntime classifies this one.
        with ThreadPoolExecutor(max_workers=1) as ahead:
            pending = ahead.submit(_to_arrays, chunks[0], self.chw, resize) if chunks else None
            for i in range(len(chunks)):
                arrays = pending.result()
                if i + 1 < len(chunks):
                    pending = ahead.submit(_to_arrays, chunks[i + 1], self.chw, resize)
                yield from self._classify(arrays, top_k, batch_size)

    def _classify(self, arrays: list[tuple[str, Any]], top_k: int, batch_size: int) -> list[Result]:
        results = [Result(path=name) for name, _ in arrays]
        good = [i for i, (_, a) in enumerate(arrays) if not isinstance(a, CnnspecError)]
        for i, (_, a) in enumerate(arrays):
            if isinstance(a, CnnspecError):
                results[i].error = str(a)
        if good:
            probs = self.scores(np.stack([arrays[i][1] for i in good]), batch_size)
            for i, row in zip(good, probs, strict=True):
                if np.isfinite(row).all():
                    results[i].predictions = self._top(row, top_k)
                else:
                    results[i].error = f"'{results[i].path}': the model produced NaN or infinite scores"
        return results

    def _top(self, row: np.ndarray, k: int) -> list[Prediction]:
        order = np.argsort(-row, kind="stable")[: min(k, len(row))]
        return [Prediction(self.labels[i], int(i), float(row[i])) for i in order]


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _parse_labels(raw: str) -> list[str] | None:
    if len(raw) > MAX_LABELS_BYTES:
        return None
    try:
        labels = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return None
    return labels


def _as_items(inputs: Any, chw: tuple[int, int, int]) -> list[Any]:
    """Predict's inputs as a list of paths, PIL images and CHW arrays; folders and globs expanded as `run` does."""
    if isinstance(inputs, np.ndarray):
        return list(as_nchw(inputs, chw))
    if isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "getpixel"):
        inputs = [inputs]
    items: list[Any] = []
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            from .images import expand_inputs

            items.extend(expand_inputs([os.fsdecode(item)]))
        elif isinstance(item, np.ndarray):
            items.extend(as_nchw(item, chw))
        else:
            items.append(item)
    return items


def as_nchw(x: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Raw pixels in any layout the rule below reads, as [N, C, H, W]; UsageError for anything else.

    The rule, for a model taking C channels of H x W:
      [N, C, H, W] and [C, H, W] are used as they are (channels first, what the model takes);
      [N, H, W, C] and [H, W, C] (channels last: PIL, Keras, OpenCV) are transposed;
      [H, W] is one grey image, and [N, H, W] a batch of them, for a model with one channel.
    When both readings fit (C == H == W), channels first wins.
    """
    c, h, w = chw
    shape = tuple(x.shape)
    if x.dtype.kind not in "biuf":
        raise UsageError(f"pixels must be numbers; got an array of {x.dtype}")
    if shape[-3:] == (c, h, w) and x.ndim in (3, 4):
        return x.reshape(-1, c, h, w)
    if shape[-3:] == (h, w, c) and x.ndim in (3, 4):
        return np.moveaxis(x.reshape(-1, h, w, c), 3, 1)
    if c == 1 and shape[-2:] == (h, w) and x.ndim in (2, 3):
        return x.reshape(-1, 1, h, w)
    raise UsageError(
        f"an array of shape {list(shape)} is not an image for this model, which takes {c} channel(s) of {h}x{w}: "
        f"give [N, {c}, {h}, {w}] or [{c}, {h}, {w}] (channels first), [N, {h}, {w}, {c}] or [{h}, {w}, {c}] "
        f"(channels last)" + (f", or [{h}, {w}] (grey)" if c == 1 else "")
    )


def _to_arrays(items: list[Any], chw: tuple[int, int, int], resize: str) -> list[tuple[str, Any]]:
    """(name, CHW array or ImageError) for each item; paths are decoded in parallel."""
    from .images import ImageError, image_to_array, load_images

    paths = [i for i, it in enumerate(items) if isinstance(it, (str, os.PathLike))]
    decoded = dict(zip(paths, load_images([items[i] for i in paths], chw, resize), strict=True))
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if i in decoded:
            out.append((os.fsdecode(item), decoded[i]))
        elif isinstance(item, np.ndarray):
            ok = tuple(item.shape) == chw
            out.append(
                (f"array[{i}]", item if ok else ImageError(f"array[{i}] has shape {list(item.shape)}, not {list(chw)}"))
            )
        else:
            try:
                out.append((f"image[{i}]", image_to_array(item, chw[0], chw[1:], resize, f"image[{i}]")))
            except (ImageError, ValueError, OSError) as exc:
                out.append((f"image[{i}]", exc if isinstance(exc, ImageError) else ImageError(f"image[{i}]: {exc}")))
    return out


# ---- evaluation ---------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    n: int
    labels: list[str]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "labels": self.labels,
        }


EPSILON = 1e-7  # Keras's backend epsilon: probabilities are clipped to [eps, 1 - eps] before the log


def evaluate(classifier: Classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Evaluation:
    """Accuracy, mean categorical cross-entropy, per-class accuracy and the confusion matrix (rows: true class)."""
    k = classifier.classes
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise CnnspecError(f"labels must be in 0..{k - 1} for this model's {k} classes; found {int(y.max())}")
    probs = classifier.scores(x, batch_size)
    pred = probs.argmax(axis=1)
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], EPSILON, 1 - EPSILON)).mean())
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = [
        {
            "label": classifier.labels[c],
            "n": int(confusion[c].sum()),
            "accuracy": _ratio(confusion[c, c], confusion[c].sum()),
        }
        for c in range(k)
    ]
    return Evaluation(
        accuracy=float((pred == y).mean()),
        loss=loss,
        n=int(len(y)),
        labels=classifier.labels,
        per_class=per_class,
        confusion=confusion.tolist(),
    )


def _ratio(a: int, b: int) -> float | None:
    return float(a / b) if b else None
