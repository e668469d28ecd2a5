"""The KServe v2 / Open Inference Protocol's infer request and response, JSON and Triton's binary tensor extension.

Pure data handling (no web framework, no onnxruntime), so every malformed request is a unit test away.

Wire format (https://github.com/kserve/open-inference-protocol, Triton's binary_data extension):
- a JSON body `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?}`, or
- `Inference-Header-Content-Length: L`: the first L bytes are that JSON, and an input whose
  `parameters.binary_data_size` is B takes the next B bytes of the rest, in input order. FP32 is little-endian;
  BYTES elements are each a 4-byte little-endian length followed by the bytes.
- An output is sent binary when its `parameters.binary_data` is true, or when the request's
  `parameters.binary_data_output` is true and the output does not say otherwise.
- `parameters.classification: k` on an output (Triton's classification extension) returns BYTES strings
  "score:index:label", the top k per row, instead of the scores.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_BYTES = 16 << 20  # the JSON part: a JSON tensor costs ~30 bytes of Python objects per number


class ProtocolError(Exception):
    """A request the server refuses; `status` is the HTTP status (400, 404 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    value: Any  # np.ndarray for FP32, list[bytes] for BYTES


@dataclass
class OutputRequest:
    name: str
    binary: bool
    classification: int | None = None


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[OutputRequest] | None  # None: every output, in the default form
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_request(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """An InferRequest from the body and the Inference-Header-Content-Length header (None when absent)."""
    json_part, binary = _split(body, header_length)
    doc = _load_json(json_part)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    offset = 0
    inputs = []
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _parse_input(raw, i, binary, offset, max_elements)
        inputs.append(tensor)
    if offset != len(binary):
        raise ProtocolError(
            f"the binary part has {len(binary)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    params = _params(doc, "the request")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output must be true or false")
    outputs = _parse_outputs(doc.get("outputs"), binary_output)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    return InferRequest(request_id, inputs, outputs, binary_output, params)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer; got {header_length[:40]!r}") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
    return body[:n], body[n:]


def _load_json(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_JSON_BYTES:
        raise ProtocolError(
            f"the JSON part is {len(data) / (1 << 20):.1f} MiB; limit {MAX_JSON_BYTES >> 20} MiB "
            "(send large tensors with the binary tensor extension)",
            413,
        )
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON in the request: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    return doc


def _params(doc: dict[str, Any], where: str) -> dict[str, Any]:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"'parameters' of {where} must be an object")
    return params


def _parse_shape(raw: Any, where: str, max_elements: int) -> tuple[list[int], int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise ProtocolError(f"{where}: 'shape' must be a list of integers; got {str(raw)[:80]}")
    if any(d < 0 for d in raw):
        raise ProtocolError(f"{where}: 'shape' has a negative dimension: {raw}")
    count = math.prod(raw)
    if count > max_elements:
        raise ProtocolError(f"{where}: shape {raw} has {count:,} elements; limit {max_elements:,}", 413)
    return raw, count


def _parse_input(raw: Any, i: int, binary: bytes, offset: int, max_elements: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"inputs[{i}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"inputs[{i}] has no 'name'")
    where = f"input '{name[:100]}'"
    datatype = raw.get("datatype")
    if datatype not in ("FP32", "BYTES"):
        raise ProtocolError(f"{where}: datatype must be FP32 (pixels) or BYTES (encoded images); got {datatype!r}")
    shape, count = _parse_shape(raw.get("shape"), where, max_elements)
    size = _params(raw, where).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size!r} does not fit the {len(binary)}-byte binary part")
        chunk = binary[offset : offset + size]
        offset += size
        value = _fp32_from_bytes(chunk, shape, count, where) if datatype == "FP32" else _bytes_elements(chunk, where)
    else:
        if "data" not in raw:
            raise ProtocolError(f"{where}: no 'data' and no binary_data_size")
        value = (
            _fp32_from_json(raw["data"], shape, count, where) if datatype == "FP32" else _bytes_json(raw["data"], where)
        )
    if datatype == "BYTES" and len(value) != count:
        raise ProtocolError(f"{where}: shape {shape} has {count} elements but {len(value)} were sent")
    return Tensor(name, datatype, shape, value), offset


def _fp32_from_bytes(chunk: bytes, shape: list[int], count: int, where: str) -> np.ndarray:
    if len(chunk) != 4 * count:
        raise ProtocolError(f"{where}: shape {shape} needs {4 * count} bytes of FP32; got {len(chunk)}")
    return np.frombuffer(chunk, dtype="<f4").reshape(shape).astype(np.float32)


def _fp32_from_json(data: Any, shape: list[int], count: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"{where}: 'data' must be numbers (a flat or nested list)") from None
    if arr.size != count:
        raise ProtocolError(f"{where}: shape {shape} has {count} elements but 'data' has {arr.size}")
    return arr.reshape(shape)


def _bytes_elements(chunk: bytes, where: str) -> list[bytes]:
    """Triton's BYTES serialization: each element is <uint32 little-endian length><bytes>."""
    out, pos = [], 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise ProtocolError(f"{where}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", chunk, pos)
        if pos + 4 + n > len(chunk):
            raise ProtocolError(f"{where}: a BYTES element says {n} bytes but only {len(chunk) - pos - 4} remain")
        out.append(chunk[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _bytes_json(data: Any, where: str) -> list[bytes]:
    """JSON BYTES elements are strings; an encoded image, being binary, is sent base64-encoded."""
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ProtocolError(f"{where}: BYTES 'data' must be base64 strings")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{where}: BYTES 'data' in JSON must be base64-encoded") from None
    return out


def _parse_outputs(raw: Any, binary_default: bool) -> list[OutputRequest] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{i}] must be an object with a 'name'")
        params = _params(item, f"outputs[{i}]")
        binary = params.get("binary_data", binary_default)
        k = params.get("classification")
        if not isinstance(binary, bool):
            raise ProtocolError(f"outputs[{i}]: binary_data must be true or false")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ProtocolError(f"outputs[{i}]: classification must be an integer >= 1; got {k!r}")
        out.append(OutputRequest(item["name"], binary, k))
    return out


# ---- responses --------------------------------------------------------------------------------------------------


def classification_strings(scores: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: the top k of each row as "score:index:label", best first."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = [[f"{row[j]:f}:{j}:{labels[j]}" for j in idx] for row, idx in zip(scores, order, strict=True)]
    return np.array(rows, dtype=object).reshape(len(rows), k)


def encode_response(
    model: str, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": []}
    if request_id is not None:
        doc["id"] = request_id
    blobs = []
    for name, arr, binary in outputs:
        datatype = "BYTES" if arr.dtype == object else "FP32"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _bytes_blob(arr) if datatype == "BYTES" else arr.astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = arr.reshape(-1)
            entry["data"] = [x.decode() if isinstance(x, bytes) else x for x in flat.tolist()]
        doc["outputs"].append(entry)
    header = json.dumps(doc).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _bytes_blob(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)
