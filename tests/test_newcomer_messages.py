"""Issue 19, messages: what a newcomer from Keras or PyTorch writes by habit gets one message with the fix."""

from __future__ import annotations

import pytest
from conftest import run_cli

from cnnspec.analysis import analyze
from cnnspec.errors import Issue, SpecError, collapse
from cnnspec.loader import parse_spec_text
from cnnspec.spec import spec_from_data

DENSE_HEAD = [{"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}]


def spec(layers=None, **top) -> dict:
    return {"name": "t", "input": {"shape": [8, 8, 1]}, "labels": ["a", "b"], "layers": layers or DENSE_HEAD, **top}


def messages(data: dict) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec_from_data(data)
    return [i.message for i in err.value.issues]


def conv(**fields) -> dict:
    return {"type": "Conv2D", "filters": 4, "kernel_size": 3, **fields}


def test_padding_in_capitals_suggests_same():
    (message,) = messages(spec([conv(padding="SAME"), *DENSE_HEAD]))
    assert message.endswith("got 'SAME' (did you mean 'same'?)")


def test_tab_in_yaml_says_spaces_not_tabs_with_the_line():
    with pytest.raises(SpecError, match=r"YAML indents with spaces, not tabs: line 3 has a tab"):
        parse_spec_text(b"name: t\nlayers:\n\t- {type: Flatten}\n", json_format=False)


@pytest.mark.parametrize("comment", ["// the name", "/* the name */", "# the name"])
def test_comments_in_json_are_named(comment: str):
    text = f'{{\n  {comment}\n  "name": "t"\n}}\n'.encode()
    with pytest.raises(SpecError, match=r"JSON has no comments \(line 2\): remove them, or write the spec as YAML"):
        parse_spec_text(text, json_format=True)


def test_input_shape_on_a_layer_points_to_the_top_level_input():
    (message,) = messages(spec([conv(input_shape=[8, 8, 1]), *DENSE_HEAD]))
    assert "unknown field 'input_shape'" in message and "input: {shape: [28, 28, 1]}" in message


def test_channels_first_input_shape_is_a_warning():
    report = analyze(spec_from_data(spec(input={"shape": [1, 28, 28]})))
    assert report.valid
    assert [w.message for w in report.warnings] == [
        "input shape [1, 28, 28] looks channels-first (C, H, W); cnnspec takes [height, width, channels] like "
        "Keras. Hint: shape: [28, 28, 1]"
    ]
    assert analyze(spec_from_data(spec(input={"shape": [28, 28, 1]}))).warnings == []


def test_a_misspelled_required_field_is_one_error():
    layer = {"type": "Conv2D", "filtres": 4, "kernel_size": 3}
    assert messages(spec([layer, *DENSE_HEAD])) == [
        "layers[0] Conv2D 'conv2d': unknown field 'filtres' (did you mean 'filters'?)"
    ]


def test_the_same_error_in_several_layers_is_one_line():
    issues = [Issue(f"layers[{i}] Conv2D 'c{i}': activation must be one of ...", i, "activation") for i in range(5)]
    issues.append(Issue("labels lists 'a' more than once", None, "labels"))
    assert collapse(issues) == [
        "activation must be one of ... (in 5 layers: layers[0] Conv2D 'c0', layers[1] Conv2D 'c1', "
        "layers[2] Conv2D 'c2' and 2 more)",
        "labels lists 'a' more than once",
    ]


def test_the_cli_prints_a_repeated_error_once(tmp_path):
    layers = "\n".join("  - {type: Conv2D, filters: 4, kernel_size: 3, activation: Relu}" for _ in range(3))
    path = tmp_path / "s.yaml"
    head = "  - {type: Flatten}\n  - {type: Dense, units: 2}\n"
    path.write_text(f"name: t\ninput: {{shape: [16, 16, 1]}}\nlayers:\n{layers}\n{head}")
    code, _, err = run_cli("validate", path)
    assert code == 1 and err.count("error:") == 1 and "(in 3 layers: layers[0] Conv2D 'conv2d'" in err


def test_keras_names_are_accepted_where_the_meaning_is_the_same():
    training = {"optimizer": "Adam", "loss": "sparse_categorical_crossentropy"}
    parsed = spec_from_data(spec(training=training))
    assert parsed.training.optimizer == "adam" and parsed.training.loss == "categorical_crossentropy"
    (message,) = messages(spec(training={"lr": 0.01}))
    assert message == "training: unknown field 'lr' (did you mean 'learning_rate'?)"


def test_binary_crossentropy_needs_a_binary_head():
    report = analyze(spec_from_data(spec(training={"loss": "binary_crossentropy"})))
    assert not report.valid and "binary_crossentropy needs a binary head" in report.issues[0].message
    binary = [{"type": "Flatten"}, {"type": "Dense", "units": 1, "activation": "sigmoid"}]
    assert analyze(spec_from_data(spec(binary, training={"loss": "binary_crossentropy"}))).valid
