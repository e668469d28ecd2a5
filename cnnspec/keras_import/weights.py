"""Keras weight layouts -> cnnspec's (PyTorch's), per layer kind.

Conv2D          kernel (kh, kw, C/g, F)   -> weight [F, C/g, kh, kw]        (HWIO -> OIHW)
DepthwiseConv2D kernel (kh, kw, C, m)     -> weight [C·m, 1, kh, kw]        (output c·m + j, Keras's order)
SeparableConv2D depthwise as above, pointwise (1, 1, C·m, F) -> [F, C·m, 1, 1]
Conv2DTranspose kernel (kh, kw, F, C)     -> weight [C, F, kh, kw]          (ONNX ConvTranspose's layout)
Dense           kernel (in, out)          -> weight [out, in]; after Flatten the `in` rows are permuted
                                             from Keras's (h, w, c) order to cnnspec's (c, h, w)
BatchNormalization gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var
PReLU           alpha (H, W, C) with shared axes 1 -> weight [C, H, W] (NCHW order)
"""

from __future__ import annotations

import numpy as np

from ..analysis import Report
from ..errors import Issue
from .convert import Origin

PASS_THROUGH = ("Dropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Identity", "Softmax")
"""Layers between a Flatten and a Dense that keep the order of the flat vector and have no weights."""


def convert_weights(report: Report, origins: dict[str, Origin], weights: dict[str, list]) -> tuple[dict, list[Issue]]:
    """Every cnnspec parameter from its Keras variable, shapes checked against the spec's."""
    params: dict[str, np.ndarray] = {}
    issues: list[Issue] = []
    rows = {row.name: row for row in report.layers}
    for row in report.layers:
        if not row.param_shapes:
            continue
        origin = origins.get(row.name)
        arrays = weights.get(origin.weights_key, []) if origin else []
        label = f"layer '{origin.weights_key if origin else row.name}' ({row.type})"
        try:
            local = _layer_weights(row, arrays, _flatten_input(row, rows))
        except (ValueError, IndexError, StopIteration) as exc:
            issues.append(Issue(f"{label}: its weights do not fit the imported layer: {exc}"))
            continue
        for key, full in row.param_names().items():
            value = local.get(key)
            if value is None or tuple(value.shape) != tuple(row.param_shapes[key]):
                got = "missing" if value is None else f"shape {tuple(value.shape)}"
                issues.append(Issue(f"{label}: weight '{key}' is {got}, the spec needs {tuple(row.param_shapes[key])}"))
                continue
            params[full] = np.ascontiguousarray(value, dtype=np.float32)
    return params, issues


def _flatten_input(row, rows) -> tuple[int, int, int] | None:
    """The (H, W, C) image a Dense's input was flattened from, through layers that keep the order."""
    if row.type != "Dense":
        return None
    name = row.inputs[0]
    while name in rows:
        source = rows[name]
        if source.type == "Flatten":
            shape = source.input_shape
            return (shape[0], shape[1], shape[2]) if len(shape) == 3 else None
        if source.type not in PASS_THROUGH:
            return None
        name = source.inputs[0]
    return None


def _layer_weights(row, arrays: list, flattened: tuple[int, int, int] | None) -> dict[str, np.ndarray]:
    layer, kind = row.layer, row.type
    arrays = [np.asarray(a, np.float32) for a in arrays]
    take = iter(arrays)
    out: dict[str, np.ndarray] = {}
    if kind == "Conv2D":
        out["weight"] = next(take).transpose(3, 2, 0, 1)
    elif kind in ("DepthwiseConv2D", "SeparableConv2D"):
        kernel = next(take)  # (kh, kw, C, m): output channel c·m + j
        kh, kw, c, m = kernel.shape
        depthwise = kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]
        if kind == "DepthwiseConv2D":
            out["weight"] = depthwise
        else:
            out["depthwise.weight"] = depthwise
            out["pointwise.weight"] = next(take).transpose(3, 2, 0, 1)
    elif kind == "Conv2DTranspose":
        out["weight"] = next(take).transpose(3, 2, 0, 1)
    elif kind == "Dense":
        kernel = next(take)  # (in, out)
        if flattened is not None:
            h, w, c = flattened
            kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        out["weight"] = kernel.T
    elif kind == "BatchNormalization":
        if layer.scale:
            out["weight"] = next(take)
        if layer.center:
            out["bias"] = next(take)
        out["running_mean"] = next(take)
        out["running_var"] = next(take)
        return out
    elif kind in ("LayerNormalization", "GroupNormalization"):
        if layer.scale:
            out["weight"] = next(take)
        if layer.center:
            out["bias"] = next(take)
        return out
    elif kind == "PReLU":
        alpha = next(take)
        out["weight"] = np.moveaxis(alpha, -1, 0) if alpha.ndim == 3 else alpha
        return out
    if getattr(layer, "use_bias", False):
        out["bias"] = next(take)
    return out
