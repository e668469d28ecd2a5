"""Reading Keras model files as untrusted data: a `.keras` zip or a legacy `.h5`, never Keras itself.

What is read: the model's config (JSON), its metadata and its weights as plain float arrays. Nothing in the
file is ever executed or unpickled; size caps are checked before anything is decompressed or allocated, the
zip's member names are checked for path tricks (nothing is extracted under those names), and HDF5 links that
leave the file (external links, external storage) are refused. h5py (`pip install 'cnnspec[keras]'`) reads
the HDF5 weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CnnspecError, UsageError

MAX_FILE = 2 << 30  # protobuf's 2 GiB cap on the compiled model bounds the weights anyway
MAX_CONFIG = 16 << 20
MAX_METADATA = 1 << 20
MAX_WEIGHTS = 2 << 30
MAX_RATIO = 200  # a deflated member expanding more than this is a bomb, not a model
MAX_MEMBERS = 64
MAX_ARRAYS = 20_000
MAX_DEPTH = 32
KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")
FLOAT_KINDS = "f"

Weights = dict[str, list[Any]]
"""Each layer's variables in Keras's order, keyed on the dotted path of layer names ('block.conv2d')."""


class KerasFileError(CnnspecError):
    """A Keras file cnnspec refuses to read."""


@dataclass
class KerasFile:
    path: Path
    format: str
    """'keras' (Keras 3 zip) or 'h5' (Keras 2 / tf.keras full-model HDF5)."""
    config: dict
    metadata: dict = field(default_factory=dict)
    weights: Weights = field(default_factory=dict)
    sha256: str = ""


def read_keras_file(path: str | Path) -> KerasFile:
    """The config, metadata and weights of a `.keras` or `.h5` model file, read with caps."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"'{path}' does not exist")
    if not path.is_file():
        raise UsageError(f"'{path}' is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE:
        raise KerasFileError(f"'{path}' is {size / 2**30:.1f} GiB; the limit is {MAX_FILE >> 30} GiB")
    data = path.read_bytes()[: MAX_FILE + 1]
    digest = hashlib.sha256(data).hexdigest()
    if data.startswith(b"PK"):
        model = _read_zip(path, data)
    elif data.startswith(b"\x89HDF\r\n\x1a\n"):
        model = _read_legacy_h5(path, data)
    else:
        raise KerasFileError(
            f"'{path}' is neither a Keras 3 .keras archive (a zip) nor a Keras 2 .h5 model (HDF5). Hint: save "
            "the model with model.save('model.keras'); SavedModel folders and weights-only files cannot be imported"
        )
    model.sha256 = digest
    return model


# ---- the .keras zip ------------------------------------------------------------------------------


def _read_zip(path: Path, data: bytes) -> KerasFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise KerasFileError(f"'{path}' is not a readable .keras archive: {exc}") from None
    members = _check_members(path, infos)
    missing = [name for name in ("config.json", "model.weights.h5") if name not in members]
    if missing:
        raise KerasFileError(f"'{path}' has no {' and no '.join(missing)}; it is not a Keras 3 model archive")
    config = _json(path, "config.json", _member(archive, members["config.json"], MAX_CONFIG, path))
    metadata = {}
    if "metadata.json" in members:
        metadata = _json(path, "metadata.json", _member(archive, members["metadata.json"], MAX_METADATA, path))
    weights = _keras_weights(path, _member(archive, members["model.weights.h5"], MAX_WEIGHTS, path))
    return KerasFile(path, "keras", _mapping(path, "config.json", config), _mapping_or_empty(metadata), weights)


def _check_members(path: Path, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Member names without path tricks, each once; only Keras's own members are read."""
    if len(infos) > MAX_MEMBERS:
        raise KerasFileError(f"'{path}' has {len(infos)} members; a .keras archive has a handful")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in name or "\x00" in name:
            raise KerasFileError(f"'{path}' has a member with an unsafe path {name!r}; refusing the archive")
        if name in members:
            raise KerasFileError(f"'{path}' has two members named {name!r}; refusing the archive")
        if info.flag_bits & 0x1:
            raise KerasFileError(f"'{path}': member {name!r} is encrypted")
        members[name] = info
    return members


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, path: Path) -> bytes:
    """A member's bytes, refusing it before decompression when its declared size or ratio is too large,
    and while decompressing when it turns out larger than declared."""
    if info.file_size > cap:
        raise KerasFileError(
            f"'{path}': {info.filename} is {info.file_size:,} bytes uncompressed; the limit is {cap:,}"
        )
    if info.compress_size and info.file_size > MAX_RATIO * info.compress_size and info.file_size > (1 << 20):
        raise KerasFileError(
            f"'{path}': {info.filename} expands {info.file_size // info.compress_size}x "
            f"(a zip bomb?); the limit is {MAX_RATIO}x"
        )
    try:
        with archive.open(info) as stream:
            data = stream.read(cap + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise KerasFileError(f"'{path}': cannot read {info.filename}: {exc}") from None
    if len(data) > cap:
        raise KerasFileError(f"'{path}': {info.filename} is larger than its limit of {cap:,} bytes")
    return data


def _json(path: Path, what: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise KerasFileError(f"'{path}': {what} is not valid JSON: {str(exc)[:200]}") from None


def _mapping(path: Path, what: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise KerasFileError(f"'{path}': {what} must hold a JSON object")
    _check_depth(path, what, value, 0)
    return value


def _mapping_or_empty(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _check_depth(path: Path, what: str, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise KerasFileError(f"'{path}': {what} is nested more than {MAX_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        if isinstance(child, (dict, list)):
            _check_depth(path, what, child, depth + 1)


# ---- HDF5 ----------------------------------------------------------------------------------------


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UsageError("reading Keras weights needs h5py: pip install 'cnnspec[keras]'") from None
    return h5py


def _open_h5(path: Path, data: bytes, what: str):
    h5py = _h5py()
    try:
        return h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise KerasFileError(f"'{path}': {what} is not a readable HDF5 file: {exc}") from None


class _Budget:
    """Counts arrays and bytes read from one HDF5 file against the caps."""

    def __init__(self, path: Path) -> None:
        self.path, self.arrays, self.bytes = path, 0, 0

    def read(self, h5py, dataset) -> Any:
        import numpy as np

        if not isinstance(dataset, h5py.Dataset):
            raise KerasFileError(f"'{self.path}': {dataset.name} is not an array")
        if dataset.dtype.kind not in FLOAT_KINDS or dataset.dtype.itemsize > 8:
            raise KerasFileError(f"'{self.path}': weight {dataset.name} has dtype {dataset.dtype}; floats only")
        if dataset.external:
            raise KerasFileError(f"'{self.path}': weight {dataset.name} is stored outside the file; refused")
        self.arrays += 1
        self.bytes += int(np.prod(dataset.shape, dtype=np.int64)) * 4
        if self.arrays > MAX_ARRAYS or self.bytes > MAX_WEIGHTS:
            raise KerasFileError(f"'{self.path}': more weights than the limit ({MAX_ARRAYS:,} arrays, 2 GiB)")
        return np.asarray(dataset[()], dtype=np.float32)


def _child(h5py, group, name: str, path: Path):
    """A member of a group, refusing links that could leave the file."""
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise KerasFileError(f"'{path}': {group.name}/{name} is a {type(link).__name__}; only plain data is read")
    return group[name]


def _keras_weights(path: Path, data: bytes) -> Weights:
    """Keras 3's model.weights.h5: layers/<key>/vars/0, 1, ... with the layer's name in vars' `name`
    attribute; a nested model has its own layers/ group."""
    h5py = _h5py()
    budget = _Budget(path)
    weights: Weights = {}
    try:
        with _open_h5(path, data, "model.weights.h5") as root:
            _walk_layers(h5py, root, "", weights, budget, path, 0)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise KerasFileError(f"'{path}': cannot read model.weights.h5: {exc}") from None
    return weights


def _walk_layers(h5py, group, prefix: str, weights: Weights, budget: _Budget, path: Path, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise KerasFileError(f"'{path}': model.weights.h5 is nested too deeply")
    layers = _child(h5py, group, "layers", path)
    if layers is None:
        return
    for key in list(layers.keys())[:MAX_ARRAYS]:
        layer = _child(h5py, layers, key, path)
        if not isinstance(layer, h5py.Group):
            continue
        variables = _child(h5py, layer, "vars", path)
        name = key
        if isinstance(variables, h5py.Group):
            attr = variables.attrs.get("name")
            name = attr.decode() if isinstance(attr, bytes) else str(attr) if attr is not None else key
            arrays = [budget.read(h5py, _child(h5py, variables, str(i), path)) for i in range(len(variables))]
            if arrays:
                weights[prefix + name] = arrays
        _walk_layers(h5py, layer, f"{prefix}{name}.", weights, budget, path, depth + 1)


def _read_legacy_h5(path: Path, data: bytes) -> KerasFile:
    """Keras 2's full-model HDF5: `model_config` (JSON) as a root attribute, the weights under
    model_weights/<layer>/ in the order of that group's `weight_names` attribute."""
    h5py = _h5py()
    budget = _Budget(path)
    try:
        with _open_h5(path, data, "the file") as root:
            raw = root.attrs.get("model_config")
            if raw is None:
                raise KerasFileError(
                    f"'{path}' is an HDF5 file without a model config (weights only?). Hint: save the whole "
                    "model with model.save('model.keras')"
                )
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if len(text) > MAX_CONFIG:
                raise KerasFileError(f"'{path}': the model config is larger than {MAX_CONFIG:,} bytes")
            config = _mapping(path, "model_config", _json(path, "model_config", text.encode()))
            version = root.attrs.get("keras_version", b"")
            metadata = {"keras_version": version.decode() if isinstance(version, bytes) else str(version)}
            weights = _legacy_weights(h5py, root, budget, path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise KerasFileError(f"'{path}': cannot read the HDF5 model: {exc}") from None
    return KerasFile(path, "h5", config, metadata, weights)


def _legacy_weights(h5py, root, budget: _Budget, path: Path) -> Weights:
    group = _child(h5py, root, "model_weights", path)
    weights: Weights = {}
    if group is None:
        return weights
    for key in list(group.keys())[:MAX_ARRAYS]:
        layer = _child(h5py, group, key, path)
        if not isinstance(layer, h5py.Group):
            continue
        for name in _names(layer.attrs.get("weight_names", [])):
            parts = name.split("/")
            # A nested model's weights are named '<inner layer>/<variable>' (or with the model's name in front).
            owner = key if len(parts) <= 2 or parts[-2] == key else f"{key}.{parts[-2]}"
            node = layer
            for part in parts:
                node = _child(h5py, node, part, path)
                if node is None:
                    raise KerasFileError(f"'{path}': weight {key}/{name} is listed but missing")
            weights.setdefault(owner, []).append(budget.read(h5py, node))
    return weights


def _names(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in list(values)]
