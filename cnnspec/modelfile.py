"""Reading .onnx files that may come from anyone: size cap, parsed from bytes, external data refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import protos as onnx  # the protobuf classes only: `import onnx` costs ~0.65 s (protos.py)
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
        raise ModelError(f"'{path}': model larger than limit ({size / (1 << 30):.1f} GiB; protobuf's limit is 2 GiB)")
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


# ---- pre-checks before onnxruntime ever sees an untrusted model --------------------------------------------------

# What cnnspec emits, plus the plain ops common exporters (torch.onnx, tf2onnx) use for the same classifiers, and
# the standard-domain quantization ops: QDQ models (`export --to int8`, onnxruntime's quantize_static) and
# dynamically quantized ones (quantize_dynamic: DynamicQuantizeLinear + MatMulInteger/ConvInteger).
# Left out on purpose: control flow (Loop/If/Scan), ops that allocate from runtime values (ConstantOfShape,
# Expand, Tile, Range, Resize/Upsample), and anything outside the default domain.
ALLOWED_OPS = frozenset(
    """Conv ConvTranspose MaxPool AveragePool GlobalAveragePool GlobalMaxPool BatchNormalization Gemm MatMul Flatten
    Reshape
    Transpose Squeeze Unsqueeze Concat Identity Dropout Constant Shape Gather Slice Pad
    Relu LeakyRelu Elu Selu Sigmoid HardSigmoid HardSwish Tanh Softmax LogSoftmax Gelu Erf Clip PRelu Softplus
    Add Sub Mul Div Sqrt Pow Exp Log Neg Abs Reciprocal Max Min Sum Mean ReduceMean ReduceMax ReduceSum Cast
    Greater Softsign
    QuantizeLinear DequantizeLinear DynamicQuantizeLinear MatMulInteger ConvInteger QLinearConv QLinearMatMul""".split()
)
MAX_NODES = 100_000
MAX_TENSOR_ELEMENTS = 1 << 29  # 2 GiB of float32: protobuf could not hold more anyway
_WINDOW_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "ConvInteger", "QLinearConv"})
_POSITIVE_INTS = ("strides", "dilations", "kernel_shape", "group")
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


@dataclass(frozen=True)
class ModelInfo:
    """What `run` needs to know about a model that passed the checks."""

    input_name: str
    chw: tuple[int, int, int]
    output_name: str
    classes: int | None  # None when the exporter left the class count symbolic
    metadata: dict[str, str]
    ends_in_softmax: bool
    output_op: str = ""
    """The operator that makes the output ("Sigmoid" for a binary head's probability)."""
    layout: str = "nchw"
    """The input's layout: "nchw", or "nhwc" for channels-last models (Keras, tf2onnx); `chw` is (C, H, W)."""

    def input_batch(self, n: int) -> tuple[int, int, int, int]:
        """The model's own input shape for a batch of n."""
        c, h, w = self.chw
        return (n, h, w, c) if self.layout == "nhwc" else (n, c, h, w)


def check_runnable(model: onnx.ModelProto, source: str, layout: str = "auto") -> ModelInfo:
    """Refuse anything outside what cnnspec can vouch for (RELIABILITY rows 31-35), before onnxruntime."""
    graph = model.graph
    if model.functions:
        raise ModelError(f"'{source}': model-local functions are not supported by cnnspec run")
    if graph.sparse_initializer:
        raise ModelError(f"'{source}': sparse initializers are not supported by cnnspec run")
    if len(graph.node) > MAX_NODES:
        raise ModelError(f"'{source}': {len(graph.node)} nodes; limit {MAX_NODES}")
    for tensor in graph.initializer:
        check_tensor(tensor, source)
    for node in graph.node:
        check_node(node, source)
    return _model_info(model, source, layout)


def check_node(node: onnx.NodeProto, source: str) -> None:
    where = f"'{source}': node '{node.name or node.output[0] if node.output else '?'}'"
    if node.domain not in ("", "ai.onnx") or node.op_type not in ALLOWED_OPS:
        op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        raise ModelError(f"{where}: operator {op} is not supported by cnnspec run (allowed: standard CNN operators)")
    for attr in node.attribute:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or attr.HasField("g"):
            raise ModelError(f"{where}: subgraphs are not supported by cnnspec run")
        if attr.HasField("t"):
            check_tensor(attr.t, source)
        if attr.type == onnx.AttributeProto.SPARSE_TENSOR or attr.HasField("sparse_tensor"):
            raise ModelError(f"'{source}': sparse tensors are not supported by cnnspec run")
    if node.op_type in _WINDOW_OPS:
        _check_window_attrs(node, where)


def _check_window_attrs(node: onnx.NodeProto, where: str) -> None:
    for attr in node.attribute:
        values = list(attr.ints) if attr.ints else [attr.i]
        if attr.name in _POSITIVE_INTS and any(v < 1 for v in values):
            raise ModelError(f"{where}: invalid attribute {attr.name}={values} (every value must be >= 1)")
        if attr.name == "pads" and any(v < 0 for v in values):
            raise ModelError(f"{where}: invalid attribute pads={values} (every value must be >= 0)")
        if attr.name in ("strides", "dilations", "kernel_shape") and len(values) != 2:
            raise ModelError(f"{where}: invalid attribute {attr.name}={values} (cnnspec run takes 2-D windows)")
        if attr.name == "pads" and len(values) != 4:
            raise ModelError(f"{where}: invalid attribute pads={values} (4 values for a 2-D window)")
        if attr.name == "output_shape":  # a ConvTranspose size from the file: cnnspec emits explicit pads instead
            raise ModelError(f"{where}: ConvTranspose output_shape is not supported by cnnspec run (use pads)")
    # ConvTranspose's output_padding adds outputs past the last input: fewer than the stride (PyTorch's rule).
    attrs = {attr.name: list(attr.ints) for attr in node.attribute}
    extra, strides = attrs.get("output_padding"), attrs.get("strides") or [1, 1]
    too_big = extra is not None and any(not 0 <= e < max(s, 1) for e, s in zip(extra, strides, strict=False))
    if extra is not None and (len(extra) != 2 or too_big):
        raise ModelError(f"{where}: invalid attribute output_padding={extra} (2 values, each ≥ 0 and < the stride)")


def _numel(dims) -> int:
    """Elements of a tensor, exact, and counted only until past the limit: float64 overflowed to inf and
    inf x 0 made NaN (found by fuzzing); a plain product of thousands of int64 dims would be slow."""
    if 0 in dims:
        return 0
    numel = 1
    for d in dims:
        numel *= d
        if numel > MAX_TENSOR_ELEMENTS:
            break
    return numel


def check_tensor(t: onnx.TensorProto, source: str) -> None:
    """Sizes must agree with dims, and the data must live in exactly one field."""
    where = f"'{source}': tensor '{t.name}'"
    if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
        raise ModelError(f"'{source}': models with external data are not supported")
    if t.HasField("segment"):
        raise ModelError(f"{where}: segmented tensors are not supported")
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{where}: negative dimension in {list(t.dims)}")
    numel = _numel(t.dims)
    if numel > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{where}: {numel:.3g} elements exceeds the limit {MAX_TENSOR_ELEMENTS:.3g}")
    filled = [name for name in _TYPED_FIELDS if len(getattr(t, name))]
    if t.HasField("raw_data") and filled:
        raise ModelError(f"{where}: ambiguous initializer (both raw_data and {filled[0]} are set)")
    try:
        itemsize = onnx.itemsize(t.data_type)
    except (KeyError, ValueError, TypeError):
        raise ModelError(f"{where}: unknown data type {t.data_type}") from None
    if t.HasField("raw_data") and t.data_type != onnx.TensorProto.STRING:
        have, want = len(t.raw_data), numel * itemsize
    elif filled:
        # complex numbers take two entries per element; float16/bfloat16/int8... are stored one per int32
        per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        have, want = len(getattr(t, filled[0])), numel * per
    else:
        have, want = 0, numel
    if have != want:
        raise ModelError(f"{where}: initializer size mismatch (dims {list(t.dims)} need {want}, found {have})")


def guess_layout(dims: list) -> str:
    """'nhwc' when a 4-d input reads as [N, H, W, C] (C of 1, 3 or 4 last, a larger dimension second)."""
    channels_last = dims[3] in (1, 3, 4) and isinstance(dims[1], int) and dims[1] > 4
    return "nhwc" if channels_last else "nchw"


def _model_info(model: onnx.ModelProto, source: str, layout: str = "auto") -> ModelInfo:
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in constants]
    dims = _dims(inputs[0]) if len(inputs) == 1 else None
    if dims is None or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise ModelError(f"'{source}': model input must be float32 [N,C,H,W] with fixed C,H,W; {_describe(inputs)}")
    if layout == "auto":  # cnnspec's own models are NCHW whatever their sizes; others are guessed
        own = any(p.key == "cnnspec.spec" for p in model.metadata_props)
        layout = "nchw" if own else guess_layout(dims)
    c, h, w = (dims[3], dims[1], dims[2]) if layout == "nhwc" else dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in (c, h, w)):
        raise ModelError(f"'{source}': model input must be float32 [N,C,H,W] with fixed C,H,W; {_describe(inputs)}")
    out_dims = _dims(graph.output[0]) if graph.output else None
    if out_dims is None or len(out_dims) != 2 or graph.output[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"'{source}': model output must be float32 [N, classes]; {_describe(list(graph.output))}")
    classes = out_dims[1] if isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    producer = {n.output[0]: n.op_type for n in graph.node if n.output}
    return ModelInfo(
        input_name=inputs[0].name,
        chw=(c, h, w),
        output_name=graph.output[0].name,
        classes=classes,
        metadata={p.key: p.value for p in model.metadata_props},
        ends_in_softmax=outputs_probabilities(graph),
        output_op=producer.get(graph.output[0].name, ""),
        layout=layout,
    )


