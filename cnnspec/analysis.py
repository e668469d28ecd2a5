"""The shape walk: every layer's output shape, parameters, FLOPs and receptive field, or the first failure.

Pure Python over the validated spec; no numpy or onnx, so `cnnspec validate` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import Issue, SpecError
from .graph import INPUT, Graph, Node, build_graph, param_name
from .layers import Layer, ShapeError
from .shapes import Shape, numel
from .spec import Spec

MAX_PARAMS = 500_000_000  # float32 weights must fit protobuf's 2 GiB cap on one .onnx file
MAX_INPUT_VALUES = 1 << 26  # 64 Mi values per image (e.g. 4096 x 4096 x 4)


@dataclass(frozen=True)
class LayerReport:
    """One node of the graph, analysed: its shapes, parameters, cost and receptive field."""

    index: int
    """The top-level `layers[index]` it comes from (a block use's index for every layer inside it)."""
    name: str
    type: str
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    params: int
    trainable_params: int
    param_shapes: dict[str, Shape]
    flops: int
    padding: str
    receptive_field: tuple[int, int]
    inputs: tuple[str, ...] = (INPUT,)
    layer: Layer | None = None

    @property
    def input_shape(self) -> Shape:
        return self.input_shapes[0]

    @property
    def activation_bytes(self) -> int:
        """float32 bytes of this layer's output for one image."""
        return 4 * numel(self.output_shape)

    def param_names(self) -> dict[str, str]:
        """Parameter key -> full name ('weight' -> 'layer1.0.conv1.weight')."""
        return {key: param_name(self.name, key) for key in self.param_shapes}

    def trainable_keys(self) -> list[str]:
        if self.layer is not None and self.layer.frozen:
            return []
        return [k for k in self.param_shapes if self.layer is None or k not in self.layer.non_trainable]


@dataclass
class Report:
    """The result of walking a spec. `issues` are errors (the spec is invalid); `warnings` are not."""

    spec: Spec
    layers: list[LayerReport] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    graph: Graph = field(default_factory=lambda: Graph((), INPUT))

    @property
    def valid(self) -> bool:
        return not self.issues

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable_params for r in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.layers)

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape if self.layers else self.spec.input_shape

    @property
    def binary(self) -> bool:
        """Keras's binary head: one unit with a sigmoid (probability of the second class), trained with binary
        cross-entropy; it still classifies into 2 classes (labels from the two folders)."""
        last = self.layers[-1].layer if self.layers else None
        return self.output_shape == (1,) and getattr(last, "activation", None) == "sigmoid"

    @property
    def classes(self) -> int:
        """How many classes the network tells apart: its output size, or 2 for a binary head."""
        return 2 if self.binary else self.output_shape[0]

    @property
    def labels(self) -> list[str]:
        """The class names: the spec's, or "0", "1", ... ."""
        return list(self.spec.labels) if self.spec.labels else [str(i) for i in range(self.classes)]

    @property
    def param_shapes(self) -> dict[str, Shape]:
        """Every parameter by full name, in node order (running statistics included): the state dict's layout."""
        return {param_name(r.name, k): s for r in self.layers for k, s in r.param_shapes.items()}

    @property
    def trainable(self) -> list[str]:
        return [param_name(r.name, k) for r in self.layers for k in r.trainable_keys()]

    @property
    def mixes_batch(self) -> bool:
        """Some layer's training forward mixes the samples of a batch (BatchNormalization)."""
        return any(r.layer is not None and r.layer.mixes_batch and not r.layer.frozen for r in self.layers)

    @property
    def frozen_layers(self) -> list[str]:
        """Layers with parameters that `trainable: false` freezes."""
        return [r.name for r in self.layers if r.layer is not None and r.layer.frozen and r.params]


Field = tuple[tuple[int, int], tuple[int, int]]
"""(receptive field, jump): how many input pixels an output pixel sees, and its stride in input pixels."""


