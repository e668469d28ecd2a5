"""The graph spec LANGUAGE (issue 11, "The language") and its error messages.

Small specs written as dicts go through `spec_from_data` (field errors) and `analyze` (graph and shape
errors); the tests pin each rule of the contract: what `inputs` may name, the merges' arity and shapes,
Concatenate's Keras axis, `keepdims`, blocks (params, `$param`, nesting, `repeat`), expanded names,
the limits, and errors that name both the block use and the layer inside it, reported once.
A few go through the CLI (`validate --json`, the "connected to" column, `schema`) and `compile_spec`
(initializer names, metadata, a block spec lowering to the same graph as the network written out flat).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import assert_no_traceback, run_cli
from onnx import numpy_helper

from cnnspec import graph as graph_module
from cnnspec.analysis import Report, analyze
from cnnspec.compiler import compile_spec
from cnnspec.errors import Issue, SpecError
from cnnspec.spec import spec_from_data

SHAPE = [8, 8, 4]

# ---- helpers -------------------------------------------------------------------------------------


def conv(name: str | None = None, filters: Any = 4, kernel_size: Any = 1, **kw: Any) -> dict:
    layer = {"type": "Conv2D", "filters": filters, "kernel_size": kernel_size, **kw}
    return layer | ({"name": name} if name is not None else {})


def merge(kind: str, *inputs: str, name: str | None = None, **kw: Any) -> dict:
    layer = {"type": kind, "inputs": list(inputs), **kw}
    return layer | ({"name": name} if name is not None else {})


def gap(name: str | None = None, keepdims: bool | None = None, kind: str = "GlobalAveragePooling2D") -> dict:
    layer: dict = {"type": kind}
    if keepdims is not None:
        layer["keepdims"] = keepdims
    return layer | ({"name": name} if name is not None else {})


HEAD = [gap(), {"type": "Dense", "units": 2}]


def data(layers: list, blocks: dict | None = None, shape: list[int] = SHAPE) -> dict:
    doc: dict = {"name": "t", "input": {"shape": list(shape)}, "layers": layers}
    if blocks is not None:
        doc["blocks"] = blocks
    return doc


def issues_of(layers: list, blocks: dict | None = None, shape: list[int] = SHAPE) -> list[Issue]:
    """What `cnnspec validate` reports: the field errors of loading, else the graph and shape errors."""
    try:
        spec = spec_from_data(data(layers, blocks, shape))
    except SpecError as err:
        return err.issues
    return analyze(spec).issues


def valid(layers: list, blocks: dict | None = None, shape: list[int] = SHAPE) -> Report:
    report = analyze(spec_from_data(data(layers, blocks, shape)))
    assert report.issues == [], "\n".join(i.message for i in report.issues)
    return report


def doc_parts(doc: dict) -> tuple:
    """A spec dict as the arguments of `valid` / `issues_of`."""
    return doc["layers"], doc.get("blocks"), doc["input"]["shape"]


def rows(report: Report) -> dict[str, tuple]:
    """Expanded name -> (inputs, output shape)."""
    return {r.name: (tuple(r.inputs), tuple(r.output_shape)) for r in report.layers}


def E(layer: int | None, field: str | None, *fragments: str) -> tuple:
    return (layer, field, fragments)


def assert_exactly(got: list[Issue], expected: list[tuple]) -> None:
    """One issue per expectation (same layer and field, every fragment in the message), nothing extra."""
    remaining = list(got)
    for layer, field, fragments in expected:
        match = next(
            (i for i in remaining if i.layer == layer and i.field == field and all(f in i.message for f in fragments)),
            None,
        )
        assert match is not None, f"no issue matches {(layer, field, fragments)}; got:\n" + "\n".join(
            map(str, remaining)
        )
        remaining.remove(match)
    assert not remaining, "unexpected extra issues:\n" + "\n".join(map(str, remaining))


# ---- blocks used by several tests ------------------------------------------------------------------

ONE = {"layers": [conv("c")]}
PAIR = {"inputs": ["a", "b"], "layers": [merge("Add", "a", "b", name="sum")]}
BASIC = {  # conv-conv + identity: channels must stay `filters`
    "params": ["filters"],
    "layers": [
        conv("conv1", filters="$filters", kernel_size=3, padding="same"),
        conv("conv2", filters="$filters", kernel_size=3, padding="same"),
        merge("Add", "conv2", "in", name="add"),
    ],
}
UNIT = {"params": ["filters"], "defaults": {"filters": 4}, "layers": [conv("c", filters="$filters")]}


# ---- valid graphs: what each layer reads ----------------------------------------------------------------

VALID = {  # id: (layers, blocks, {expanded name: inputs})
    "first_layer_reads_input_then_each_the_previous": (
        [conv(), conv(), *HEAD], None,
        {"conv2d": ("input",), "conv2d_1": ("conv2d",), "global_average_pooling2d": ("conv2d_1",)},
    ),
    "input_by_name_and_a_named_layer": (
        [conv("a"), conv("b", inputs="input"), merge("Add", "a", "b"), *HEAD], None,
        {"a": ("input",), "b": ("input",), "add": ("a", "b")},
    ),
    "inputs_as_one_name_or_a_list_mean_the_same": (
        [conv("a"), conv("b", inputs=["a"]), conv("c", inputs="b"), *HEAD], None,
        {"b": ("a",), "c": ("b",)},
    ),
    "an_operand_may_repeat": (
        [conv("a"), merge("Multiply", "a", "a"), *HEAD], None, {"multiply": ("a", "a")},
    ),
    "a_block_use_is_referred_to_by_its_name": (
        [{"block": "one", "name": "side"}, conv("main", inputs="input"), merge("Add", "side", "main"), *HEAD],
        {"one": ONE}, {"side.c": ("input",), "add": ("side.c", "main")},
    ),
    "a_block_reads_the_previous_item_by_default": (
        [conv("stem"), {"block": "one", "name": "u"}, *HEAD], {"one": ONE}, {"u.c": ("stem",)},
    ),
    "the_layer_after_a_block_reads_its_last_item": (
        [{"block": "basic", "name": "u", "filters": 4}, *HEAD], {"basic": BASIC},
        {"u.conv1": ("input",), "u.add": ("u.conv2", "input"), "global_average_pooling2d": ("u.add",)},
    ),
    "inside_a_block_the_first_layer_reads_the_first_input": (
        [conv("x"), {"block": "two", "name": "u", "inputs": ["x", "input"]}, *HEAD],
        {"two": {"inputs": ["p", "q"], "layers": [conv("c"), merge("Add", "c", "q")]}},
        {"u.c": ("x",), "u.add": ("u.c", "input")},
    ),
    "block_inputs_map_in_order": (
        [conv("x"), {"block": "pair", "name": "u", "inputs": ["input", "x"]}, *HEAD], {"pair": PAIR},
        {"u.sum": ("input", "x")},
    ),
    "a_block_input_may_be_named_input": (
        [{"block": "shadow", "name": "u"}, *HEAD],
        {"shadow": {"inputs": ["input"], "layers": [conv("c"), merge("Add", "c", "input")]}},
        {"u.add": ("u.c", "input")},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(VALID))
def test_what_each_layer_reads(case: str) -> None:
    layers, blocks, expected = VALID[case]
    got = rows(valid(layers, blocks))
    assert {name: got[name][0] for name in expected} == expected


def test_the_last_item_may_be_unused_and_merges_are_allowed_as_last_layer() -> None:
    report = valid([{"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "d", "units": 4},
                    {"type": "Dense", "name": "e", "units": 4, "inputs": "f"}, merge("Add", "d", "e")])  # fmt: skip
    assert report.graph.output == "add" and report.output_shape == (4,)


# ---- invalid specs: the exact issues --------------------------------------------------------------------

INVALID = {  # id: (layers, blocks, [E(layer, field, *message fragments)])
    # references
    "generated_name_is_refused_with_the_fix": (
        [conv(), conv(), conv("x"), merge("Add", "x", "conv2d_1"), *HEAD], None,
        [E(3, "inputs", "layers[3] Add 'add': inputs: 'conv2d_1' is a generated name",
           "Hint: give that layer name: conv2d_1")],
    ),
    "forward_reference": (
        [conv("a"), merge("Add", "a", "b"), conv("b"), *HEAD], None,
        [E(1, "inputs", "layers[1] Add 'add': inputs: 'b' is defined later (layers[2])", "only read earlier ones")],
    ),
    "self_reference": (
        [conv("a", inputs="a"), *HEAD], None,
        [E(0, "inputs", "layers[0] Conv2D 'a': inputs: a layer cannot read its own output ('a')")],
    ),
    "unknown_name_with_did_you_mean": (
        [conv("shortcut"), conv("main"), merge("Add", "main", "shortcat"), *HEAD], None,
        [E(2, "inputs", "unknown name 'shortcat' (did you mean 'shortcut'?)",
           "Hint: inputs name the model input 'input' or an earlier named layer")],
    ),
    "unknown_name_in_a_block_use": (
        [conv("stem"), {"block": "one", "name": "u", "inputs": "stme"}, *HEAD], {"one": ONE},
        [E(1, "inputs", "layers[1] block 'one' 'u': inputs: unknown name 'stme' (did you mean 'stem'?)")],
    ),
    "generated_name_in_a_block_use": (
        [conv(), conv("x"), {"block": "pair", "name": "u", "inputs": ["x", "conv2d"]}, *HEAD], {"pair": PAIR},
        [E(2, "inputs", "layers[2] block 'pair' 'u': inputs: 'conv2d' is a generated name",
           "give that layer name: conv2d")],
    ),
    "unused_output": (
        [conv("branch"), conv(inputs="input"), *HEAD], None,
        [E(0, None, "layers[0] Conv2D 'branch': output of 'branch' is never used", "Hint:")],
    ),
    "unused_block_use": (
        [{"block": "one", "name": "side"}, conv(inputs="input"), *HEAD], {"one": ONE},
        [E(0, None, "layers[0] block 'one' 'side': output of 'side' is never used")],
    ),
    "unused_block_input": (
        [conv("x"), {"block": "lazy", "name": "u", "inputs": ["x", "input"]}, *HEAD],
        {"lazy": {"inputs": ["a", "b"], "layers": [conv("c", inputs="a")]}},
        [E(1, None, "layers[1] block 'lazy' 'u': the block's input 'b' is never used")],
    ),
    "unused_layer_inside_a_block": (
        [{"block": "waste", "name": "u"}, *HEAD],
        {"waste": {"layers": [conv("x"), conv("y", inputs="in")]}},
        [E(0, None, "layers[0] block 'waste' 'u' -> layers[0] Conv2D 'x': output of 'x' is never used")],
    ),
    # names
    "a_layer_named_input": (
        [conv("input"), *HEAD], None,
        [E(0, "name", "layers[0] Conv2D 'input': 'input' is the name of the model input")],
    ),
    "a_block_use_named_input": (
        [{"block": "one", "name": "input"}, *HEAD], {"one": ONE},
        [E(0, "name", "'input' is the name of the model input")],
    ),
    "a_block_layer_named_like_a_block_input": (
        [{"block": "clash", "name": "u"}, *HEAD], {"clash": {"layers": [conv("in")]}},
        [E(0, "name", "layers[0] block 'clash' 'u' -> layers[0] Conv2D 'in': 'in' is the name of an input "
                      "of the block")],
    ),
    "duplicate_names_inside_a_block": (
        [{"block": "dup", "name": "u"}, *HEAD], {"dup": {"layers": [conv("c"), conv("c")]}},
        [E(0, "name", "layers[0] block 'dup' 'u' -> layers[1] Conv2D 'c': duplicate layer name 'c' (also layers[0])")],
    ),
    "a_block_use_and_a_layer_with_the_same_name": (
        [{"block": "one", "name": "l"}, conv("l"), *HEAD], {"one": ONE},
        [E(1, "name", "layers[1] Conv2D 'l': duplicate layer name 'l' (also layers[0])")],
    ),
    # merges and single-input layers
    "a_merge_without_inputs": (
        [conv("a"), {"type": "Add"}, *HEAD], None,
        [E(1, "inputs", "layers[1] Add 'add': Add merges 2 or more tensors but has no inputs",
           "no implicit 'previous + x'", "Hint: name every operand")],
    ),
    "a_single_input_layer_with_two_inputs": (
        [conv("a"), conv("b"), conv(inputs=["a", "b"]), *HEAD], None,
        [E(2, "inputs", "Conv2D takes one input but inputs lists 2 ('a', 'b')", "Hint: join them first")],
    ),
    "rank_mismatch_hints_keepdims": (
        [conv("a"), gap("g"), merge("Multiply", "a", "g"), *HEAD], None,
        [E(2, "inputs", "inputs have incompatible shapes: 'a' is 8x8x4, 'g' is 4", "keepdims: true")],
    ),
    "residual_channels_differ_hints_a_projection": (
        [conv("a"), conv("b", filters=8), merge("Add", "a", "b"), *HEAD], None,
        [E(2, "inputs", "inputs have incompatible shapes: 'a' is 8x8x4, 'b' is 8x8x8", "projection shortcut")],
    ),
    "concatenate_axis_0_is_the_batch": (
        [conv("a"), conv("b"), merge("Concatenate", "a", "b", axis=0), *HEAD], None,
        [E(2, "axis", "axis=0 is not an axis of the 4-d batched input (axis 0 is the batch)", "Hint:")],
    ),
    "concatenate_axis_out_of_range": (
        [conv("a"), conv("b"), merge("Concatenate", "a", "b", axis=4), *HEAD], None,
        [E(2, "axis", "axis must be an integer ≥ -3 and ≤ 3, got 4")],
    ),
    "concatenate_flat_axis_2": (
        [{"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "d", "units": 3},
         merge("Concatenate", "f", "d", axis=2), {"type": "Dense", "units": 2}], None,
        [E(2, "axis", "axis=2 is not an axis of the 2-d batched input")],
    ),
    "concatenate_channels_needs_equal_sizes": (
        [conv("a"), {"type": "MaxPooling2D", "name": "b"}, merge("Concatenate", "a", "b"), *HEAD], None,
        [E(2, "inputs", "Concatenate along the channels needs every other dimension equal: 'a' is 8x8x4, "
                        "'b' is 4x4x4", "Hint:")],
    ),
    # blocks: declaration and use
    "unknown_block_with_did_you_mean": (
        [{"block": "basik", "name": "u", "filters": 4}, *HEAD], {"basic": BASIC},
        [E(0, "block", "layers[0] block 'basik' 'u': unknown block 'basik' (did you mean 'basic'?)",
           "Hint: the blocks are basic")],
    ),
    "a_block_use_without_blocks": (
        [{"block": "basic", "name": "u"}, *HEAD], None,
        [E(0, "block", "unknown block 'basic'", "define them under blocks:")],
    ),
    "unknown_parameter_with_did_you_mean": (
        [{"block": "unit", "name": "u", "filtres": 8}, *HEAD], {"unit": UNIT},
        [E(0, "filtres", "layers[0] block 'unit' 'u': unknown parameter 'filtres' of block 'unit' (did you mean "
                         "'filters'?)", "Hint: its parameters are filters")],
    ),
    "undeclared_dollar_param": (
        [{"block": "typo", "name": "u"}, *HEAD],
        {"typo": {"params": ["filters"], "defaults": {"filters": 4}, "layers": [conv(filters="$filterz")]}},
        [E(0, None, "block 'typo' refers to $filterz, which it does not declare (did you mean 'filters'?)",
           "Hint: add 'filterz' to its params")],
    ),
    "outer_layers_are_not_visible_in_a_block": (
        [conv("outer"), {"block": "peek", "name": "u"}, *HEAD],
        {"peek": {"layers": [conv("c"), merge("Add", "c", "outer")]}},
        [E(1, "inputs", "layers[1] block 'peek' 'u' -> layers[1] Add 'add': inputs: unknown name 'outer'",
           "Hint: inputs name the block's inputs (in) or an earlier named layer of the block")],
    ),
    "the_model_input_is_not_visible_in_a_block": (
        [conv("stem"), {"block": "peek", "name": "u"}, *HEAD],
        {"peek": {"layers": [conv("c"), merge("Add", "c", "input")]}},
        [E(1, "inputs", "-> layers[1] Add 'add': inputs: unknown name 'input'", "the block's inputs (in)")],
    ),
    "a_generated_name_inside_a_block": (
        [{"block": "gen", "name": "u"}, *HEAD],
        {"gen": {"layers": [conv(), conv(), conv("x"), merge("Add", "x", "conv2d_1")]}},
        [E(0, "inputs", "layers[0] block 'gen' 'u' -> layers[3] Add 'add': inputs: 'conv2d_1' is a generated name",
           "give that layer name: conv2d_1")],
    ),
    "a_typo_inside_a_block_with_did_you_mean": (
        [{"block": "typo", "name": "u"}, *HEAD],
        {"typo": {"layers": [conv("conv1"), conv("conv2"), merge("Add", "conv2", "cnv1")]}},
        [E(0, "inputs", "-> layers[2] Add 'add': inputs: unknown name 'cnv1' (did you mean 'conv1'?)")],
    ),
    "too_few_block_inputs": (
        [conv("x"), {"block": "pair", "name": "u", "inputs": ["x"]}, *HEAD], {"pair": PAIR},
        [E(1, "inputs", "block 'pair' takes 2 input(s) (a, b), got 1")],
    ),
    "a_multi_input_block_needs_inputs": (
        [conv("x"), {"block": "pair", "name": "u"}, *HEAD], {"pair": PAIR},
        [E(1, "inputs", "block 'pair' takes 2 inputs (a, b)", "Hint: list them in inputs")],
    ),
    "repeat_on_a_multi_input_block": (
        [conv("x"), {"block": "pair", "name": "u", "inputs": ["x", "input"], "repeat": 2}, *HEAD], {"pair": PAIR},
        [E(1, "repeat", "layers[1] block 'pair' 'u': repeat: 2 chains copies", "'pair' has 2 (a, b)")],
    ),
    "a_block_using_itself": (
        [{"block": "loop", "name": "u"}, *HEAD], {"loop": {"layers": [conv("c"), {"block": "loop", "name": "again"}]}},
        [E(0, "block", "layers[0] block 'loop' 'u' -> layers[1] block 'loop' 'again': block 'loop' uses itself "
                       "(through loop -> loop)")],
    ),
    "blocks_using_each_other": (
        [{"block": "a", "name": "u"}, *HEAD],
        {"a": {"layers": [{"block": "b", "name": "x"}]}, "b": {"layers": [{"block": "a", "name": "y"}]}},
        [E(0, "block", "block 'a' uses itself (through a -> b -> a)")],
    ),
    "an_unknown_field_inside_a_block": (
        [{"block": "f", "name": "u"}, *HEAD], {"f": {"layers": [conv("c", filtrs=3)]}},
        [E(0, "filtrs", "layers[0] block 'f' 'u' -> layers[0] Conv2D 'c': unknown field 'filtrs' (did you mean "
                        "'filters'?)")],
    ),
    "a_param_value_of_the_wrong_type": (
        [{"block": "unit", "name": "u", "filters": "x"}, *HEAD], {"unit": UNIT},
        [E(0, "filters", "layers[0] block 'unit' 'u' -> layers[0] Conv2D 'c': filters must be an integer",
           "got 'x'")],
    ),
    "a_bool_param_value_is_not_a_number": (
        [{"block": "unit", "name": "u", "filters": True}, *HEAD], {"unit": UNIT},
        [E(0, "filters", "filters must be an integer", "got true", "true/false is not a number")],
    ),
    # errors inside blocks name both places, once
    "a_shape_error_inside_a_block": (
        [conv("stem"), {"block": "basic", "name": "layer1", "filters": 8}, *HEAD], {"basic": BASIC},
        [E(1, "inputs", "layers[1] block 'basic' 'layer1' -> layers[2] Add 'add': inputs have incompatible "
                        "shapes: 'conv2' is 8x8x8, 'in' is 8x8x4", "Hint:")],
    ),
    "a_shape_error_in_every_copy_is_reported_once": (
        [conv("stem"), {"block": "basic", "name": "layer1", "filters": 8, "repeat": 3}, *HEAD], {"basic": BASIC},
        [E(1, "inputs", "layers[1] block 'basic' 'layer1' (copy 0) -> layers[2] Add 'add': inputs have "
                        "incompatible shapes")],
    ),
    "a_graph_error_in_every_copy_is_reported_once": (
        [{"block": "waste", "name": "u", "repeat": 5}, *HEAD],
        {"waste": {"layers": [conv("x"), conv("y", inputs="in")]}},
        [E(0, None, "layers[0] block 'waste' 'u' (copy 0) -> layers[0] Conv2D 'x': output of 'x' is never used")],
    ),
    "an_error_in_a_later_copy_names_that_copy": (
        [{"block": "down", "name": "u", "repeat": 3}, *HEAD],
        {"down": {"layers": [conv("c", kernel_size=3, strides=2)]}},
        [E(0, "kernel_size", "layers[0] block 'down' 'u' (copy 2) -> layers[0] Conv2D 'c': kernel 3x3 does not fit "
                             "the 1x1 input", "Hint:")],
    ),
    "an_error_in_a_nested_block_names_every_level": (
        [conv("stem"), {"block": "outer", "name": "stage", "repeat": 2}, *HEAD],
        {"outer": {"layers": [conv("pre"), {"block": "inner", "name": "blk"}]},
         "inner": {"layers": [conv("c", filters=8), merge("Add", "c", "in", name="add")]}},
        [E(1, "inputs", "layers[1] block 'outer' 'stage' (copy 0) -> layers[1] block 'inner' 'blk' -> layers[1] "
                        "Add 'add': inputs have incompatible shapes: 'c' is 8x8x8, 'in' is 8x8x4")],
    ),
    "all_errors_at_once": (
        [conv("a"), conv("m"), merge("Add", "m", "aa"), {"block": "unit", "name": "u", "filtres": 4}, *HEAD],
        {"unit": UNIT},
        [E(2, "inputs", "unknown name 'aa' (did you mean 'a'?)"),
         E(3, "filtres", "unknown parameter 'filtres'")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_graph_gives_exactly_the_stated_issues(case: str) -> None:
    layers, blocks, expected = INVALID[case]
    assert_exactly(issues_of(layers, blocks), expected)


@pytest.mark.parametrize("case", list(INVALID))
def test_layer_issues_start_with_the_top_level_layer(case: str) -> None:
    layers, blocks, _ = INVALID[case]
    for issue in issues_of(layers, blocks):
        if issue.layer is not None:
            assert issue.message.startswith(f"layers[{issue.layer}] "), issue.message


def test_an_unknown_name_far_from_every_name_gets_no_suggestion() -> None:
    (issue,) = issues_of([conv("a"), merge("Add", "a", "zzz"), *HEAD])
    assert (issue.layer, issue.field) == (1, "inputs")
    assert "unknown name 'zzz'" in issue.message and "did you mean" not in issue.message


def test_a_block_use_needs_a_name() -> None:
    (issue,) = issues_of([{"block": "one"}, *HEAD], {"one": ONE})
    assert issue.layer == 0 and "name" in issue.field and "missing required field" in issue.message


# ---- merges ----------------------------------------------------------------------------------------

ELEMENTWISE = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"]
ALL_MERGES = [*ELEMENTWISE, "Concatenate"]
TWO_MAPS = [conv("a"), conv("b", inputs="input")]


@pytest.mark.parametrize("kind", ALL_MERGES)
def test_one_operand_is_refused(kind: str) -> None:
    exactly = "exactly 2" if kind == "Subtract" else "at least 2"
    assert_exactly(
        issues_of([conv("a"), merge(kind, "a"), *HEAD]),
        [E(1, "inputs", f"layers[1] {kind} ", f"{kind} takes {exactly} inputs, got 1", f"list {exactly} names")],
    )


@pytest.mark.parametrize("kind", [k for k in ALL_MERGES if k != "Subtract"])
def test_three_operands_are_accepted(kind: str) -> None:
    report = valid([*TWO_MAPS, merge(kind, "a", "b", "input", name="m"), *HEAD])
    assert rows(report)["m"] == (("a", "b", "input"), (8, 8, 12) if kind == "Concatenate" else (8, 8, 4))


def test_subtract_takes_exactly_two() -> None:
    assert_exactly(
        issues_of([*TWO_MAPS, merge("Subtract", "a", "b", "input"), *HEAD]),
        [E(2, "inputs", "Subtract takes exactly 2 inputs, got 3")],
    )


@pytest.mark.parametrize("kind", ELEMENTWISE)
def test_elementwise_merges_refuse_different_sizes(kind: str) -> None:
    layers = [conv("a"), {"type": "MaxPooling2D", "name": "b"}, merge(kind, "a", "b"), *HEAD]
    assert_exactly(
        issues_of(layers),
        [E(2, "inputs", f"layers[2] {kind} ", "inputs have incompatible shapes: 'a' is 8x8x4, 'b' is 4x4x4", "Hint:")],
    )


@pytest.mark.parametrize("kind", ELEMENTWISE)
@pytest.mark.parametrize("gate_first", [False, True])
def test_a_1x1xC_gate_broadcasts_over_an_HxWxC_map(kind: str, gate_first: bool) -> None:
    operands = ("g", "a") if gate_first else ("a", "g")
    report = valid([conv("a"), gap("g", keepdims=True), merge(kind, *operands, name="m"), *HEAD])
    assert rows(report)["g"][1] == (1, 1, 4)
    assert rows(report)["m"] == (operands, (8, 8, 4))


def test_a_1x1x1_gate_broadcasts_over_every_channel() -> None:
    report = valid([conv("a"), conv("s", filters=1, inputs="input"), gap("g", keepdims=True),
                    merge("Multiply", "a", "g", name="m"), *HEAD])  # fmt: skip
    assert rows(report)["g"][1] == (1, 1, 1) and rows(report)["m"][1] == (8, 8, 4)


def test_squeeze_excite_gate() -> None:
    """The textbook use of broadcasting: GAP(keepdims) -> 1x1 convs -> sigmoid -> Multiply with the map."""
    layers = [
        conv("feat", filters=8, kernel_size=3, padding="same"),
        gap("squeeze", keepdims=True),
        conv("reduce", filters=2, activation="relu"),
        conv("expand", filters=8, activation="sigmoid"),
        merge("Multiply", "feat", "expand", name="excite"),
        *HEAD,
    ]
    assert rows(valid(layers))["excite"] == (("feat", "expand"), (8, 8, 8))


CONCAT_AXES = [  # (Keras axis, second operand, output shape): a is 8x8x4
    (-1, conv("b", filters=2, inputs="input"), (8, 8, 6)),
    (3, conv("b", filters=2, inputs="input"), (8, 8, 6)),
    (1, {"type": "MaxPooling2D", "name": "b", "pool_size": [2, 1], "inputs": "input"}, (12, 8, 4)),
    (-3, {"type": "MaxPooling2D", "name": "b", "pool_size": [2, 1], "inputs": "input"}, (12, 8, 4)),
    (2, {"type": "MaxPooling2D", "name": "b", "pool_size": [1, 2], "inputs": "input"}, (8, 12, 4)),
    (-2, {"type": "MaxPooling2D", "name": "b", "pool_size": [1, 2], "inputs": "input"}, (8, 12, 4)),
]


@pytest.mark.parametrize(("axis", "other", "out"), CONCAT_AXES, ids=[str(a) for a, _, _ in CONCAT_AXES])
def test_concatenate_uses_keras_axis_which_counts_the_batch(axis: int, other: dict, out: tuple) -> None:
    report = valid([conv("a"), other, merge("Concatenate", "a", "b", name="cat", axis=axis), *HEAD])
    assert rows(report)["cat"] == (("a", "b"), out)


@pytest.mark.parametrize(("axis", "what"), [(1, "height"), (2, "width"), (-1, "channels")])
def test_concatenate_names_the_axis_whose_neighbours_differ(axis: int, what: str) -> None:
    other = {"type": "MaxPooling2D", "name": "b", "pool_size": [1, 2] if axis == 1 else [2, 1], "inputs": "input"}
    assert_exactly(
        issues_of([conv("a"), other, merge("Concatenate", "a", "b", axis=axis), *HEAD]),
        [E(2, "inputs", f"Concatenate along the {what} needs every other dimension equal")],
    )


def test_concatenate_default_axis_is_minus_one() -> None:
    report = valid([conv("a"), conv("b", filters=2, inputs="input"), merge("Concatenate", "a", "b"), *HEAD])
    assert rows(report)["concatenate"][1] == (8, 8, 6)


@pytest.mark.parametrize("axis", [-1, 1])
def test_concatenate_flat_units(axis: int) -> None:
    layers = [{"type": "Flatten", "name": "f"}, {"type": "Dense", "name": "d", "units": 3},
              merge("Concatenate", "f", "d", name="cat", axis=axis), {"type": "Dense", "units": 2}]  # fmt: skip
    assert rows(valid(layers))["cat"][1] == (259,)


# ---- keepdims ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GlobalAveragePooling2D", "GlobalMaxPooling2D"])
@pytest.mark.parametrize(("keepdims", "out"), [(None, (4,)), (False, (4,)), (True, (1, 1, 4))])
def test_global_pooling_keepdims(kind: str, keepdims: bool | None, out: tuple) -> None:
    report = valid([gap("p", keepdims=keepdims, kind=kind), {"type": "Flatten"}, {"type": "Dense", "units": 2}])
    assert rows(report)["p"][1] == out


def test_keepdims_must_be_a_bool() -> None:
    (issue,) = issues_of([{"type": "GlobalAveragePooling2D", "keepdims": 1}, {"type": "Dense", "units": 2}])
    assert (issue.layer, issue.field) == (0, "keepdims")


# ---- blocks: parameters --------------------------------------------------------------------------------

TYPED = {
    "params": ["filters", "kernel", "pad", "act", "init"],
    "defaults": {"kernel": 3, "pad": "same", "act": "relu", "init": {"type": "constant", "value": 0.25}},
    "layers": [conv("c", filters="$filters", kernel_size="$kernel", padding="$pad", activation="$act",
                    kernel_initializer="$init")],
}  # fmt: skip


def test_defaults_apply_when_the_use_leaves_a_parameter_out() -> None:
    layer = valid([{"block": "typed", "name": "u", "filters": 6}, *HEAD], {"typed": TYPED}).layers[0].layer
    assert (layer.filters, layer.kernel_size, layer.padding, layer.activation) == (6, (3, 3), "same", "relu")
    assert layer.kernel_initializer.value == 0.25


def test_dollar_params_keep_their_type() -> None:
    use = {"block": "typed", "name": "u", "filters": 6, "kernel": [1, 3], "pad": "valid", "act": "tanh",
           "init": {"type": "random_normal", "stddev": 0.5}}  # fmt: skip
    report = valid([use, *HEAD], {"typed": TYPED})
    layer = report.layers[0].layer
    assert type(layer.filters) is int and layer.filters == 6  # an int stays an int, not "6"
    assert layer.kernel_size == (1, 3)  # a list stays a list
    assert (layer.padding, layer.activation) == ("valid", "tanh")  # strings stay strings
    assert layer.kernel_initializer.type == "random_normal" and layer.kernel_initializer.stddev == 0.5
    assert report.layers[0].output_shape == (8, 6, 6)


def test_a_dollar_param_deep_inside_a_value_is_replaced() -> None:
    block = {"params": ["v"], "layers": [conv("c", kernel_initializer={"type": "constant", "value": "$v"})]}
    layer = valid([{"block": "b", "name": "u", "v": -1.5}, *HEAD], {"b": block}).layers[0].layer
    assert layer.kernel_initializer.value == -1.5


def test_a_dollar_param_passes_through_nested_blocks_and_repeat() -> None:
    blocks = {
        "outer": {"params": ["f", "n"], "layers": [{"block": "unit", "name": "x", "filters": "$f", "repeat": "$n"}]},
        "unit": UNIT,
    }
    report = valid([{"block": "outer", "name": "o", "f": 5, "n": 3}, *HEAD], blocks)
    assert [r.name for r in report.layers[:3]] == ["o.x.0.c", "o.x.1.c", "o.x.2.c"]
    assert all(r.output_shape == (8, 8, 5) for r in report.layers[:3])


def test_a_parameter_with_only_a_default_is_optional_and_may_be_given() -> None:
    block = {"defaults": {"f": 3}, "layers": [conv("c", filters="$f")]}
    assert valid([{"block": "b", "name": "u"}, *HEAD], {"b": block}).layers[0].output_shape == (8, 8, 3)
    assert valid([{"block": "b", "name": "u", "f": 7}, *HEAD], {"b": block}).layers[0].output_shape == (8, 8, 7)


def test_only_a_value_that_is_exactly_dollar_param_is_replaced() -> None:
    block = {"params": ["f"], "layers": [conv("c", filters="n$f")]}
    assert_exactly(issues_of([{"block": "b", "name": "u", "f": 4}, *HEAD], {"b": block}),
                   [E(0, "filters", "filters must be an integer", "got 'n$f'")])  # fmt: skip


def test_a_value_given_as_dollar_text_is_not_replaced_again() -> None:
    block = {"params": ["f"], "layers": [conv("c", filters="$f")]}
    assert_exactly(issues_of([{"block": "b", "name": "u", "f": "$f"}, *HEAD], {"b": block}),
                   [E(0, "filters", "filters must be an integer", "got '$f'")])  # fmt: skip


def test_a_missing_required_parameter_is_reported() -> None:
    issues = issues_of([{"block": "basic", "name": "u"}, *HEAD], {"basic": BASIC})
    missing = [i for i in issues if "missing parameter 'filters' of block 'basic'" in i.message]
    assert len(missing) == 1
    assert (missing[0].layer, missing[0].field) == (0, "filters")
    assert missing[0].message.startswith("layers[0] block 'basic' 'u': ")
    assert "Hint: add filters: ..." in missing[0].message


def test_a_missing_required_parameter_is_the_only_issue() -> None:
    assert_exactly(issues_of([{"block": "basic", "name": "u"}, *HEAD], {"basic": BASIC}),
                   [E(0, "filters", "missing parameter 'filters' of block 'basic'")])  # fmt: skip


def test_a_misspelt_required_parameter_gives_unknown_and_missing_only() -> None:
    assert_exactly(
        issues_of([{"block": "basic", "name": "u", "filtres": 4}, *HEAD], {"basic": BASIC}),
        [E(0, "filtres", "unknown parameter 'filtres' of block 'basic' (did you mean 'filters'?)"),
         E(0, "filters", "missing parameter 'filters'")],
    )  # fmt: skip


@pytest.mark.parametrize(("key", "meant"), [("repaet", "repeat"), ("input", "inputs")])
def test_a_misspelt_use_key_suggests_the_use_key(key: str, meant: str) -> None:
    issues = issues_of([conv("x"), {"block": "unit", "name": "u", key: "x" if key == "input" else 2}, *HEAD],
                       {"unit": UNIT})  # fmt: skip
    assert_exactly(issues, [E(1, key, f"unknown parameter '{key}'", f"(did you mean '{meant}'?)")])


def test_a_parameter_named_like_a_use_key_is_refused() -> None:
    issues = issues_of([{"block": "b", "name": "u", "repeat": 2}, *HEAD],
                       {"b": {"params": ["repeat"], "layers": [conv("c")]}})  # fmt: skip
    assert len(issues) == 1 and "'repeat'" in issues[0].message
    assert "add repeat: ... to the use" not in issues[0].message  # the use has it: the declaration is at fault


def test_a_misspelt_block_definition_field_suggests_the_field() -> None:
    issues = issues_of([{"block": "b", "name": "u"}, *HEAD], {"b": {"param": ["f"], "layers": [conv("c")]}})
    assert_exactly(issues, [E(None, "blocks.b.param", "unknown field 'param'", "(did you mean 'params'?)")])


def test_block_definition_errors_are_top_level() -> None:
    assert_exactly(issues_of([{"block": "b", "name": "u"}, *HEAD], {"b": {"layers": []}}),
                   [E(None, "blocks.b.layers", "must have at least 1 item")])  # fmt: skip


# ---- blocks: names, nesting, repeat ---------------------------------------------------------------------

NAMES = [  # (use, expanded names of the block's layers)
    ({"block": "basic", "name": "layer1", "filters": 4}, ["layer1.conv1", "layer1.conv2", "layer1.add"]),
    ({"block": "basic", "name": "layer1", "filters": 4, "repeat": 1},
     ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.add"]),
    ({"block": "basic", "name": "layer1", "filters": 4, "repeat": 3},
     [f"layer1.{k}.{n}" for k in range(3) for n in ("conv1", "conv2", "add")]),
]  # fmt: skip


@pytest.mark.parametrize(("use", "names"), NAMES, ids=["no_repeat", "repeat_1", "repeat_3"])
def test_expanded_names_join_with_dots_and_repeat_adds_the_copy_index(use: dict, names: list[str]) -> None:
    report = valid([use, *HEAD], {"basic": BASIC})
    assert [r.name for r in report.layers] == [*names, "global_average_pooling2d", "dense"]
    assert all(r.index == 0 for r in report.layers[: len(names)])  # every expanded layer points at its use


def test_repeat_chains_the_copies() -> None:
    got = rows(valid([conv("stem"), {"block": "basic", "name": "layer1", "filters": 4, "repeat": 3}, *HEAD],
                     {"basic": BASIC}))  # fmt: skip
    assert got["layer1.0.conv1"][0] == ("stem",) and got["layer1.0.add"][0] == ("layer1.0.conv2", "stem")
    assert got["layer1.1.conv1"][0] == ("layer1.0.add",)
    assert got["layer1.1.add"][0] == ("layer1.1.conv2", "layer1.0.add")
    assert got["layer1.2.add"][0] == ("layer1.2.conv2", "layer1.1.add")
    assert got["global_average_pooling2d"][0] == ("layer1.2.add",)


def test_nested_uses_add_one_level_each() -> None:
    blocks = {
        "inner": UNIT,
        "outer": {"layers": [{"block": "inner", "name": "a"}, {"block": "inner", "name": "b", "repeat": 2}]},
    }
    layers = [{"block": "outer", "name": "stage", "repeat": 2}, {"block": "outer", "name": "last"}, *HEAD]
    assert [r.name for r in valid(layers, blocks).layers] == [
        "stage.0.a.c", "stage.0.b.0.c", "stage.0.b.1.c", "stage.1.a.c", "stage.1.b.0.c", "stage.1.b.1.c",
        "last.a.c", "last.b.0.c", "last.b.1.c", "global_average_pooling2d", "dense",
    ]  # fmt: skip


def _nested(depth: int) -> dict:
    """b0 uses b1 ... uses b{depth-1}, which holds one layer: `depth` levels of blocks."""
    return {
        f"b{k}": {"layers": [{"block": f"b{k + 1}", "name": "x"} if k + 1 < depth else conv("c")]} for k in range(depth)
    }


def test_blocks_nest_8_deep() -> None:
    report = valid([{"block": "b0", "name": "top"}, *HEAD], _nested(8))
    assert report.layers[0].name == "top" + ".x" * 7 + ".c"


def test_blocks_nested_9_deep_are_refused() -> None:
    (issue,) = issues_of([{"block": "b0", "name": "top"}, *HEAD], _nested(9))
    assert (issue.layer, issue.field) == (0, "block")
    assert "blocks are nested more than 8 deep" in issue.message and "Hint:" in issue.message
    assert issue.message.startswith("layers[0] block 'b0' 'top' -> layers[0] block 'b1' 'x' -> ")


def test_repeat_1000_is_accepted() -> None:
    report = valid([{"block": "unit", "name": "u", "repeat": 1000}, *HEAD], {"unit": UNIT})
    assert len(report.layers) == 1002 and report.layers[999].name == "u.999.c"


def test_repeat_over_1000_is_refused() -> None:
    (issue,) = issues_of([{"block": "unit", "name": "u", "repeat": 1001}, *HEAD], {"unit": UNIT})
    assert issue.layer == 0 and issue.field.endswith("repeat") and "≤ 1,000" in issue.message


def test_a_field_error_of_a_block_use_names_the_use_and_the_field() -> None:
    (issue,) = issues_of([{"block": "unit", "name": "u", "repeat": 1001}, *HEAD], {"unit": UNIT})
    assert issue.field == "repeat"
    assert issue.message.startswith("layers[0] block 'unit' 'u': repeat must be")


def test_a_block_use_without_a_name_names_the_field_name() -> None:
    (issue,) = issues_of([{"block": "one"}, *HEAD], {"one": ONE})
    assert issue.field == "name"
    assert issue.message.startswith("layers[0] block 'one': missing required field 'name'")


# ---- limits ----------------------------------------------------------------------------------------


def _sized(repeat: int, extra_convs: int) -> tuple[list, dict]:
    """repeat x a 5-layer block, then `extra_convs` convs and the 2-layer head."""
    five = {"layers": [conv() for _ in range(5)]}
    return [{"block": "five", "name": "u", "repeat": repeat}, *[conv() for _ in range(extra_convs)], *HEAD], {
        "five": five
    }


def test_5000_expanded_layers_are_accepted() -> None:
    layers, blocks = _sized(999, 3)  # 4,995 + 3 + 2
    assert len(valid(layers, blocks).layers) == 5000


def test_5001_expanded_layers_are_refused() -> None:
    layers, blocks = _sized(999, 4)
    (issue,) = issues_of(layers, blocks)
    assert (issue.layer, issue.field) == (None, "layers")
    assert "expands to more than 5,000 layers" in issue.message and "Hint:" in issue.message


@pytest.mark.parametrize("through_param", [False, True], ids=["repeat-1000", "repeat-$n"])
def test_a_block_bomb_is_refused_before_anything_is_built(monkeypatch: pytest.MonkeyPatch, through_param) -> None:
    """10 levels of repeat 1000 (10^30 layers), written as numbers or passed down as `repeat: $n`: refused by
    counting on the definitions; the builder never runs."""

    def no_building(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the graph builder ran on a block bomb")

    monkeypatch.setattr(graph_module._Builder, "expand", no_building)
    inner = {"repeat": "$n", "n": "$n"} if through_param else {"repeat": 1000}
    blocks = {
        f"b{k}": {"params": ["n"] if through_param else [],
                  "layers": [{"block": f"b{k + 1}", "name": "x", **inner} if k < 9 else conv("c")]}
        for k in range(10)
    }  # fmt: skip
    top = {"block": "b0", "name": "top", "repeat": 1000} | ({"n": 1000} if through_param else {})
    report = analyze(spec_from_data(data([top, *HEAD], blocks)))
    assert report.layers == [] and report.graph.nodes == ()
    assert_exactly(report.issues, [E(None, "layers", "expands to more than 5,000 layers")])


# ---- messages inside blocks --------------------------------------------------------------------------


def test_a_fault_in_a_block_used_twice_points_at_the_first_use() -> None:
    """The second use reads the first, whose output is unknown: one report, not one per use."""
    blocks = {"bad": {"layers": [conv("c", filters=8), merge("Add", "c", "in", name="add")]}}
    issues = issues_of([{"block": "bad", "name": "l1"}, {"block": "bad", "name": "l2"}, *HEAD], blocks)
    assert_exactly(issues, [E(0, "inputs", "layers[0] block 'bad' 'l1' -> layers[1] Add 'add'")])


def test_a_warning_in_every_copy_is_reported_once() -> None:
    blocks = {"soft": {"layers": [conv("c", activation="softmax")]}}
    report = analyze(spec_from_data(data([{"block": "soft", "name": "u", "repeat": 3}, *HEAD], blocks)))
    assert report.issues == []
    assert len(report.warnings) == 1 and "softmax" in report.warnings[0].message


def test_a_dotted_reference_into_a_block_gets_a_useful_hint() -> None:
    (issue,) = issues_of([{"block": "one", "name": "layer1"}, conv("x", inputs="layer1.c"), *HEAD], {"one": ONE})
    assert (issue.layer, issue.field) == (1, "inputs")
    assert "write a number" not in issue.message
    assert "layer1" in issue.message and "Hint:" in issue.message


# ---- compile: weights, metadata, the same graph as flat ------------------------------------------------

RESIDUAL = {  # conv (constant weights given per use) -> BN -> relu -> + in
    "params": ["v"],
    "layers": [
        conv("conv", kernel_size=3, padding="same", kernel_initializer={"type": "constant", "value": "$v"},
             bias_initializer={"type": "constant", "value": "$v"}),
        {"type": "BatchNormalization", "name": "bn"},
        {"type": "Activation", "name": "act", "activation": "relu"},
        merge("Add", "act", "in", name="add"),
    ],
}  # fmt: skip
STEM = conv("stem", kernel_initializer={"type": "constant", "value": 0.5})
TAIL = [
    gap("pool"),
    {"type": "Dense", "name": "head", "units": 3, "kernel_initializer": {"type": "constant", "value": 0.3}},
]
BLOCK_SPEC = data(
    [STEM, {"block": "res", "name": "s", "repeat": 2, "v": 0.1}, {"block": "res", "name": "t", "v": -0.2}, *TAIL],
    {"res": RESIDUAL},
)


def _flat_unit(prefix: str, source: str, v: float) -> list[dict]:
    init = {"type": "constant", "value": v}
    return [
        conv(f"{prefix}_conv", kernel_size=3, padding="same", kernel_initializer=init, bias_initializer=init,
             inputs=[source]),
        {"type": "BatchNormalization", "name": f"{prefix}_bn", "inputs": [f"{prefix}_conv"]},
        {"type": "Activation", "name": f"{prefix}_act", "activation": "relu", "inputs": [f"{prefix}_bn"]},
        merge("Add", f"{prefix}_act", source, name=f"{prefix}_add"),
    ]  # fmt: skip


FLAT_SPEC = data([
    STEM | {"inputs": ["input"]},
    *_flat_unit("s_0", "stem", 0.1), *_flat_unit("s_1", "s_0_add", 0.1), *_flat_unit("t", "s_1_add", -0.2),
    TAIL[0] | {"inputs": ["t_add"]}, TAIL[1] | {"inputs": ["pool"]},
])  # fmt: skip


def _graph_of(model, rename=lambda s: s) -> tuple:
    """Nodes (op, name, inputs, outputs, attributes) and initializers by name, under `rename`."""
    g = model.graph
    nodes = [
        (n.op_type, rename(n.name), [rename(x) for x in n.input], [rename(x) for x in n.output],
         [a.SerializeToString(deterministic=True) for a in n.attribute])
        for n in g.node
    ]  # fmt: skip
    inits = {rename(t.name): numpy_helper.to_array(t) for t in g.initializer}
    io = ([x.SerializeToString() for x in g.input], [x.SerializeToString() for x in g.output])
    return nodes, inits, io


def test_a_block_spec_compiles_to_the_same_graph_as_the_network_written_out_flat() -> None:
    block_names = [r.name for r in valid(*doc_parts(BLOCK_SPEC)).layers]
    flat_names = [r.name for r in valid(*doc_parts(FLAT_SPEC)).layers]
    assert flat_names == [n.replace(".", "_") for n in block_names]
    expanded = dict(zip(flat_names, block_names, strict=True))

    def rename(text: str) -> str:  # 's_0_conv.weight' -> 's.0.conv.weight', 's_0_conv/Conv' -> 's.0.conv/Conv'
        cut = min((i for i in (text.find("."), text.find("/")) if i >= 0), default=len(text))
        return expanded.get(text[:cut], text[:cut]) + text[cut:]

    nodes, inits, io = _graph_of(compile_spec(spec_from_data(BLOCK_SPEC)))
    flat_nodes, flat_inits, flat_io = _graph_of(compile_spec(spec_from_data(FLAT_SPEC)), rename)
    assert nodes == flat_nodes and io == flat_io
    assert list(inits) == list(flat_inits)
    for name, value in inits.items():
        np.testing.assert_array_equal(value, flat_inits[name], err_msg=name)
    assert inits["t.conv.weight"].flat[0] == np.float32(-0.2) and inits["s.1.conv.bias"].flat[0] == np.float32(0.1)


def test_weights_are_named_per_expanded_layer() -> None:
    model = compile_spec(spec_from_data(data([{"block": "basic", "name": "layer1", "filters": 4, "repeat": 2},
                                               *HEAD], {"basic": BASIC})))  # fmt: skip
    names = [t.name for t in model.graph.initializer]
    assert names == [f"layer1.{k}.{c}.{p}" for k in (0, 1) for c in ("conv1", "conv2") for p in ("weight", "bias")] + [
        "dense.weight",
        "dense.bias",
    ]


def test_the_report_names_parameters_like_a_state_dict() -> None:
    report = valid([{"block": "basic", "name": "layer1", "filters": 4, "repeat": 1}, *HEAD], {"basic": BASIC})
    assert list(report.param_shapes)[:2] == ["layer1.0.conv1.weight", "layer1.0.conv1.bias"]
    assert report.param_shapes["layer1.0.conv1.weight"] == (4, 4, 3, 3)


def _metadata(doc: dict) -> dict[str, str]:
    return {p.key: p.value for p in compile_spec(spec_from_data(doc)).metadata_props}


def test_metadata_keeps_the_spec_as_written_and_the_expanded_layers() -> None:
    meta = _metadata(BLOCK_SPEC)
    written = json.loads(meta["cnnspec.spec"])
    assert set(written["blocks"]) == {"res"}
    assert [item.get("block") for item in written["layers"]] == [None, "res", "res", None, None]  # unexpanded
    expanded = json.loads(meta["cnnspec.expanded"])
    report = analyze(spec_from_data(BLOCK_SPEC))
    assert [(e["name"], e["inputs"]) for e in expanded] == [(r.name, list(r.inputs)) for r in report.layers]
    assert expanded[1]["name"] == "s.0.conv" and expanded[1]["type"] == "Conv2D" and expanded[1]["filters"] == 4
    assert expanded[4]["inputs"] == ["s.0.act", "stem"]


@pytest.mark.parametrize("doc", [FLAT_SPEC, data([conv(), *HEAD])], ids=["graph_without_blocks", "chain"])
def test_metadata_has_no_expanded_layers_without_blocks(doc: dict) -> None:
    meta = _metadata(doc)
    assert "cnnspec.spec" in meta and "cnnspec.expanded" not in meta


def test_the_embedded_spec_means_the_same_names() -> None:
    doc = data([{"block": "basic", "name": "layer1", "filters": 4}, *HEAD], {"basic": BASIC})
    again = spec_from_data(json.loads(_metadata(doc)["cnnspec.spec"]))
    assert [r.name for r in analyze(again).layers] == [r.name for r in valid(*doc_parts(doc)).layers]


# ---- the CLI -------------------------------------------------------------------------------------------


def _write(tmp_path: Path, doc: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


CLI_SPEC = data([conv("stem"), {"block": "basic", "name": "layer1", "filters": 4, "repeat": 2}, gap("pool"),
                 {"type": "Dense", "units": 2}], {"basic": BASIC})  # fmt: skip


def test_validate_json_gives_each_layer_its_inputs(tmp_path: Path) -> None:
    code, out, err = run_cli("validate", "--json", _write(tmp_path, CLI_SPEC))
    assert_no_traceback(out, err)
    assert code == 0, err
    doc = json.loads(out)
    assert [(layer["name"], layer["inputs"]) for layer in doc["layers"]] == [
        ("stem", ["input"]),
        ("layer1.0.conv1", ["stem"]), ("layer1.0.conv2", ["layer1.0.conv1"]),
        ("layer1.0.add", ["layer1.0.conv2", "stem"]),
        ("layer1.1.conv1", ["layer1.0.add"]), ("layer1.1.conv2", ["layer1.1.conv1"]),
        ("layer1.1.add", ["layer1.1.conv2", "layer1.0.add"]),
        ("pool", ["layer1.1.add"]), ("dense", ["pool"]),
    ]  # fmt: skip


def test_the_table_has_a_connected_to_column_for_graphs_only(tmp_path: Path, specs_dir: Path) -> None:
    code, out, err = run_cli("validate", _write(tmp_path, CLI_SPEC))
    assert code == 0 and err == "", err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("#"))
    assert header.rstrip().endswith("connected to")
    add_row = next(line for line in lines if " layer1.1.add " in line)
    assert add_row.rstrip().endswith("layer1.1.conv2, layer1.0.add")
    assert next(line for line in lines if " layer1.0.conv1 " in line).rstrip().endswith("stem")

    code, out, err = run_cli("validate", specs_dir / "seed.yaml")
    assert code == 0 and "connected to" not in out


def test_validate_json_reports_a_block_error_with_both_places(tmp_path: Path) -> None:
    doc = data([conv("stem"), {"block": "basic", "name": "layer1", "filters": 8, "repeat": 2}, *HEAD], {"basic": BASIC})
    code, out, err = run_cli("validate", "--json", _write(tmp_path, doc))
    assert_no_traceback(out, err)
    assert code == 1
    errors = json.loads(out)["errors"]
    assert len(errors) == 1 and (errors[0]["layer"], errors[0]["field"]) == (1, "inputs")
    assert errors[0]["message"].startswith("layers[1] block 'basic' 'layer1' (copy 0) -> layers[2] Add 'add': ")


def test_schema_describes_inputs_and_blocks() -> None:
    code, out, err = run_cli("schema")
    assert code == 0 and err == ""
    schema = json.loads(out)
    assert "blocks" in schema["properties"]
    assert "BlockItem" in schema["$defs"] and "BlockUse" in schema["$defs"] and "BlockDef" in schema["$defs"]
    assert "inputs" in schema["$defs"]["Conv2D"]["properties"] and "inputs" in schema["$defs"]["Add"]["properties"]
    assert "inputs" in schema["$defs"]["BlockItem"]["properties"]
    assert schema["$defs"]["BlockDef"]["properties"]["layers"]["items"] == {"$ref": "#/$defs/BlockItem"}
