"""Reading .onnx files that may come from anyone: size cap, parsed from bytes, external data refused."""

from __future__ import annotations

from pathlib import Path

import onnx

from .errors import ModelError, UsageError

MAX_MODEL_BYTES = 2 << 30  # protobuf cannot hold more in one message


def read_model_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model '{path}' does not exist")
    if path.is_dir():
        raise UsageError(f"model '{path}' is a directory")
    if not path.is_file():
        raise ModelError(f"model '{path}' is not a regular file")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"model '{path}' is {size / (1 << 30):.1f} GiB: larger than limit of 2 GiB")
    with path.open("rb") as f:
        return f.read(MAX_MODEL_BYTES + 1)


def _uses_external_data(model: onnx.ModelProto) -> bool:
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    return any(t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) for t in tensors)


def parse_model(data: bytes, source: str) -> onnx.ModelProto:
    """Parse bytes (never touching external files) and refuse models that reference external data."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf raises DecodeError, RuntimeWarning, ValueError, ... on junk
        raise ModelError(f"'{source}' is not a valid ONNX model (it does not parse as ONNX protobuf)") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"'{source}': model is empty (no graph)")
    if _uses_external_data(model):
        raise ModelError(
            f"'{source}': models with external data are not supported (they can point at any file on disk); "
            "save the model with its weights inside the .onnx file"
        )
    return model


def read_model(path: str | Path) -> onnx.ModelProto:
    return parse_model(read_model_bytes(path), str(path))