def _layer_report(node: Node, shapes: tuple[Shape, ...], fields: list[Field]) -> tuple[LayerReport, Field]:
    layer, shape = node.layer, shapes[0]
    if layer.arity == (1, 1) and len(shapes) != 1:
        names = ", ".join(f"'{n}'" for n in node.inputs)
        raise ShapeError("inputs", f"{layer.type} takes one input but inputs lists {len(shapes)} ({names})",
                         "join them first with a merge layer (Add, Concatenate, ...) and read its output")  # fmt: skip
    if layer.arity[0] > 1 and layer.inputs is None:
        raise ShapeError(
            "inputs",
            f"{layer.type} merges {layer.arity[0]} or more tensors but has no inputs (no implicit 'previous + x')",
            "name every operand: inputs: [a, b]",
        )
    out = layer.infer_shape(shapes)
    params = layer.param_shapes(shape)
    count = sum(numel(s) for s in params.values())
    trainable = 0 if layer.frozen else sum(numel(s) for k, s in params.items() if k not in layer.non_trainable)
    # Across branches the receptive field is the largest over the paths (and the coarsest jump).
    rf = [max(f[0][a] for f in fields) for a in (0, 1)]
    jump = [max(f[1][a] for f in fields) for a in (0, 1)]
    win = layer.window(shape)
    if win is not None:  # rf grows by (k-1)*d input strides; the jump by the stride
        (kh, kw), (sh, sw), (dh, dw) = win
        rf[0], rf[1] = rf[0] + (kh - 1) * dh * jump[0], rf[1] + (kw - 1) * dw * jump[1]
        jump[0], jump[1] = jump[0] * sh, jump[1] * sw
    row = LayerReport(
        node.origin.index, node.name, layer.type, shapes, out, count, trainable, params,
        layer.flops(shape, out), layer.padding_applied(shape), (rf[0], rf[1]), node.inputs, layer,
    )  # fmt: skip
    return row, ((rf[0], rf[1]), (jump[0], jump[1]))


def analyze(spec: Spec) -> Report:
    """Build the graph, then walk it in order; a layer whose inputs failed is skipped (its shapes are unknown)."""
    report = Report(spec)
    report.graph, report.issues = build_graph(spec)
    shape: Shape = spec.input_shape
    if numel(shape) > MAX_INPUT_VALUES:
        report.issues.append(
            Issue(
                f"input.shape {list(shape)} has {numel(shape):,} values per image; the limit is {MAX_INPUT_VALUES:,}",
                None,
                "input.shape",
            )
        )
        return report
    _check_preprocess(spec, report)
    _check_augmentation(report)
    known: dict[str, tuple[Shape, Field]] = {INPUT: (shape, ((1, 1), (1, 1)))}
    warned: set[str] = set()
    for node in report.graph.nodes:
        if any(ref not in known for ref in node.inputs):
            continue
        label = node.origin.label
        try:
            row, receptive = _layer_report(
                node, tuple(known[r][0] for r in node.inputs), [known[r][1] for r in node.inputs]
            )
        except ShapeError as err:
            report.issues.append(Issue(f"{label}: {err.message}. Hint: {err.hint}", node.origin.index, err.field))
            continue
        report.layers.append(row)
        if report.total_params > MAX_PARAMS:
            report.issues.append(
                Issue(
                    f"{label}: the network reaches {report.total_params:.1e} parameters, which exceeds the limit "
                    f"{MAX_PARAMS:.1e} (protobuf's 2 GiB cap on an .onnx file). Hint: fewer units or filters, "
                    "or pooling before Flatten",
                    node.origin.index,
                    None,
                )
            )
            return report
        softmax_inside = getattr(node.layer, "activation", None) == "softmax" and node.name != report.graph.output
        if softmax_inside and _first_copy(node.origin.label, warned):
            report.warnings.append(
                Issue(
                    f"{label}: softmax is usually the last activation; here it is followed by more layers",
                    node.origin.index,
                    "activation",
                )
            )
        known[node.name] = (row.output_shape, receptive)
    _check_output(spec, report)
    _check_keras_habits(spec, report)
    if report.valid and report.output_shape == (1,) and not report.binary:
        report.warnings.append(
            Issue(
                f"{report.graph.nodes[-1].origin.label}: one output unit without a sigmoid is a single class, "
                "which cannot be trained (a binary classifier is Keras's Dense(1, activation='sigmoid') with "
                "binary cross-entropy). Hint: set activation: sigmoid on the last layer, or use units: 2 with "
                "activation: softmax",
                report.layers[-1].index,
                "activation",
            )
        )
    return report


def _check_keras_habits(spec: Spec, report: Report) -> None:
    """Warnings and errors for what someone coming from PyTorch or Keras writes by habit."""
    h, w, c = spec.input_shape
    if h <= 4 and w > 4 and c > 4:  # [1, 28, 28] or [3, 32, 32]: PyTorch's (C, H, W)
        report.warnings.append(
            Issue(
                f"input shape [{h}, {w}, {c}] looks channels-first (C, H, W); cnnspec takes [height, width, "
                f"channels] like Keras. Hint: shape: [{w}, {c}, {h}]",
                None,
                "input.shape",
            )
        )
    training = spec.training
    if training is not None and training.loss == "binary_crossentropy" and report.layers and not report.binary:
        report.issues.append(
            Issue(
                "training.loss binary_crossentropy needs a binary head: a last layer Dense(units: 1, activation: "
                "sigmoid). Hint: with one softmax unit per class, use categorical_crossentropy",
                None,
                "training.loss",
            )
        )


