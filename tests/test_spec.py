"""The spec models: Keras's default names, the Pydantic error mapping, parameter counts against Keras's
formulas (written here), the seed network of issue 2, warnings, and the files shipped in specs/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cnnspec.analysis import analyze, check
from cnnspec.errors import SpecError
from cnnspec.layers import LAYERS_BY_TYPE
from cnnspec.spec import Spec, issues_from_validation_error, layer_names, load_spec, spec_from_data, spec_json_schema

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.yaml"))


FLAT = {"type": "Flatten"}


def make(layers: list[dict], shape: list[int] | None = None, **top) -> dict:
    return {"name": "t", "input": {"shape": shape or [28, 28, 1]}, "layers": layers, **top}


def report_of(layers: list[dict], shape: list[int] | None = None, **top):
    return analyze(spec_from_data(make(layers, shape, **top)))


# ---- names -------------------------------------------------------------------------------------------

KERAS_PREFIX = {  # what keras.layers.X().name starts as in a fresh model
    "Conv2D": "conv2d",
    "DepthwiseConv2D": "depthwise_conv2d",
    "SeparableConv2D": "separable_conv2d",
    "Conv2DTranspose": "conv2d_transpose",
    "MaxPooling2D": "max_pooling2d",
    "AveragePooling2D": "average_pooling2d",
    "GlobalAveragePooling2D": "global_average_pooling2d",
    "GlobalMaxPooling2D": "global_max_pooling2d",
    "Flatten": "flatten",
    "Dense": "dense",
    "Dropout": "dropout",
    "Activation": "activation",
    "BatchNormalization": "batch_normalization",
    "ZeroPadding2D": "zero_padding2d",
    "Add": "add",
    "Subtract": "subtract",
    "Multiply": "multiply",
    "Average": "average",
    "Maximum": "maximum",
    "Minimum": "minimum",
    "Concatenate": "concatenate",
    # keras.src.utils.naming.to_snake_case of the class names: ReLU -> re_lu, PReLU -> p_re_lu
    "UpSampling2D": "up_sampling2d",
    "Cropping2D": "cropping2d",
    "Reshape": "reshape",
    "Identity": "identity",
    "Rescaling": "rescaling",
    "ReLU": "re_lu",
    "LeakyReLU": "leaky_re_lu",
    "PReLU": "p_re_lu",
    "ELU": "elu",
    "Softmax": "softmax",
    "LayerNormalization": "layer_normalization",
    "GroupNormalization": "group_normalization",
    "SpatialDropout2D": "spatial_dropout2d",
    "StochasticDepth": "stochastic_depth",  # Keras's ConvNeXt layer: the class name in snake case
    "LayerScale": "layer_scale",
    "RandomFlip": "random_flip",
    "RandomTranslation": "random_translation",
    "RandomRotation": "random_rotation",
    "RandomZoom": "random_zoom",
    "RandomCrop": "random_crop",
    "RandomContrast": "random_contrast",
    "RandomBrightness": "random_brightness",
}


def test_every_layer_kind_has_keras_default_prefix() -> None:
    assert {t: cls.keras_name for t, cls in LAYERS_BY_TYPE.items()} == KERAS_PREFIX


def test_default_names_count_per_kind_like_keras() -> None:
    kinds = ["Conv2D", "MaxPooling2D", "Conv2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense"]
    assert layer_names([{"type": k} for k in kinds]) == [
        "conv2d", "max_pooling2d", "conv2d_1", "conv2d_2", "max_pooling2d_1", "flatten", "dense", "dropout", "dense_1",
    ]  # fmt: skip


def test_default_names_step_around_explicit_ones() -> None:
    # An explicit 'dense_1' later in the spec is not taken by a default name earlier.
    layers = [{"type": "Dense"}, {"type": "Dense"}, {"type": "Dense", "name": "dense_1"}]
    assert layer_names(layers) == ["dense", "dense_2", "dense_1"]
    assert layer_names([{"type": "Dense", "name": "dense"}, {"type": "Dense"}]) == ["dense", "dense_1"]


def test_names_work_on_validated_layers_and_unknown_types() -> None:
    spec = spec_from_data(make([{"type": "Flatten"}, {"type": "Dense", "units": 2, "name": "head"}]))
    assert layer_names(spec.layers) == ["flatten", "head"]
    assert layer_names([{"type": "Nope"}, "not a mapping"]) == ["layer", "layer_1"]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Conv2D", "Dense", "Flatten"]),
            st.one_of(st.none(), st.sampled_from(["conv2d", "conv2d_1", "dense", "dense_2", "flatten_1", "x"])),
        ),
        max_size=12,
    )
)
def test_explicit_names_never_collide_with_defaults(layers: list[tuple[str, str | None]]) -> None:
    raw = [{"type": t} | ({"name": n} if n else {}) for t, n in layers]
    names = layer_names(raw)
    explicit = [n for _, n in layers if n]
    for (_, given_name), name in zip(layers, names, strict=True):
        assert name == (given_name or name)
    # Duplicates can only come from the user's own explicit names.
    assert len(set(names)) == len(names) - (len(explicit) - len(set(explicit)))


# ---- Pydantic errors -> (layer, field) ---------------------------------------------------------------


def validation_error(data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Spec.model_validate(data)
    return info.value


def test_error_location_drops_the_union_tag() -> None:
    data = make([{"type": "Flatten"}, {"type": "Conv2D", "filters": 0, "kernel_size": 3}])
    exc = validation_error(data)
    assert exc.errors()[0]["loc"] == ("layers", 1, "Conv2D", "filters")  # what Pydantic says...
    (issue,) = issues_from_validation_error(exc, data)
    assert (issue.layer, issue.field) == (1, "filters")  # ...and what the user is told
    assert issue.message.startswith("layers[1] Conv2D 'conv2d': filters must be")


def test_error_location_drops_union_members() -> None:
    # activation is Literal[...] | None: Pydantic adds the member it tried to the location.
    data = make([{"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmx"}])
    (issue,) = issues_from_validation_error(validation_error(data), data)
    assert (issue.layer, issue.field) == (1, "activation")
    assert "did you mean 'softmax'?" in issue.message


def test_top_level_and_nested_fields_have_no_layer() -> None:
    data = make([{"type": "Flatten"}], preprocess={"scale": -1}, training={"epochs": 0})
    issues = issues_from_validation_error(validation_error(data), data)
    assert {(i.layer, i.field) for i in issues} == {(None, "preprocess.scale"), (None, "training.epochs")}


def test_all_field_errors_are_reported_at_once() -> None:
    data = make(
        [{"type": "Conv2D", "filters": True}, {"type": "Dense", "units": "8", "activation": "rellu"}, {"type": "X"}]
    )
    with pytest.raises(SpecError) as info:
        spec_from_data(data)
    got = {(i.layer, i.field) for i in info.value.issues}
    assert got == {(0, "filters"), (0, "kernel_size"), (1, "units"), (1, "activation"), (2, "type")}


def test_lax_coercions_are_refused() -> None:
    for bad in ({"filters": True}, {"filters": "8"}, {"filters": 8.0}, {"kernel_size": True}, {"use_bias": 1}):
        layer = {"type": "Conv2D", "filters": 8, "kernel_size": 3} | bad
        with pytest.raises(SpecError):
            spec_from_data(make([layer, {"type": "Flatten"}]))


@pytest.mark.parametrize("data", [None, [], "text", 3])
def test_non_mapping_documents(data) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_data(data, source="x.yaml")
    assert str(info.value).startswith("x.yaml: ")


# ---- parameter counts: Keras's formulas -------------------------------------------------------------


def keras_conv_params(k: tuple[int, int], c_in: int, filters: int, groups: int = 1, bias: bool = True) -> int:
    return k[0] * k[1] * (c_in // groups) * filters + (filters if bias else 0)


def conv(filters: int, kernel_size, **kw) -> list[dict]:
    return [{"type": "Conv2D", "filters": filters, "kernel_size": kernel_size, **kw}]


PARAM_CASES = [  # (layers on a 12x12x4 input, params of the first layer, trainable of the first layer)
    (conv(8, 3), keras_conv_params((3, 3), 4, 8), None),
    (conv(8, [3, 5], use_bias=False), keras_conv_params((3, 5), 4, 8, bias=False), None),
    (conv(8, 3, groups=2), keras_conv_params((3, 3), 4, 8, groups=2), None),
    (conv(4, 1, groups=4), keras_conv_params((1, 1), 4, 4, groups=4), None),  # depthwise
    (conv(6, 3, dilation_rate=2), keras_conv_params((3, 3), 4, 6), None),  # dilation adds no weights
    ([{"type": "BatchNormalization"}], 4 * 4, 2 * 4),  # gamma, beta, moving mean, moving variance
    ([{"type": "BatchNormalization", "center": False}], 3 * 4, 1 * 4),
    ([{"type": "BatchNormalization", "scale": False, "center": False}], 2 * 4, 0),
    ([{"type": "Flatten"}, {"type": "Dense", "units": 10}], 0, None),
    ([{"type": "MaxPooling2D"}], 0, None),
    ([{"type": "AveragePooling2D"}], 0, None),
    ([{"type": "GlobalAveragePooling2D"}], 0, None),
    ([{"type": "GlobalMaxPooling2D"}], 0, None),
    ([{"type": "ZeroPadding2D"}], 0, None),
    ([{"type": "Dropout", "rate": 0.5}], 0, None),
    ([{"type": "Activation", "activation": "relu"}], 0, None),
    # Keras's DepthwiseConv2D: kh*kw*C*m + C*m; SeparableConv2D: kh*kw*C*m + C*m*filters + filters;
    # Conv2DTranspose: kh*kw*filters*C + filters
    ([{"type": "DepthwiseConv2D", "kernel_size": 3}], 3 * 3 * 4 + 4, None),
    ([{"type": "DepthwiseConv2D", "kernel_size": [3, 5], "depth_multiplier": 3, "use_bias": False}], 3 * 5 * 4 * 3,
     None),
    ([{"type": "SeparableConv2D", "filters": 8, "kernel_size": 3}], 3 * 3 * 4 + 4 * 8 + 8, None),
    ([{"type": "SeparableConv2D", "filters": 8, "kernel_size": 3, "depth_multiplier": 2}], 9 * 8 + 8 * 8 + 8, None),
    ([{"type": "Conv2DTranspose", "filters": 6, "kernel_size": 3, "strides": 2}], 3 * 3 * 6 * 4 + 6, None),
    ([{"type": "Conv2DTranspose", "filters": 6, "kernel_size": [2, 3], "use_bias": False}], 2 * 3 * 6 * 4, None),
]  # fmt: skip


@pytest.mark.parametrize(("layers", "params", "trainable"), PARAM_CASES)
def test_params_of_every_layer_kind_equal_keras(layers: list[dict], params: int, trainable: int | None) -> None:
    flat = [] if layers[-1]["type"] in ("Dense", "GlobalAveragePooling2D", "GlobalMaxPooling2D") else [FLAT]
    report = report_of(layers + flat, [12, 12, 4])
    assert report.valid, report.issues
    assert report.layers[0].params == params
    assert report.layers[0].trainable_params == (params if trainable is None else trainable)


def test_dense_params_equal_keras() -> None:
    dense = [{"type": "Dense", "units": 10}, {"type": "Dense", "units": 3, "use_bias": False}]
    report = report_of([FLAT, *dense], [4, 4, 2])
    assert [r.params for r in report.layers] == [0, 32 * 10 + 10, 10 * 3]


def test_batchnorm_counts_non_trainable_in_the_total() -> None:
    report = report_of([{"type": "BatchNormalization"}, {"type": "GlobalAveragePooling2D"}], [4, 4, 3])
    assert (report.total_params, report.trainable_params) == (12, 6)
    assert report.layers[0].param_shapes == {"weight": (3,), "bias": (3,), "running_mean": (3,), "running_var": (3,)}


def test_conv_weight_shape_is_pytorch_layout() -> None:
    report = report_of(conv(8, [3, 5], groups=2) + [FLAT], [9, 9, 4])
    assert report.layers[0].param_shapes == {"weight": (8, 2, 3, 5), "bias": (8,)}


def test_conv_variant_weights_are_pytorch_layout() -> None:
    layers = [
        {"type": "DepthwiseConv2D", "kernel_size": [3, 2], "depth_multiplier": 2, "padding": "same"},
        {"type": "SeparableConv2D", "filters": 5, "kernel_size": 3, "depth_multiplier": 3, "padding": "same"},
        {"type": "Conv2DTranspose", "filters": 7, "kernel_size": [2, 3], "strides": 2},
    ]
    report = report_of([*layers, FLAT], [9, 9, 4])
    assert [r.param_shapes for r in report.layers[:3]] == [
        {"weight": (8, 1, 3, 2), "bias": (8,)},  # [C*m, 1, kh, kw]
        {"depthwise.weight": (24, 1, 3, 3), "pointwise.weight": (5, 24, 1, 1), "bias": (5,)},
        {"weight": (5, 7, 2, 3), "bias": (7,)},  # PyTorch's ConvTranspose2d: [C_in, filters, kh, kw]
    ]
    assert report.layers[2].param_names()["weight"] == "conv2d_transpose.weight"
    assert report.layers[1].param_names()["depthwise.weight"] == "separable_conv2d.depthwise.weight"


def test_conv_variant_initializers_use_keras_fans() -> None:
    """Keras's kernels are (kh, kw, C, m) for depthwise, (1, 1, C*m, filters) pointwise and (kh, kw, filters,
    C_in) transposed; its fans are fan_in = shape[-2]*kh*kw, fan_out = shape[-1]*kh*kw. he_uniform's limit
    is sqrt(6 / fan_in), so the largest drawn value bounds which fan was used."""
    from cnnspec.compiler import initial_params

    layers = [
        {"type": "DepthwiseConv2D", "kernel_size": 3, "depth_multiplier": 4, "depthwise_initializer": "he_uniform"},
        {"type": "SeparableConv2D", "filters": 16, "kernel_size": 1, "depthwise_initializer": "he_uniform",
         "pointwise_initializer": "he_uniform"},
        {"type": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "kernel_initializer": "he_uniform"},
    ]  # fmt: skip
    spec = spec_from_data({"name": "fans", "input": {"shape": [9, 9, 8]}, "layers": [*layers, FLAT]})
    from cnnspec.analysis import check

    params = initial_params(spec, check(spec), seed=3)

    def limit_ok(name: str, fan_in: int) -> None:
        value = np.abs(params[name]).max()
        assert 0.8 * np.sqrt(6 / fan_in) < value <= np.sqrt(6 / fan_in)

    limit_ok("depthwise_conv2d.weight", 8 * 9)  # C*kh*kw (PyTorch's fan_in would be kh*kw = 9)
    limit_ok("separable_conv2d.depthwise.weight", 32 * 1)  # C*kh*kw of its 32-channel input, 1x1 kernel
    limit_ok("separable_conv2d.pointwise.weight", 32)  # C*m
    limit_ok("conv2d_transpose.weight", 2 * 9)  # filters*kh*kw: Keras's shape[-2] is filters


# ---- the seed network (issue 2) ---------------------------------------------------------------------


def test_seed_network_shapes_and_params_exactly(specs_dir) -> None:
    report = check(load_spec(specs_dir / "seed.yaml"))
    assert [r.output_shape for r in report.layers] == [
        (28, 28, 32), (14, 14, 32), (10, 10, 64), (6, 6, 128), (2, 2, 64), (1, 1, 64), (64,), (1024,), (1024,), (10,),
    ]  # fmt: skip
    assert [r.params for r in report.layers] == [832, 0, 51264, 204928, 204864, 0, 0, 66560, 0, 10250]
    assert report.total_params == report.trainable_params == 538_698
    assert [r.name for r in report.layers] == [
        "conv2d", "max_pooling2d", "conv2d_1", "conv2d_2", "conv2d_3", "max_pooling2d_1", "flatten", "dense",
        "dropout", "dense_1",
    ]  # fmt: skip
    assert report.layers[0].padding == "2,2,2,2"  # 'same' with a 5x5 kernel
    assert report.labels == [str(i) for i in range(10)]
    assert report.spec.preprocess.scale == pytest.approx(1 / 255)
    # FLOPs = 2 x multiply-adds: the first conv does 28*28*32 outputs of 5*5*1 products
    assert report.layers[0].flops == 2 * 28 * 28 * 32 * 25


# ---- warnings and Keras disagreements ---------------------------------------------------------------


def test_softmax_not_last_is_a_warning_not_an_error() -> None:
    report = report_of([FLAT, {"type": "Dense", "units": 8, "activation": "softmax"}, {"type": "Dense", "units": 2}])
    assert report.valid
    assert [(w.layer, w.field) for w in report.warnings] == [(1, "activation")]
    assert "softmax" in report.warnings[0].message


def test_strides_with_dilation_are_accepted() -> None:
    # NOTE: Keras refuses strides > 1 with dilation_rate > 1; ONNX and PyTorch define it.
    conv = {"type": "Conv2D", "filters": 2, "kernel_size": 3, "strides": 2, "dilation_rate": 2}
    report = report_of([conv, {"type": "Flatten"}], [9, 9, 1])
    assert report.valid
    assert report.layers[0].output_shape == (3, 3, 2)  # floor((9-5)/2)+1


def test_labels_default_to_numbers_and_activation_null_is_linear() -> None:
    report = report_of([{"type": "Flatten"}, {"type": "Dense", "units": 3, "activation": None}])
    assert report.labels == ["0", "1", "2"]
    assert report.spec.layers[1].activation is None


# ---- the shipped specs and their schema -------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_validates(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# yaml-language-server: $schema=./schema.json\n")
    report = check(load_spec(path))
    assert not report.warnings
    assert len(report.output_shape) == 1


def test_shipped_specs_cover_the_issue() -> None:
    assert {"seed", "lenet5", "vgg32", "digits", "bn_gap"} <= {p.stem for p in SPECS}
    lenet = check(load_spec(SPECS[0].parent / "lenet5.yaml"))
    assert {r.type for r in lenet.layers} >= {"AveragePooling2D", "Conv2D", "Dense"}
    assert lenet.total_params == 61_706  # LeCun et al. 1998, with C5 as a 5x5 convolution
    vgg = check(load_spec(SPECS[0].parent / "vgg32.yaml"))
    assert 300_000 <= vgg.total_params <= 1_000_000
    gap = load_spec(SPECS[0].parent / "bn_gap.yaml")
    kinds = {layer.type for layer in gap.layers}
    assert {"BatchNormalization", "GlobalAveragePooling2D", "ZeroPadding2D"} <= kinds
    assert any(getattr(x, "groups", 1) > 1 and x.dilation_rate != (1, 1) for x in gap.layers if x.type == "Conv2D")
    assert {"leaky_relu", "elu", "gelu", "silu"} <= {getattr(x, "activation", None) for x in gap.layers}


def test_schema_json_is_up_to_date(specs_dir) -> None:
    # Regenerate with: python -m cnnspec schema > specs/schema.json
    on_disk = json.loads((specs_dir / "schema.json").read_text(encoding="utf-8"))
    assert on_disk == spec_json_schema()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_satisfy_the_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from cnnspec.loader import read_spec_file

    jsonschema.Draft202012Validator(spec_json_schema()).validate(read_spec_file(path))
