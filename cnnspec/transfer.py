"""`train --init-from M.onnx`: start training from another model's weights, matched by layer name and shape.

A parameter's name is `<layer>.<key>` in every model cnnspec compiles or trains ('conv2d.weight',
'batch_normalization.running_mean'), so a model's initializers are its state dict. A layer is loaded when every
one of its parameters is found with the same shape (running statistics included); otherwise it keeps its fresh
initialization, typically a new classifier head with another number of classes. Foreign ONNX models whose
initializers follow the same names and PyTorch layouts load the same way. The file is read like any untrusted
model (size cap, no external data) and only its initializers are used: nothing of it is run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .analysis import Report
from .errors import CnnspecError

Params = dict[str, np.ndarray]


@dataclass
class Transfer:
    loaded: list[str] = field(default_factory=list)
    fresh: list[tuple[str, str]] = field(default_factory=list)
    """(layer, why it kept its fresh weights)."""


def model_weights(path: Path) -> Params:
    """The float initializers of an .onnx file by name (as float32)."""
    from onnx import numpy_helper

    from .modelfile import read_model

    model = read_model(path)
    weights = {}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f":
            weights[tensor.name] = array.astype(np.float32)
    return weights


def match(report: Report, weights: Params) -> tuple[Params, Transfer]:
    """The parameters found in `weights` for whole layers, and which layers were loaded or kept fresh."""
    taken: Params = {}
    result = Transfer()
    for row in report.layers:
        names = row.param_names()
        if not names:
            continue
        problems = []
        for key, full in names.items():
            want = tuple(row.param_shapes[key])
            if full not in weights:
                problems.append(f"no {full}")
            elif tuple(weights[full].shape) != want:
                problems.append(f"{full} is {list(weights[full].shape)} there, {list(want)} here")
        if problems:
            result.fresh.append((row.name, "; ".join(problems)))
        else:
            taken |= {full: weights[full] for full in names.values()}
            result.loaded.append(row.name)
    return taken, result


def init_from(path: Path, report: Report, log: Callable[[str], None]) -> Callable[[Params], Params]:
    """Read the model now (errors before training starts); return what turns fresh weights into the start weights."""
    weights = model_weights(path)
    taken, result = match(report, weights)
    if not result.loaded:
        shown = "; ".join(f"{name}: {why}" for name, why in result.fresh[:4])
        raise CnnspecError(
            f"--init-from '{path}': no layer of the spec matches the model's weights by name and shape ({shown}). "
            "Hint: layer names must be the same as in the model's spec (give them name: ...)"
        )

    def apply(fresh: Params) -> Params:
        log(f"init-from {path}: loaded {len(result.loaded)} layer(s): {', '.join(result.loaded)}")
        for name, why in result.fresh:
            log(f"init-from {path}: fresh {name} ({why})")
        return fresh | taken

    return apply