def _check_augmentation(report: Report) -> None:
    """Augmentation layers run in the input pipeline, on the input image: only first, in a chain from `input`."""
    previous, first_other = INPUT, None
    for node in report.graph.nodes:
        if not node.layer.augmentation:
            first_other = first_other or node
            continue
        if first_other is None and node.inputs == (previous,):
            previous = node.name
            continue
        where = f"after '{first_other.name}'" if first_other is not None else f"reading {list(node.inputs)}"
        report.issues.append(
            Issue(
                f"{node.origin.label}: {node.layer.type} is an augmentation layer, which only works on the input "
                f"image: it must come before the first other layer and read the input or the augmentation layer "
                f"before it, but it comes {where}. Hint: move it to the top of layers (Keras's data augmentation "
                "is the first block of a model)",
                node.origin.index,
                None,
            )
        )


def _first_copy(label: str, seen: set[str]) -> bool:
    """Whether this is the first copy of a repeated block to raise a warning here (one warning, not one per copy)."""
    key = re.sub(r" \(copy \d+\)", "", label)
    if key in seen:
        return False
    seen.add(key)
    return True


def _check_preprocess(spec: Spec, report: Report) -> None:
    if spec.preprocess is None:
        return
    channels = spec.input_shape[2]
    for key in ("mean", "std"):
        values = getattr(spec.preprocess, key)
        if len(values) not in (1, channels):
            report.issues.append(
                Issue(
                    f"preprocess.{key} has {len(values)} values but the input has {channels} channel(s). "
                    f"Hint: give one value or {channels}",
                    None,
                    f"preprocess.{key}",
                )
            )
    if any(v <= 0 for v in spec.preprocess.std):
        report.issues.append(
            Issue(
                f"preprocess.std values must be > 0 (pixels are divided by them), got {spec.preprocess.std}. "
                "Hint: use the data's standard deviation per channel, or 1 to leave the scale alone",
                None,
                "preprocess.std",
            )
        )


def _check_output(spec: Spec, report: Report) -> None:
    if report.issues or not report.layers:
        return
    last, last_node = report.layers[-1], report.graph.nodes[-1]
    out = report.output_shape
    if len(out) != 1:
        report.issues.append(
            Issue(
                f"{last_node.origin.label}: the network must end with a flat "
                f"output (classes,) but ends with the image shape {out[0]}x{out[1]}x{out[2]}. Hint: add Flatten "
                "or GlobalAveragePooling2D, then Dense(units=<classes>)",
                last.index,
                None,
            )
        )
    elif report.binary and spec.labels is not None and len(spec.labels) != 2:
        report.issues.append(
            Issue(
                f"labels has {len(spec.labels)} names but a binary head (one sigmoid unit) tells 2 classes apart. "
                "Hint: list two labels, [negative, positive]: the unit gives the probability of the second",
                None,
                "labels",
            )
        )
    elif spec.labels is not None and len(spec.labels) != out[0] and not report.binary:
        report.issues.append(
            Issue(
                f"labels has {len(spec.labels)} names but the last layer '{last.name}' outputs {out[0]} "
                f"values. Hint: set its units to {len(spec.labels)} or list {out[0]} labels",
                None,
                "labels",
            )
        )
    elif spec.labels is not None and len(set(spec.labels)) != len(spec.labels):
        dup = next(x for x in spec.labels if spec.labels.count(x) > 1)
        report.issues.append(
            Issue(
                f"labels lists '{dup}' more than once; each class needs its own name. "
                "Hint: rename or remove the repeated label",
                None,
                "labels",
            )
        )


def expanded_layers(report: Report) -> list[dict]:
    """The graph as a flat spec `layers` list: every layer named by its expanded name, with explicit inputs
    (the form a model's metadata keeps beside the spec as written, blocks unexpanded)."""
    rows = []
    for row in report.layers:
        data = row.layer.model_dump(mode="json", exclude_none=True)
        rows.append(data | {"name": row.name, "inputs": list(row.inputs)})
    return rows


def check(spec: Spec) -> Report:
    """analyze, raising SpecError when the spec is invalid."""
    report = analyze(spec)
    if report.issues:
        raise SpecError(report.issues)
    return report
