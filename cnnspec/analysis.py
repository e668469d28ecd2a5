"""The shape walk: every layer's output shape, parameters, FLOPs and receptive field, or the first failure.

Pure Python over the validated spec; no numpy or onnx, so `cnnspec validate` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Issue, SpecError
from .layers import Layer, ShapeError
from .shapes import Shape, numel
from .spec import Spec, layer_label, layer_names

MAX_PARAMS = 500_000_000  # float32 weights must fit protobuf's 2 GiB cap on one .onnx file
MAX_INPUT_VALUES = 1 << 26  # 64 Mi values per image (e.g. 4096 x 4096 x 4)


@dataclass(frozen=True)
class LayerReport:
    index: int
    name: str
    type: str
    input_shape: Shape
    output_shape: Shape
    params: int
    trainable_params: int
    param_shapes: dict[str, Shape]
    flops: int
    padding: str
    receptive_field: tuple[int, int]

    @property
    def activation_bytes(self) -> int:
        """float32 bytes of this layer's output for one image."""
        return 4 * numel(self.output_shape)


@dataclass
class Report:
    """The result of walking a spec. `issues` are errors (the spec is invalid); `warnings` are not."""

    spec: Spec
    layers: list[LayerReport] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

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
    def labels(self) -> list[str]:
        """The class names: the spec's, or "0", "1", ... ."""
        return list(self.spec.labels) if self.spec.labels else [str(i) for i in range(self.output_shape[0])]


def _layer_report(index: int, name: str, layer: Layer, shape: Shape, rf: list[int], jump: list[int]) -> LayerReport:
    out = layer.output_shape(shape)
    shapes = layer.param_shapes(shape)
    params = sum(numel(s) for s in shapes.values())
    trainable = sum(numel(s) for k, s in shapes.items() if k not in layer.non_trainable)
    win = layer.window(shape)
    if win is not None:  # rf grows by (k-1)*d input strides; the jump by the stride
        (kh, kw), (sh, sw), (dh, dw) = win
        rf[0], rf[1] = rf[0] + (kh - 1) * dh * jump[0], rf[1] + (kw - 1) * dw * jump[1]
        jump[0], jump[1] = jump[0] * sh, jump[1] * sw
    return LayerReport(
        index,
        name,
        layer.type,
        shape,
        out,
        params,
        trainable,
        shapes,
        layer.flops(shape, out),
        layer.padding_applied(shape),
        (rf[0], rf[1]),
    )


def analyze(spec: Spec) -> Report:
    """Walk the layers; stop at the first shape failure (later shapes are unknown)."""
    report = Report(spec)
    names = layer_names(spec.layers)
    _check_names(spec, names, report)
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
    rf, jump = [1, 1], [1, 1]
    for index, (layer, name) in enumerate(zip(spec.layers, names, strict=True)):
        label = layer_label(index, layer.type, name)
        try:
            row = _layer_report(index, name, layer, shape, rf, jump)
        except ShapeError as err:
            report.issues.append(Issue(f"{label}: {err.message}. Hint: {err.hint}", index, err.field))
            return report
        report.layers.append(row)
        if report.total_params > MAX_PARAMS:
            report.issues.append(
                Issue(
                    f"{label}: the network reaches {report.total_params:.1e} parameters, which exceeds the limit "
                    f"{MAX_PARAMS:.1e} (protobuf's 2 GiB cap on an .onnx file). Hint: fewer units or filters, "
                    "or pooling before Flatten",
                    index,
                    None,
                )
            )
            return report
        if getattr(layer, "activation", None) == "softmax" and index != len(spec.layers) - 1:
            report.warnings.append(
                Issue(
                    f"{label}: softmax is usually the last activation; here it is followed by more layers",
                    index,
                    "activation",
                )
            )
        shape = row.output_shape
    _check_output(spec, report, names)
    return report


def _check_names(spec: Spec, names: list[str], report: Report) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            report.issues.append(
                Issue(
                    f"{layer_label(index, spec.layers[index].type, name)}: duplicate layer name '{name}' "
                    f"(also layers[{seen[name]}]). Hint: give each layer its own name",
                    index,
                    "name",
                )
            )
        seen.setdefault(name, index)


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


def _check_output(spec: Spec, report: Report, names: list[str]) -> None:
    if report.issues:
        return
    last = len(spec.layers) - 1
    out = report.output_shape
    if len(out) != 1:
        report.issues.append(
            Issue(
                f"{layer_label(last, spec.layers[last].type, names[last])}: the network must end with a flat "
                f"output (classes,) but ends with the image shape {out[0]}x{out[1]}x{out[2]}. Hint: add Flatten "
                "or GlobalAveragePooling2D, then Dense(units=<classes>)",
                last,
                None,
            )
        )
    elif spec.labels is not None and len(spec.labels) != out[0]:
        report.issues.append(
            Issue(
                f"labels has {len(spec.labels)} names but the last layer '{names[last]}' outputs {out[0]} "
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


def check(spec: Spec) -> Report:
    """analyze, raising SpecError when the spec is invalid."""
    report = analyze(spec)
    if report.issues:
        raise SpecError(report.issues)
    return report
