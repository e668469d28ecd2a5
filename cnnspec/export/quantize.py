"""`export --to int8`: static QDQ quantization with onnxruntime.quantization, calibrated on the user's data.

Weights int8 per output channel (symmetric), activations uint8 (asymmetric), ranges from calibration data fed
as raw pixels (the model preprocesses itself). Only the ops that gain from int8 are quantized: convolutions,
Gemm/MatMul, pooling and the ReLU family. The in-graph preprocessing (raw 0..255 pixels) and the final Softmax
stay float: quantizing a softmax output leaves a handful of distinct probabilities.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from ..data import Dataset
from ..errors import ModelError, UsageError
from ..files import check_output_path
from .report import DEFAULT_MAX_DROP, ExportResult, gate, measure, write
from .source import (
    Source,
    array_digest,
    first_line,
    load_source,
    prepare,
    preprocessing_nodes,
    quiet,
    restore_contract,
    split_samples,
)

Method = Literal["minmax", "percentile", "entropy"]
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu",
                 "Clip", "LeakyRelu")  # fmt: skip
CALIBRATION_BATCH = 64
# x86 CPUs with these can multiply u8 x s8 into int32 without the saturating 16-bit step of AVX2's vpmaddubsw.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
HINT = "Hint: calibrate on more samples (--samples), try --method percentile or entropy, or export --to fp16."


def needs_reduce_range(machine: str | None = None, cpu_flags: set[str] | None = None) -> bool:
    """7-bit weights on x86 without VNNI: AVX2's u8 x s8 pair sums saturate at 16 bits, and onnxruntime's docs
    advise reduce_range there. ARM and VNNI CPUs take the full 8 bits."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    return not flags & _VNNI_FLAGS


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()  # unknown: the safe choice (reduce_range) follows


def export_int8(
    model: Path,
    output: Path,
    calibration: Path | None = None,
    samples: int = 512,
    method: Method = "minmax",
    eval_data: Path | None = None,
    max_drop: float | None = None,
    scale: float | None = None,
    mean: str | None = None,
    std: str | None = None,
    threads: int | None = None,
) -> ExportResult:
    """Quantize MODEL to int8 with calibration DATA, score it against fp32, gate on max_drop, write OUTPUT."""
    check_output_path(output, not_same_as={"model": model})
    if calibration is None:
        raise UsageError("--to int8 needs --calibration DATA (labelled images as for `cnnspec train`)")
    if samples < 1:
        raise UsageError(f"--samples must be >= 1; got {samples}")
    if method not in ("minmax", "percentile", "entropy"):
        raise UsageError(f"--method must be minmax, percentile or entropy; got {method!r}")
    source = load_source(model, scale, mean, std, threads)
    data = source.load(calibration, "calibration data")
    chosen, rest = split_samples(len(data), samples)
    evaluation, eval_name = _evaluation(source, data, rest, calibration, eval_data)
    if max_drop is not None and evaluation is None:
        raise UsageError("--max-drop needs labelled data to compare on: give --eval DATA")
    calib_x = source.feed(data.x[chosen])
    reduce_range = needs_reduce_range()
    quantized = quantize(source, calib_x, method, reduce_range)
    summary: dict[str, Any] = {
        "format": "QDQ", "weights": "int8 per channel", "activations": "uint8", "reduce_range": reduce_range,
        "method": method, "samples": len(chosen), "data": Path(calibration).name, "data_sha256": array_digest(calib_x),
        "quantized_ops": [op for op in QUANTIZED_OPS],
    }  # fmt: skip
    meta = {"cnnspec.precision": "int8", "cnnspec.calibration": json.dumps(summary, sort_keys=True)}
    out = restore_contract(source, onnx.ModelProto.FromString(quantized), meta)
    result = ExportResult(None, "int8", details={"calibration": summary, "hint": HINT})
    if evaluation is not None:
        result.accuracy = measure(source, out, evaluation, eval_name)
        result.max_drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
        summary["accuracy"] = result.accuracy.as_dict()
        meta["cnnspec.calibration"] = json.dumps(summary, sort_keys=True)
        out = restore_contract(source, onnx.ModelProto.FromString(out), meta)
    gate(result, result.max_drop)
    result.details.pop("hint")
    return write(result, output, out)


def _evaluation(
    source: Source, data: Dataset, rest: np.ndarray, calibration: Path, eval_data: Path | None
) -> tuple[Dataset | None, str]:
    """--eval DATA2, else the calibration data's samples not used for calibration (none: no report)."""
    if eval_data is not None:
        return source.load(eval_data, "--eval data"), Path(eval_data).name
    if len(rest) == 0:
        return None, ""
    held = Dataset(data.x[rest], data.y[rest], data.class_names)
    return held, f"{Path(calibration).name} (held out from calibration)"


class _Batches:
    """onnxruntime's CalibrationDataReader protocol: one feed dict per call, None when done."""

    def __init__(self, name: str, x: np.ndarray, equal_batches: bool = False) -> None:
        self.name, self.x, self.at = name, x, 0
        # NOTE: onnxruntime's histogram calibrators (percentile, entropy) stack every run's outputs into one array,
        # so all batches must have one size: the largest divisor of the sample count up to CALIBRATION_BATCH.
        divisors = [d for d in range(1, CALIBRATION_BATCH + 1) if len(x) % d == 0]
        self.batch = divisors[-1] if equal_batches else CALIBRATION_BATCH

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.at >= len(self.x):
            return None
        batch = self.x[self.at : self.at + self.batch]
        self.at += self.batch
        return {self.name: batch}

    def rewind(self) -> None:
        self.at = 0


def quantize(source: Source, calib_x: np.ndarray, method: Method, reduce_range: bool) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cnnspec-int8-") as tmp:
        prepared = prepare(source.model, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        try:
            with quiet():
                quantize_static(
                    prepared, str(out), _Batches(source.info.input_name, calib_x, method != "minmax"),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=preprocessing_nodes(prepared.graph), calibrate_method=methods[method],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise ModelError(f"onnxruntime's quantizer failed: {first_line(exc)}") from None
        quantized = onnx.load_model(str(out))
    float_logits(quantized.graph)
    return quantized.SerializeToString(deterministic=True)


def float_logits(graph: onnx.GraphProto) -> None:
    """Take out a QuantizeLinear -> DequantizeLinear pair feeding a Softmax: the logits stay float, so the
    probabilities are not computed from 256 levels of logit (the quantizer adds the pair for the op before)."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for x in node.input:
            consumers[x] = consumers.get(x, 0) + 1
    for softmax in [n for n in graph.node if n.op_type in ("Softmax", "LogSoftmax")]:
        dq = producer.get(softmax.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(dq.input[0]) != 1:
            continue
        softmax.input[0] = q.input[0]
        if consumers.get(dq.output[0]) == 1:  # nothing else reads the rounded logits: the pair goes
            graph.node.remove(dq)
            graph.node.remove(q)
