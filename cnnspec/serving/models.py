"""The served models: one shared onnxruntime session per model, and one inference request run against it.

No web framework here: `ServedModel.infer` takes a parsed InferRequest and returns the outputs, raising
ProtocolError for anything the client got wrong. onnxruntime's `InferenceSession.run` is thread-safe, so the
server runs requests on a thread pool against the one session (no copies per request or per thread).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CnnspecError, UsageError
from ..images import ImageError, decode, image_to_array
from ..runtime import Classifier, softmax
from .protocol import InferRequest, OutputRequest, ProtocolError, Tensor, classification_strings

IMAGE_INPUT = "image"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20
    max_elements: int = 1 << 24  # per input tensor, and the pixels an `image` batch decodes to
    max_images: int = 256  # encoded images in one request
    timeout_s: float = 30.0


class ServedModel:
    """A model under a name: its Classifier (labels, input contract, the shared session) and the protocol view."""

    def __init__(self, name: str, path: Path, device: str = "cpu", threads: int | None = None) -> None:
        self.name = name
        self.classifier = Classifier(path, device=device, threads=threads)
        self.session = self.classifier.session  # created now, after the sandboxed probe, so `ready` means ready
        self.input_name = self.classifier.info.input_name
        self.output_name = self.classifier.info.output_name
        self.labels = self.classifier.labels

    def metadata(self) -> dict[str, Any]:
        c, h, w = self.classifier.chw
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": self.input_name, "datatype": "FP32", "shape": [-1, c, h, w]},
                {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, self.classifier.classes]}],
            "labels": self.labels,
        }

    # ---- one request ----------------------------------------------------------------------------------------

    def infer(self, request: InferRequest, limits: Limits, cancel: Any = None) -> list[tuple[str, np.ndarray, bool]]:
        """The outputs of one request as (name, array, binary). `cancel` is onnxruntime RunOptions to terminate."""
        if len(request.inputs) != 1:
            names = ", ".join(t.name for t in request.inputs)
            raise ProtocolError(f"send exactly one input, '{self.input_name}' or '{IMAGE_INPUT}'; got {names}")
        x = self._pixels(request.inputs[0], limits)
        _test_hook()
        try:
            raw = self.session.run([self.output_name], {self.input_name: x}, cancel)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types; a terminate lands here
            if cancel is not None and cancel.terminate:
                raise ProtocolError(
                    f"inference took longer than the {limits.timeout_s:g} s request timeout", 504
                ) from None
            raise ProtocolError(f"onnxruntime failed on this input: {str(exc).splitlines()[0][:300]}", 500) from None
        return [self._output(o, raw) for o in self._wanted(request)]

    def _wanted(self, request: InferRequest) -> list[OutputRequest]:
        if request.outputs is None:
            return [OutputRequest(self.output_name, request.binary_output)]
        for out in request.outputs:
            if out.name != self.output_name:
                raise ProtocolError(f"unknown output '{out.name[:100]}'; model '{self.name}' has '{self.output_name}'")
        return request.outputs

    def _output(self, out: OutputRequest, raw: np.ndarray) -> tuple[str, np.ndarray, bool]:
        if out.classification is None:
            return out.name, raw, out.binary
        scores = raw if self.classifier.info.ends_in_softmax else softmax(raw)
        return out.name, classification_strings(scores, out.classification, self.labels), out.binary

    def _pixels(self, tensor: Tensor, limits: Limits) -> np.ndarray:
        if tensor.name == IMAGE_INPUT and tensor.datatype == "BYTES":
            return self._decode(tensor.value, limits)
        if tensor.name != self.input_name:
            raise ProtocolError(
                f"unknown input '{tensor.name[:100]}'; model '{self.name}' takes '{self.input_name}' (FP32) "
                f"or '{IMAGE_INPUT}' (BYTES)"
            )
        if tensor.datatype != "FP32":
            raise ProtocolError(f"input '{self.input_name}' must be FP32; got {tensor.datatype}")
        chw = self.classifier.chw
        if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != chw:
            raise ProtocolError(
                f"input '{self.input_name}' must have shape [N, {', '.join(map(str, chw))}]; got {tensor.shape}"
            )
        if tensor.shape[0] == 0:
            raise ProtocolError(f"input '{self.input_name}' has an empty batch")
        if not np.isfinite(tensor.value).all():
            raise ProtocolError(f"input '{self.input_name}' contains NaN or infinite values")
        return np.ascontiguousarray(tensor.value, dtype=np.float32)

    def _decode(self, images: list[bytes], limits: Limits) -> np.ndarray:
        c, h, w = self.classifier.chw
        if not images:
            raise ProtocolError(f"input '{IMAGE_INPUT}' has no images")
        if len(images) > limits.max_images or len(images) * c * h * w > limits.max_elements:
            raise ProtocolError(f"{len(images)} images in one request; limit {limits.max_images}", 413)
        arrays = []
        for i, data in enumerate(images):
            source = f"{IMAGE_INPUT}[{i}]"
            try:
                img = decode(data, source, (h, w), "L" if c == 1 else "RGB")
                arrays.append(image_to_array(img, c, (h, w), "stretch", source))
            except ImageError as exc:
                raise ProtocolError(str(exc)) from None
            except MemoryError:
                raise ProtocolError(f"'{source}': not enough memory to decode this image", 413) from None
        return np.stack(arrays)


def run_options() -> Any:
    """A request's onnxruntime RunOptions: setting `terminate` on it stops that run (the request timeout)."""
    import onnxruntime as ort

    return ort.RunOptions()


def load_models(paths: list[Path], name: str | None, device: str, threads: int | None) -> dict[str, ServedModel]:
    """Each model under its file's stem (`--name` renames a single model); two models may not share a name."""
    if name is not None and len(paths) != 1:
        raise UsageError("--name renames a single model; with several models each is served under its file's stem")
    models: dict[str, ServedModel] = {}
    for path in paths:
        key = name or path.stem
        if not key or "/" in key or len(key) > 200:
            raise UsageError(f"model name {key!r} must be 1-200 characters without '/'")
        if key in models:
            raise UsageError(f"two models would be served as '{key}' ({models[key].classifier.path} and {path})")
        models[key] = ServedModel(key, path, device, threads)
    return models


def read_api_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --api-key-file '{path}': {exc}") from None
    if len(key) < 16 or any(ch.isspace() for ch in key):
        raise CnnspecError(f"--api-key-file '{path}': the key must be one line of at least 16 characters, no spaces")
    return key


_hook_lock = threading.Lock()


def _test_hook() -> None:
    """CNNSPEC_TEST_HOOK=serve_slow:<file>: touch <file>, then take 2 s (the shutdown and timeout tests)."""
    hook = os.environ.get("CNNSPEC_TEST_HOOK", "")
    if hook.startswith("serve_slow:"):
        with _hook_lock:
            Path(hook.split(":", 1)[1]).touch()
        time.sleep(2.0)
