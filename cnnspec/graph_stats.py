"""What a model's graph really holds, whatever its metadata says: the precision of its weights, the bytes per
data type, the quantization operators, and whether its weights still fit the spec embedded in it.

Used by `inspect` (and by `run` through modelfile to tell probabilities from logits).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

# Standard-domain quantization operators (QDQ from quantize_static, dynamic from quantize_dynamic).
QUANT_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
     "QLinearMatMul"}
)  # fmt: skip
# Ops whose weight is input 1 (input 3 for the QLinear ones: x, x_scale, x_zero_point, w, ...).
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1,
            "QLinearConv": 3, "QLinearMatMul": 3}  # fmt: skip
# Ops a weight passes through on its way from the initializer to the op that uses it.
_WEIGHT_PATH = frozenset({"DequantizeLinear", "Cast", "Identity", "Transpose", "Reshape"})
_PRECISION = {"INT8": "int8", "UINT8": "int8", "FLOAT16": "fp16", "BFLOAT16": "bf16", "FLOAT": "fp32",
              "DOUBLE": "fp64", "INT4": "int4", "UINT4": "int4"}  # fmt: skip


@dataclass
class GraphStats:
    precision: str  # of the weights of Conv/Gemm/MatMul: int8, fp16, fp32, or "mixed (fp32, int8)"
    weight_bytes: dict[str, int]  # data type name (lowercase) -> bytes of initializers
    quantized_ops: dict[str, int]
    kernels: list[tuple[str, int]] = field(default_factory=list)  # (op, elements) of each Conv/Gemm/MatMul weight

    @property
    def total_bytes(self) -> int:
        return sum(self.weight_bytes.values())


def _dtype_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"TYPE{data_type}"


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:  # Constant nodes hold weights too
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    tensors[node.output[0]] = a.t
    size: Counter[str] = Counter()
    for t in tensors.values():
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0
        name = _dtype_name(t.data_type).lower()
        size[{"float": "float32", "double": "float64"}.get(name, name)] += _numel(t.dims) * itemsize
    producer = {out: node for node in graph.node for out in node.output}
    kinds, kernels = set(), []
    for node in graph.node:
        at = WEIGHTED.get(node.op_type)
        if at is None or len(node.input) <= at:
            continue
        weight = _trace(node.input[at], producer, tensors)
        if weight is not None and len(weight.dims) >= 2:
            kinds.add(_PRECISION.get(_dtype_name(weight.data_type), _dtype_name(weight.data_type).lower()))
            kernels.append((node.op_type, _numel(weight.dims)))
    precision = "none" if not kinds else next(iter(kinds)) if len(kinds) == 1 else f"mixed ({', '.join(sorted(kinds))})"
    quant = Counter(n.op_type for n in graph.node if n.op_type in QUANT_OPS and n.domain in ("", "ai.onnx"))
    return GraphStats(precision, dict(size.most_common()), dict(sorted(quant.items())), kernels)


def _trace(name: str, producer: dict, tensors: dict) -> onnx.TensorProto | None:
    for _ in range(8):
        if name in tensors:
            return tensors[name]
        node = producer.get(name)
        if node is None or node.op_type not in _WEIGHT_PATH or not node.input:
            return None
        name = node.input[0]
    return None


def spec_mismatch(stats: GraphStats, spec_kernels: list[int], spec_chw: tuple[int, ...], model: onnx.ModelProto,
                  classes: int) -> str | None:  # fmt: skip
    """Why the graph no longer fits its embedded spec (None when it does): another input or class count, or
    weights that the spec does not have / the graph lost. Precision does not matter (an int8 kernel has the same
    shape); MatMul weights the spec lacks are cnnspec's own constants (UpSampling2D's interpolation matrices)."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] if model.graph.input else []
    if tuple(dims[1:]) != tuple(spec_chw):
        return f"the graph takes input {dims[1:]} but the spec says {list(spec_chw)} (C, H, W)"
    out = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] if model.graph.output else []
    if len(out) != 2 or out[1] != classes:
        return f"the graph outputs {out[1:] or '?'} classes but the spec has {classes}"
    graph = Counter(n for _, n in stats.kernels)
    missing = Counter(spec_kernels) - graph
    extra = graph - Counter(spec_kernels)
    excused = Counter(n for op, n in stats.kernels if op in ("MatMul", "MatMulInteger", "QLinearMatMul"))
    extra -= excused
    if missing or extra:
        parts = [f"{sum(missing.values())} of the spec's weight tensors are not in the graph"] if missing else []
        parts += [f"the graph has {sum(extra.values())} weight tensor(s) the spec does not"] if extra else []
        return "; ".join(parts)
    return None