def _dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _describe(values: list[onnx.ValueInfoProto]) -> str:
    if not values:
        return "it has none"
    parts = []
    for v in values:
        elem = v.type.tensor_type.elem_type
        # an elem_type unknown to this onnx (found by fuzzing) is shown as its number, not a ValueError
        known = elem in onnx.TensorProto.DataType.values()
        dtype = onnx.TensorProto.DataType.Name(elem).lower() if known and elem else f"type {elem}" if elem else "?"
        dims = _dims(v)
        parts.append(f"'{v.name}' is {dtype}[{', '.join(map(str, dims)) if dims is not None else '?'}]")
    return f"found {len(values)}: " + "; ".join(parts)


# Ops that keep probabilities probabilities: a converted model's Softmax may be followed by these.
PASS_THROUGH = frozenset({"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout",
                          "QuantizeLinear", "DequantizeLinear"})  # fmt: skip


def outputs_probabilities(graph: onnx.GraphProto) -> bool:
    """The first output comes from a Softmax, directly or through ops that keep its values probabilities
    (a float16 converter's Cast, an exporter's Identity/Reshape, a quantizer's Q/DQ pair)."""
    if not graph.output:
        return False
    producer = {out: node for node in graph.node for out in node.output}
    name = graph.output[0].name
    for _ in range(len(graph.node)):
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "Softmax":
            return True
        if node.op_type not in PASS_THROUGH or not node.input:
            return False
        name = node.input[0]
    return False
