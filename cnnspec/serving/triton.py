"""`cnnspec export M.onnx --to triton -o REPO`: a Triton Inference Server model repository (ONNX Runtime backend).

    REPO/N/config.pbtxt    the model configuration (protobuf text format of Triton's ModelConfig)
    REPO/N/1/model.onnx    the model, byte for byte
    REPO/N/labels.txt      one label per line: Triton's classification extension reads it (label_filename)

The configuration is written out field by field from what the checked model says (names, FP32, C/H/W, classes),
with dynamic batching on and one instance_group for the device. The tests parse it with the ModelConfig message
that tritonclient ships, so a misspelled field or a bad enum fails there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CnnspecError, ModelError, UsageError
from ..files import atomic_write
from ..modelfile import check_runnable, parse_model, read_model_bytes

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True)
class TritonOptions:
    repository: Path
    name: str
    max_batch_size: int = 64
    instances: int = 1
    device: str = "cpu"
    queue_delay_us: int = 100


def export_triton(model_path: Path, options: TritonOptions) -> list[Path]:
    """Write the repository entry for one model; returns the files written."""
    _check_options(options)
    data = read_model_bytes(model_path)
    model = parse_model(data, str(model_path))
    info = check_runnable(model, str(model_path))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if options.max_batch_size > 0 and not batch_dim.dim_param:
        raise ModelError(
            f"'{model_path}': the batch dimension is fixed at {batch_dim.dim_value}, so Triton cannot batch it; "
            "use --max-batch-size 0"
        )
    classes = info.classes or _output_classes(model, model_path)
    labels = _labels(info.metadata.get("cnnspec.labels"), classes)
    fixed_batch = [batch_dim.dim_value] if options.max_batch_size == 0 else []
    config = config_text(options, info.input_name, [*fixed_batch, *info.chw], info.output_name,
                         [*fixed_batch, classes])  # fmt: skip
    folder = options.repository / options.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    files = [folder / "1" / "model.onnx", folder / "labels.txt", folder / "config.pbtxt"]
    atomic_write(files[0], data)
    atomic_write(files[1], ("\n".join(labels) + "\n").encode())
    atomic_write(files[2], config.encode())  # last: Triton loads a model folder once its config is there
    return files


def _check_options(options: TritonOptions) -> None:
    if not _NAME.fullmatch(options.name):
        raise UsageError(f"--name must be 1-128 letters, digits, '_', '.' or '-'; got {options.name!r}")
    if not 0 <= options.max_batch_size <= 1 << 20:
        raise UsageError(f"--max-batch-size must be 0 (no batching) to 1048576; got {options.max_batch_size}")
    if not 1 <= options.instances <= 256:
        raise UsageError(f"--instances must be 1 to 256; got {options.instances}")
    if options.device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda; got {options.device!r}")
    repo = options.repository
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"-o '{repo}' is a file; a Triton model repository is a folder")
    if not repo.parent.is_dir():
        raise UsageError(f"cannot write '{repo}': directory '{repo.parent}' does not exist; create it first")


def _output_classes(model: Any, path: Path) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ModelError(f"'{path}': the output must be [N, classes] with a fixed class count for Triton")
    return int(dims[1].dim_value)


def _labels(raw: str | None, classes: int) -> list[str]:
    try:
        labels = json.loads(raw) if raw else None
    except ValueError:
        labels = None
    if not isinstance(labels, list) or len(labels) != classes or not all(isinstance(x, str) for x in labels):
        return [str(i) for i in range(classes)]
    if any("\n" in x or "\r" in x for x in labels):
        raise CnnspecError("a label contains a line break; labels.txt holds one label per line")
    return labels


def _quote(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes are a subset it accepts for these names)."""
    return json.dumps(text, ensure_ascii=True)


def config_text(options: TritonOptions, input_name: str, input_dims: list[int], output_name: str,
                output_dims: list[int]) -> str:  # fmt: skip
    kind = "KIND_GPU" if options.device == "cuda" else "KIND_CPU"
    lines = [
        f"name: {_quote(options.name)}",
        'backend: "onnxruntime"',
        f"max_batch_size: {options.max_batch_size}",
        "input [",
        f"  {{ name: {_quote(input_name)} data_type: TYPE_FP32 dims: {input_dims} }}",
        "]",
        "output [",
        f'  {{ name: {_quote(output_name)} data_type: TYPE_FP32 dims: {output_dims} label_filename: "labels.txt" }}',
        "]",
        f"instance_group [ {{ count: {options.instances} kind: {kind}{' gpus: [0]' if kind == 'KIND_GPU' else ''} }} ]",
        "version_policy { latest { num_versions: 1 } }",
    ]
    if options.max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}")
    return "\n".join(lines) + "\n"


def export_command(
    model: Path, output: Path, name: str | None, max_batch_size: int, instances: int, device: str, as_json: bool
) -> None:
    """The CLI's `export --to triton`: every option handled here, so the command itself stays one call."""
    import sys

    options = TritonOptions(output, name or model.stem, max_batch_size, instances, device)
    files = export_triton(model, options)
    if as_json:
        doc = {"to": "triton", "repository": str(output), "name": options.name,
               "max_batch_size": max_batch_size, "files": [str(f) for f in files]}  # fmt: skip
        print(json.dumps(doc))
    else:
        for f in files:
            print(f"wrote {f} ({f.stat().st_size:,} bytes)", file=sys.stderr)
