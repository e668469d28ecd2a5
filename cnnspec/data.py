"""Data sets for `evaluate` and `train`: image folders, .npz arrays and MNIST IDX files.

Every loader returns raw pixels (the model preprocesses in-graph) as float32 [N, C, H, W] and int64 labels:
  folder/          one subfolder per class (folder name = class name); images decoded by images.py and resized
                   to the model's H x W (stretch, like Keras's image_dataset_from_directory)
  data.npz         `x` (N,H,W) or (N,H,W,C) raw pixels, `y` (N,) class indices; loaded with allow_pickle=False,
                   so object arrays are refused, never unpickled
  *-images-idx3-ubyte[.gz]   MNIST IDX images; labels from the sibling *-labels-idx1-ubyte[.gz]
  train.csv        rows `path,label` (an optional header `path,label`): image paths relative to the CSV's folder,
                   labels by name (the model's labels, or sorted names) or as class indices, as a pandas
                   dataframe feeds Keras's flow_from_dataframe
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, UsageError

MAX_IDX_BYTES = 1 << 31
MAX_LISTED = 10


@dataclass
class Dataset:
    x: np.ndarray  # float32 [N, C, H, W] raw pixel values
    y: np.ndarray  # int64 [N]
    class_names: list[str]
    warnings: list[str] = field(default_factory=list)
    """What the caller should tell the user: images skipped, classes with no samples."""

    def __len__(self) -> int:
        return len(self.y)


def load_dataset(
    path: str | Path,
    input_shape_hwc: Sequence[int],
    labels: Sequence[str] | None = None,
    num_classes: int | None = None,
    skip_bad_images: bool = False,
) -> Dataset:
    """Load PATH for a model taking `input_shape_hwc`; `labels` (the model's class names) map folder names to
    indices, `num_classes` bounds y. Raises DataError with what is wrong and how to fix it."""
    path = Path(path)
    h, w, c = (int(v) for v in input_shape_hwc)
    classes = num_classes if num_classes is not None else (len(labels) if labels is not None else None)
    if not path.exists():
        raise UsageError(f"data '{path}' does not exist")
    if path.is_dir():
        data = load_folder(path, (c, h, w), labels, classes, skip_bad_images)
    elif path.suffix.lower() == ".npz":
        data = load_npz(path, (c, h, w), labels)
    elif path.suffix.lower() == ".csv":
        data = load_csv(path, (c, h, w), labels, classes, skip_bad_images)
    elif "idx3-ubyte" in path.name:
        data = load_idx(path, (c, h, w), labels)
    else:
        raise DataError(
            f"data '{path}' is not a folder of class subfolders, an .npz file, a .csv of path,label rows or an "
            "MNIST '*-images-idx3-ubyte' file"
        )
    return _checked(data, classes, str(path))


def _checked(data: Dataset, classes: int | None, source: str) -> Dataset:
    if len(data.x) != len(data.y):
        raise DataError(f"'{source}': x has {len(data.x)} samples but y has {len(data.y)}; they must match")
    if len(data.y) == 0:
        raise DataError(f"'{source}': the data set has 0 samples")
    if not np.isfinite(data.x).all():
        bad = int(np.flatnonzero(~np.isfinite(data.x.reshape(len(data.x), -1)).all(axis=1))[0])
        raise DataError(f"'{source}': x contains NaN or infinity (first at sample {bad})")
    if classes is not None:
        if data.y.min() < 0 or data.y.max() >= classes:
            bad = int(data.y[(data.y < 0) | (data.y >= classes)][0])
            raise DataError(
                f"'{source}': label {bad} is out of range: the model has {classes} classes (0..{classes - 1})"
            )
        if len(data.class_names) > classes:
            raise DataError(
                f"'{source}': {len(data.class_names)} classes in the data but the model has {classes} outputs"
            )
        missing = sorted(set(range(classes)) - set(np.unique(data.y).tolist()))
        if missing:
            names = data.class_names if len(data.class_names) == classes else [str(i) for i in range(classes)]
            shown = ", ".join(names[i] for i in missing[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED else "")
            data.warnings.append(
                f"'{source}': {len(missing)} of the model's {classes} classes have no samples here ({shown})"
            )
    return data


# ---- folders of class subfolders --------------------------------------------------------------------------------


def load_folder(
    root: Path, chw: tuple[int, int, int], labels: Sequence[str] | None, classes: int | None, skip_bad: bool
) -> Dataset:
    from .images import IMAGE_SUFFIXES, load_images

    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"'{root}' has no class subfolders: put each class's images in its own folder")
    index = _class_index(root, folders, labels, classes)
    files: list[str] = []
    targets: list[int] = []
    for name in folders:
        found = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, names in os.walk(root / name)
            for f in names
            if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(f"'{root}': class folder '{name}' has no images (allowed: .png, .jpg, .bmp, .gif, ...)")
        files += found
        targets += [index[name]] * len(found)
    arrays = load_images(files, chw)
    bad = [a for a in arrays if isinstance(a, Exception)]
    if bad and not skip_bad:
        listed = "\n  ".join(str(e) for e in bad[:MAX_LISTED])
        raise DataError(f"'{root}': {len(bad)} image(s) cannot be used (skip them with --skip-bad-images):\n  {listed}")
    keep = [i for i, a in enumerate(arrays) if not isinstance(a, Exception)]
    x = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, *chw), np.float32)
    names = list(labels) if labels is not None and set(folders) <= set(labels) else folders
    notes = []
    if bad:
        first = "\n  ".join(str(e) for e in bad[:MAX_LISTED])
        notes.append(f"'{root}': skipped {len(bad)} of {len(arrays)} image(s) that cannot be used:\n  {first}")
    return Dataset(x, np.asarray([targets[i] for i in keep], np.int64), names, notes)


def _class_index(root: Path, folders: list[str], labels: Sequence[str] | None, classes: int | None) -> dict[str, int]:
    """Folder names that are all model labels map by name; otherwise sorted order (Keras's rule)."""
    if labels is not None and set(folders) <= set(labels):
        return {name: list(labels).index(name) for name in folders}
    if labels is not None:
        unknown = [f for f in folders if f not in labels][:MAX_LISTED]
        raise DataError(f"'{root}': class folders {unknown} are not labels of the model (labels: {list(labels)[:20]})")
    if classes is not None and len(folders) != classes:
        raise DataError(
            f"'{root}': {len(folders)} class folders {folders[:MAX_LISTED]} but the model has {classes} outputs"
        )
    return {name: i for i, name in enumerate(folders)}


# ---- .npz -------------------------------------------------------------------------------------------------------


def load_npz(path: Path, chw: tuple[int, int, int], labels: Sequence[str] | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"'{path}': missing array {missing[0]!r} (found: {archive.files}); save x= and y=")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"'{path}': contains an object array; only numeric arrays are loaded (never unpickled)"
            ) from None
        raise DataError(f"'{path}': not a readable .npz ({exc})") from None
    except (OSError, EOFError, KeyError) as exc:
        raise DataError(f"'{path}': not a readable .npz ({exc})") from None
    return Dataset(_pixels(x, chw, str(path)), _labels(y, str(path)), _names(labels, y))


def _pixels(x: np.ndarray, chw: tuple[int, int, int], source: str) -> np.ndarray:
    """(N,H,W) or (N,H,W,C) numeric -> float32 (N,C,H,W), with the model's H, W and C."""
    c, h, w = chw
    if x.dtype.kind not in "uif" and x.dtype != np.bool_:
        raise DataError(f"'{source}': x must be numeric pixels; its dtype is {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"'{source}': x must be (N,H,W) or (N,H,W,C); its shape is {list(x.shape)}")
    if x.shape[1:3] != (h, w):
        raise DataError(
            f"'{source}': images are {x.shape[1]}x{x.shape[2]} but the model takes {h}x{w}; resize them first"
        )
    if x.shape[3] != c:
        raise DataError(f"'{source}': images have {x.shape[3]} channel(s) but the model takes {c}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"'{source}': y must be (N,) class indices; its shape is {list(y.shape)}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DataError(f"'{source}': y must hold whole class indices; found non-integer values")
    elif y.dtype.kind not in "ui" and len(y):
        raise DataError(f"'{source}': y must hold integer class indices; its dtype is {y.dtype}")
    return y.astype(np.int64)


def _names(labels: Sequence[str] | None, y: np.ndarray) -> list[str]:
    if labels is not None:
        return list(labels)
    top = int(y.max()) + 1 if len(y) and y.dtype.kind in "uif" and np.isfinite(y).all() else 0
    return [str(i) for i in range(top)]


# ---- MNIST IDX --------------------------------------------------------------------------------------------------


def load_idx(path: Path, chw: tuple[int, int, int], labels: Sequence[str] | None) -> Dataset:
    label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if label_path == path or not label_path.exists():
        raise DataError(f"'{path}': its labels file '{label_path.name}' is not next to it")
    x = read_idx(path, expect_dims=3)
    y = read_idx(label_path, expect_dims=1)
    return Dataset(_pixels(x, chw, str(path)), y.astype(np.int64), _names(labels, y))


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """IDX: 2 zero bytes, a type code (0x08 = uint8), the rank, big-endian uint32 dims, then the data."""
    raw = _read_capped(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != expect_dims:
        raise DataError(f"'{path}': not an IDX file of uint8 with {expect_dims} dimension(s) (bad header)")
    header = 4 + 4 * expect_dims
    if len(raw) < header:
        raise DataError(f"'{path}': IDX header is truncated")
    dims = struct.unpack(f">{expect_dims}I", raw[4:header])
    count = math.prod(dims)  # exact: three uint32 dims overflow int64 (2^22 x 2^21 x 2^21 wraps to 0)
    if len(raw) - header != count:
        raise DataError(f"'{path}': IDX dims {list(dims)} need {count} bytes of data; found {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, count, header).reshape(dims)


def _read_capped(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_IDX_BYTES + 1)
        else:
            with path.open("rb") as f:
                raw = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise DataError(f"'{path}': cannot be read ({exc})") from None
    if len(raw) > MAX_IDX_BYTES:
        raise DataError(f"'{path}': larger than {MAX_IDX_BYTES >> 30} GiB once decompressed")
    return raw


# ---- CSV of path,label rows -------------------------------------------------------------------------------------

MAX_CSV_BYTES = 64 << 20


def load_csv(
    path: Path, chw: tuple[int, int, int], labels: Sequence[str] | None, classes: int | None, skip_bad: bool
) -> Dataset:
    """`path,label` rows; a row that cannot be used (wrong columns, unknown label, missing or broken image) is
    reported with its line number, like a bad image of a folder (--skip-bad-images leaves such rows out)."""
    from .images import load_images

    rows, bad = _csv_rows(path)
    names = _csv_class_names([label for _, _, label in rows], labels, classes, path)
    files: list[str] = []
    targets: list[int] = []
    lines: list[int] = []
    for line, file, label in rows:
        if label not in names:
            bad.append(f"line {line}: label {label!r} is not a class of the model ({_shown_names(names)})")
        elif not file:
            bad.append(f"line {line}: the path is empty")
        else:
            files.append(os.path.join(path.parent, file))
            targets.append(names[label])
            lines.append(line)
    arrays = load_images(files, chw)
    bad += [f"line {line}: {a}" for line, a in zip(lines, arrays, strict=True) if isinstance(a, Exception)]
    bad.sort(key=lambda text: int(text.split(":")[0].split()[1]))  # by line number
    if bad and not skip_bad:
        listed = "\n  ".join(bad[:MAX_LISTED]) + (
            f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        )
        raise DataError(f"'{path}': {len(bad)} row(s) cannot be used (skip them with --skip-bad-images):\n  {listed}")
    keep = [i for i, a in enumerate(arrays) if not isinstance(a, Exception)]
    x = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, *chw), np.float32)
    return Dataset(x, np.asarray([targets[i] for i in keep], np.int64), list(names))


def _csv_rows(path: Path) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(line number, path, label) per data row (a first row `path,label` is a header), and the malformed rows."""
    import csv
    import io

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CSV_BYTES + 1)
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}': cannot be read as UTF-8 text ({exc})") from None
    if len(raw) > MAX_CSV_BYTES:
        raise DataError(f"'{path}': larger than {MAX_CSV_BYTES >> 20} MiB")
    rows: list[tuple[int, str, str]] = []
    bad: list[str] = []
    try:
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells) or (number == 1 and [c.lower() for c in cells] == ["path", "label"]):
                continue
            if len(cells) != 2:
                bad.append(f"line {number}: expected 2 columns (path,label), found {len(cells)}: {','.join(row)[:80]}")
            else:
                rows.append((number, cells[0], cells[1]))
    except csv.Error as exc:
        raise DataError(f"'{path}': not a valid CSV ({exc})") from None
    if not rows and not bad:
        raise DataError(f"'{path}': no rows; write one `path,label` line per image")
    return rows, bad


def _csv_class_names(found: list[str], labels: Sequence[str] | None, classes: int | None, path: Path) -> dict[str, int]:
    """Label text -> class index: the model's labels by name; else whole numbers as indices; else sorted names."""
    if labels is not None and set(found) & set(labels):
        return {name: i for i, name in enumerate(labels)}
    if all(v.isdigit() for v in found):
        top = classes if classes is not None else max(int(v) for v in found) + 1
        return {str(i): i for i in range(top)}
    names = sorted(set(found))
    if classes is not None and len(names) != classes:
        raise DataError(f"'{path}': {len(names)} label names {names[:MAX_LISTED]} but the model has {classes} outputs")
    return {name: i for i, name in enumerate(names)}


def _shown_names(names: dict[str, int]) -> str:
    shown = list(names)[:MAX_LISTED]
    return ", ".join(shown) + (", ..." if len(names) > MAX_LISTED else "")
