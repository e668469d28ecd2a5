"""`cnnspec import`: a Keras model file (Keras 3 `.keras` or Keras 2 `.h5`) as a cnnspec spec with its weights.

Nothing from Keras is imported and nothing in the file is run: archive.py reads the config, metadata and
weights with caps; topology.py reads the wiring; layers.py maps each layer's arguments (refusing, with the
layer named, whatever cnnspec cannot express); convert.py writes the spec data; weights.py converts the
weight layouts. The result validates as any spec does and compiles with the imported weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis import check
from ..errors import Issue, SpecError
from ..spec import Spec, spec_from_data
from .archive import KerasFile, read_keras_file
from .convert import convert
from .topology import KModel, parse_model
from .weights import convert_weights
from .yaml_text import spec_yaml


@dataclass
class Imported:
    spec: Spec
    params: dict[str, np.ndarray]
    yaml: str
    source: str
    """Where the weights came from, as one line of JSON (recorded in the model's metadata)."""
    warnings: list[str] = field(default_factory=list)


def import_keras(path: str | Path, labels: list[str] | None = None) -> Imported:
    """Read a Keras model file and return the equivalent spec, its weights in cnnspec's layouts and its YAML."""
    keras_file = read_keras_file(path)
    model = _model(keras_file)
    conversion = convert(model, keras_file, labels)
    if conversion.issues:
        raise SpecError(_refused(keras_file, conversion.issues))
    spec = spec_from_data(conversion.data, source=f"spec imported from '{keras_file.path.name}'")
    report = check(spec)
    params, issues = convert_weights(report, conversion.origins, keras_file.weights)
    if issues:
        raise SpecError(_refused(keras_file, issues))
    source = _source(keras_file)
    header = [f"imported by `cnnspec import` from {keras_file.path.name}", f"source: {source}"]
    header += [f"warning: {w}" for w in conversion.warnings]
    return Imported(spec, params, spec_yaml(conversion.data, header), source, conversion.warnings)


def _model(keras_file: KerasFile) -> KModel:
    config = keras_file.config
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        kind = config.get("class_name")
        raise SpecError(
            f"'{keras_file.path}' holds a {kind!r}, not a Sequential or Functional model; a subclassed model is "
            "Python code, which cnnspec never runs. Hint: rebuild it with the functional API"
        )
    return parse_model(config)


def _refused(keras_file: KerasFile, issues: list[Issue]) -> list[Issue]:
    head = Issue(f"cannot import '{keras_file.path}' ({len(issues)} problem{'s' if len(issues) > 1 else ''}):")
    return [head, *issues]


def _source(keras_file: KerasFile) -> str:
    version = keras_file.metadata.get("keras_version")
    return json.dumps(
        {
            "format": "keras" if keras_file.format == "keras" else "keras-h5",
            "file": keras_file.path.name,
            "sha256": keras_file.sha256,
            "keras_version": version if isinstance(version, str) else None,
        },
        sort_keys=True,
    )


__all__ = ["Imported", "import_keras"]


def weights_path_for(spec_path: Path) -> Path:
    """Where `cnnspec import` puts the weights when not told: beside the spec, `<spec>.weights.npz`."""
    return spec_path.with_name(spec_path.stem + ".weights.npz")


def import_to_files(
    model: Path,
    spec_out: Path,
    onnx_out: Path | None = None,
    weights_out: Path | None = None,
    labels: list[str] | None = None,
    opset: int | None = None,
) -> list[Path]:
    """`cnnspec import`: write the spec, the weights file and (with `onnx_out`) the compiled model; return
    the paths written. Every output is checked before any work and written atomically."""
    from ..compiler import DEFAULT_OPSET, check_opset, model_bytes
    from ..files import atomic_write, check_output_path
    from ..weights import compile_with_weights, weights_bytes

    weights_out = weights_out or weights_path_for(spec_out)
    outputs = [p for p in (spec_out, weights_out, onnx_out) if p is not None]
    for i, path in enumerate(outputs):
        check_output_path(path, not_same_as={"Keras model": model, **{f"output '{o}'": o for o in outputs[:i]}})
    if len({str(p.resolve()) for p in outputs}) != len(outputs):
        from ..errors import UsageError

        raise UsageError("the spec, weights and --onnx outputs must be three different files")
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    imported = import_keras(model, labels)
    compiled = None
    if onnx_out is not None:
        compiled = model_bytes(compile_with_weights(imported.spec, imported.params, imported.source, opset))
    atomic_write(weights_out, weights_bytes(imported.params, imported.source))
    atomic_write(spec_out, imported.yaml.encode("utf-8"))
    if compiled is not None and onnx_out is not None:
        atomic_write(onnx_out, compiled)
    return outputs
