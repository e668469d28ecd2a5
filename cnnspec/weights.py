"""Weights files: a spec's parameters by full name in an `.npz`, and a model compiled with them.

`cnnspec import` writes one (the Keras weights in cnnspec's layouts) and `cnnspec compile SPEC --weights W.npz`
reads it: the result is byte-identical to the model `cnnspec import --onnx` writes. The file holds one float32
array per parameter of the spec (running statistics included), named as in the model (`conv2d.weight`), and
`cnnspec_source`, a short text saying where the weights came from (recorded in the model's metadata).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .analysis import check
from .compiler import DEFAULT_OPSET, Params, build_inference_model
from .errors import CnnspecError, UsageError
from .files import atomic_write
from .spec import Spec

SOURCE_KEY = "cnnspec_source"
"""Not a parameter name: those always have a dot."""
MAX_WEIGHTS_FILE = 2 << 30


def weights_bytes(params: Params, source: str) -> bytes:
    """The .npz bytes (uncompressed, fixed entry order, so the same weights give the same file)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{SOURCE_KEY: np.asarray(source)}, **params)
    return buffer.getvalue()


def write_weights(path: str | Path, params: Params, source: str) -> None:
    atomic_write(path, weights_bytes(params, source))


def read_weights(path: str | Path) -> tuple[Params, str | None]:
    """The parameters and the source text of a weights file; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file '{path}' does not exist or is not a file")
    if path.stat().st_size > MAX_WEIGHTS_FILE:
        raise CnnspecError(f"weights file '{path}' is larger than {MAX_WEIGHTS_FILE >> 30} GiB")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CnnspecError(f"weights file '{path}' is not a readable .npz: {exc}") from None
    source = arrays.pop(SOURCE_KEY, None)
    params: Params = {}
    for key, value in arrays.items():
        if value.dtype.kind != "f":
            raise CnnspecError(f"weights file '{path}': '{key}' has dtype {value.dtype}; float arrays only")
        params[key] = np.ascontiguousarray(value, dtype=np.float32)
    return params, None if source is None else str(source)


def compile_with_weights(
    spec: Spec, params: Params, source: str | None = None, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """The inference model of `spec` carrying `params`, which must be exactly the spec's parameters."""
    report = check(spec)
    expected = report.param_shapes
    missing = [name for name in expected if name not in params]
    extra = [name for name in params if name not in expected]
    wrong = [
        f"'{name}' is {tuple(params[name].shape)}, the spec needs {tuple(shape)}"
        for name, shape in expected.items()
        if name in params and tuple(params[name].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        problems.append(f"missing {', '.join(missing[:5])}{more}")
    if extra:
        problems.append(f"not in the spec: {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
    problems += wrong[:5]
    if problems:
        raise CnnspecError("the weights do not fit the spec: " + "; ".join(problems))
    ordered = {name: params[name] for name in expected}
    model = build_inference_model(spec, report, ordered, opset)
    if source is not None:
        props = {p.key: p.value for p in model.metadata_props}
        helper.set_model_props(model, {**props, "cnnspec.weights_source": source})
    return model
