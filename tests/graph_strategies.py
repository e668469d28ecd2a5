"""Hypothesis strategies for graph specs (`inputs:` and the merge layers), shape-feasible by construction.

`graph_specs_with_shapes()` draws `(spec dict, expected Keras output shapes in layer order)`: an input of at
most 10x10x3, a stem Conv2D, then 1-4 blocks drawn from

- residual: a same-shape branch of 1-2 layers added to the block input (sometimes a strided branch with a
  1x1 strided projection shortcut, sometimes a third operand, sometimes a relu after the Add);
- concat: 2-3 operands joined along channels (Keras axis -1 or 3) or, when they agree, along height (1 or -3)
  or width (2 or -2);
- se: squeeze-excite (GlobalAverage/MaxPooling2D keepdims -> 1x1 conv relu -> 1x1 conv sigmoid -> Multiply
  with the map, a (1, 1, C) x (H, W, C) broadcast), a spatial gate (H, W, 1) x (H, W, C), or a broadcast
  Add/Subtract/Average/Maximum/Minimum of a (1, 1, C) map in either operand order;
- fanout3: one tensor read by three later layers (two branches and the merge);
- paramfree: a parameter-free branch (MaxPooling2D / AveragePooling2D pool 3 stride 1 same, an Activation)
  merged back into its source;
- misc: Subtract / Average / Maximum / Minimum of a conv branch and the block input (or a second branch);
- plain: a sequential MaxPooling2D, strided conv or BatchNormalization;

then a head: Flatten (sometimes after GlobalAveragePooling2D keepdims) or a global pooling, sometimes two
Dense branches merged on the flat (units,) tensors, and a final Dense of 3 classes. A layer that a later
layer names in `inputs` gets an explicit name; the others are sometimes named, sometimes left to the
default names; a layer that reads the previous item sometimes leaves `inputs` out. Names are unique and
never collide with Keras's default names.

`keras_shapes(spec)` recomputes the output shapes of any spec dict from Keras's own formulas (this
module's arithmetic, independent of cnnspec) so a test can compare them with the report; the strategy's
tracked shapes and `keras_shapes` agree by construction, and the test checks that too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

Shape = tuple[int, ...]
ELEMENTWISE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
MERGES = (*ELEMENTWISE, "Concatenate")
CLASSES = 3


# ---- Keras's shape formulas (independent of cnnspec) ---------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_out(size: int, kernel: int, stride: int, dilation: int, padding: Any) -> int:
    """Keras's output size on one axis: valid floor((in - extent)/s) + 1, same ceil(in/s); p symmetric."""
    extent = (kernel - 1) * dilation + 1
    if padding == "same":
        return -(-size // stride)
    p = 0 if padding == "valid" else padding
    return (size + 2 * p - extent) // stride + 1


def _explicit(padding: Any) -> tuple[Any, Any]:
    if padding in ("same", "valid") or isinstance(padding, int):
        return padding, padding
    return padding[0], padding[1]


def broadcast_shape(shapes: list[Shape]) -> Shape:
    """Keras's Merge rule: same rank, each dim equal or 1 (the 1 takes the other's size)."""
    assert len({len(s) for s in shapes}) == 1, f"ranks differ: {shapes}"
    out = list(shapes[0])
    for s in shapes[1:]:
        for i, (a, b) in enumerate(zip(out, s, strict=True)):
            assert a == b or a == 1 or b == 1, f"{shapes} do not broadcast"
            out[i] = b if a == 1 else a
    return tuple(out)


def concat_shape(shapes: list[Shape], axis: int) -> Shape:
    """Keras's Concatenate: `axis` counts the batch; all other dims equal."""
    rank = len(shapes[0]) + 1
    a = axis + rank if axis < 0 else axis
    assert 1 <= a < rank and all(len(s) == rank - 1 for s in shapes)
    i = a - 1  # without the batch
    for s in shapes[1:]:
        assert s[:i] + s[i + 1 :] == shapes[0][:i] + shapes[0][i + 1 :], f"{shapes} axis {axis}"
    out = list(shapes[0])
    out[i] = sum(s[i] for s in shapes)
    return tuple(out)


def layer_shape(layer: dict, shapes: list[Shape]) -> Shape:
    """One layer's Keras output shape from its input shapes (un-normalized dict, Keras defaults)."""
    kind = layer["type"]
    if kind in ELEMENTWISE:
        if kind == "Subtract":
            assert len(shapes) == 2
        return broadcast_shape(shapes)
    if kind == "Concatenate":
        return concat_shape(shapes, layer.get("axis", -1))
    (x,) = shapes
    if kind == "Conv2D":
        (kh, kw), (sh, sw), (dh, dw) = (_pair(layer["kernel_size"]), _pair(layer.get("strides", 1)),
                                        _pair(layer.get("dilation_rate", 1)))  # fmt: skip
        ph, pw = _explicit(layer.get("padding", "valid"))
        return (window_out(x[0], kh, sh, dh, ph), window_out(x[1], kw, sw, dw, pw), layer["filters"])
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        (kh, kw) = _pair(layer.get("pool_size", 2))
        (sh, sw) = _pair(layer.get("strides") or (kh, kw))
        padding = layer.get("padding", "valid")
        return (window_out(x[0], kh, sh, 1, padding), window_out(x[1], kw, sw, 1, padding), x[2])
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return (1, 1, x[2]) if layer.get("keepdims", False) else (x[2],)
    if kind == "Flatten":
        n = 1
        for d in x:
            n *= d
        return (n,)
    if kind == "Dense":
        assert len(x) == 1
        return (layer["units"],)
    if kind in ("Dropout", "Activation", "BatchNormalization"):
        return x
    if kind == "ZeroPadding2D":
        p = layer.get("padding", 1)
        (t, b), (left, r) = ((p, p), (p, p)) if isinstance(p, int) else (
            (_pair(p[0]), _pair(p[1])) if isinstance(p[0], list) else ((p[0], p[0]), (p[1], p[1])))  # fmt: skip
        return (x[0] + t + b, x[1] + left + r, x[2])
    raise ValueError(f"no shape rule for {kind}")


def producers(spec: dict) -> list[list[str | int]]:
    """Each layer's producers: explicit names, else the previous layer's index (an int) or 'input'."""
    out: list[list[str | int]] = []
    for index, layer in enumerate(spec["layers"]):
        names = layer.get("inputs")
        if names is None:
            out.append(["input" if index == 0 else index - 1])
        else:
            out.append([names] if isinstance(names, str) else list(names))
    return out


def keras_shapes(spec: dict) -> list[Shape]:
    """The Keras output shape of every layer of a spec dict, walking its `inputs` (or the previous item)."""
    by_name: dict[str, Shape] = {"input": tuple(spec["input"]["shape"])}
    shapes: list[Shape] = []
    for layer, sources in zip(spec["layers"], producers(spec), strict=True):
        ins = [shapes[s] if isinstance(s, int) else by_name[s] for s in sources]
        shape = layer_shape(layer, ins)
        assert all(d >= 1 for d in shape), (layer, shape)
        shapes.append(shape)
        if "name" in layer:
            by_name[layer["name"]] = shape
    return shapes


# ---- the graph builder ----------------------------------------------------------------------------------


@dataclass
class _Node:
    layer: dict
    shape: Shape
    inputs: list[int | str]  # node ids or "input"
    role: str


@dataclass
class _Net:
    input_shape: Shape
    nodes: list[_Node] = field(default_factory=list)

    def shape(self, t: int | str) -> Shape:
        return self.input_shape if t == "input" else self.nodes[t].shape  # type: ignore[index]

    def add(self, role: str, layer: dict, inputs: list[int | str]) -> int:
        shape = layer_shape(layer, [self.shape(t) for t in inputs])
        assert all(d >= 1 for d in shape), (layer, shape)
        self.nodes.append(_Node(layer, shape, list(inputs), role))
        return len(self.nodes) - 1


def _conv(filters: int, kernel: int = 1, strides: int = 1, activation: str | None = None, **kw: Any) -> dict:
    layer = {"type": "Conv2D", "filters": filters, "kernel_size": kernel, "padding": "same", **kw}
    if strides != 1:
        layer["strides"] = strides
    if activation:
        layer["activation"] = activation
    return layer


@st.composite
def _order(draw, items: list) -> list:
    """A random order of the merge operands (operand order matters for Subtract and is drawn for all)."""
    return list(draw(st.permutations(items)))


@st.composite
def _branch_conv(draw, net: _Net, t: int | str, filters: int, role: str, strides: int = 1) -> int:
    kernel = draw(st.sampled_from([1, 3]))
    act = draw(st.sampled_from([None, "relu", "tanh", "sigmoid"]))
    return net.add(role, _conv(filters, kernel, strides, act), [t])


@st.composite
def residual(draw, net: _Net, t: int | str, max_channels: int) -> int:
    h, w, c = net.shape(t)
    project = h >= 2 and w >= 2 and draw(st.integers(0, 3)) == 0
    strides = 2 if project and draw(st.booleans()) else 1
    width = draw(st.integers(1, max_channels)) if project else c
    a = draw(_branch_conv(net, t, width, "res-a", strides))
    if draw(st.booleans()):
        second = draw(st.sampled_from(["conv", "bn", "act"]))
        layer = {"conv": _conv(width, draw(st.sampled_from([1, 3]))), "bn": {"type": "BatchNormalization"},
                 "act": {"type": "Activation", "activation": "tanh"}}[second]  # fmt: skip
        a = net.add("res-b", layer, [a])
    shortcut: int | str = net.add("proj", _conv(width, 1, strides), [t]) if project else t
    operands = [a, shortcut]
    if draw(st.integers(0, 4)) == 0:
        operands.append(draw(_branch_conv(net, t, width, "res-c", strides)))
    out = net.add("add", {"type": "Add"}, draw(_order(operands)))
    if draw(st.booleans()):
        out = net.add("relu", {"type": "Activation", "activation": "relu"}, [out])
    return out


@st.composite
def concat(draw, net: _Net, t: int | str, max_channels: int, max_side: int) -> int:
    h, w, c = net.shape(t)
    axes = [-1, 3, -1] + ([1, -3] if 2 * h <= max_side else []) + ([2, -2] if 2 * w <= max_side else [])
    axis = draw(st.sampled_from(axes))
    channels_axis = axis in (-1, 3)  # Keras's axis counts the batch: -3/1 height, -2/2 width
    operands: list[int | str] = []
    for i in range(draw(st.integers(2, 3))):
        kind = draw(st.sampled_from(["conv", "conv", "pool"] + (["self"] if t not in operands else [])))
        if kind == "self":
            operands.append(t)
        elif kind == "pool":
            operands.append(net.add("cpool", {"type": "MaxPooling2D", "pool_size": 3, "strides": 1,
                                              "padding": "same"}, [t]))  # fmt: skip
        else:
            filters = draw(st.integers(1, max_channels)) if channels_axis else c
            operands.append(draw(_branch_conv(net, t, filters, f"cat{i}")))
    return net.add("concat", {"type": "Concatenate", "axis": axis} if axis != -1 or draw(st.booleans())
                   else {"type": "Concatenate"}, draw(_order(operands)))  # fmt: skip


@st.composite
def squeeze_excite(draw, net: _Net, t: int | str, max_channels: int) -> int:
    h, w, c = net.shape(t)
    variant = draw(st.sampled_from(["se", "se", "spatial", "bias"]))
    if variant == "spatial":  # (H, W, 1) x (H, W, C)
        gate = net.add("gate", _conv(1, draw(st.sampled_from([1, 3])), activation="sigmoid"), [t])
        return net.add("scale", {"type": "Multiply"}, draw(_order([t, gate])))
    pool = draw(st.sampled_from(["GlobalAveragePooling2D", "GlobalMaxPooling2D"]))
    squeeze = net.add("squeeze", {"type": pool, "keepdims": True}, [t])
    if variant == "bias":  # (1, 1, C) op (H, W, C) in either order
        bias = net.add("bias", _conv(c, 1, activation=draw(st.sampled_from([None, "tanh"]))), [squeeze])
        kind = draw(st.sampled_from(["Add", "Subtract", "Average", "Maximum", "Minimum", "Multiply"]))
        return net.add("bcast", {"type": kind}, draw(_order([t, bias])))
    reduce = net.add("reduce", _conv(draw(st.integers(1, max_channels)), 1, activation="relu"), [squeeze])
    expand = net.add("expand", _conv(c, 1, activation="sigmoid"), [reduce])
    return net.add("scale", {"type": "Multiply"}, draw(_order([t, expand])))


@st.composite
def fanout3(draw, net: _Net, t: int | str, max_channels: int) -> int:
    """t is read by two branches and by the merge: three consumers."""
    h, w, c = net.shape(t)
    merge = draw(st.sampled_from(["Add", "Concatenate", "Maximum", "Average"]))
    filters = (lambda: draw(st.integers(1, max_channels))) if merge == "Concatenate" else (lambda: c)
    a = draw(_branch_conv(net, t, filters(), "fan-a"))
    if draw(st.booleans()):
        b = net.add("fan-b", {"type": "Activation", "activation": draw(st.sampled_from(["relu", "tanh"]))}, [t])
    else:
        b = draw(_branch_conv(net, t, filters(), "fan-b"))
    return net.add("fan", {"type": merge}, draw(_order([a, b, t])))


@st.composite
def param_free(draw, net: _Net, t: int | str) -> int:
    branch = draw(st.sampled_from(["max", "avg", "act"]))
    if branch == "act":
        layer: dict = {"type": "Activation", "activation": draw(st.sampled_from(["relu", "tanh", "sigmoid"]))}
    else:
        layer = {"type": "MaxPooling2D" if branch == "max" else "AveragePooling2D", "pool_size": 3, "strides": 1,
                 "padding": "same"}  # fmt: skip
    p = net.add("free", layer, [t])
    merge = draw(st.sampled_from(["Add", "Concatenate", "Multiply", "Subtract", "Average"]
                                 + (["Maximum", "Minimum"] if branch == "act" else [])))  # fmt: skip
    return net.add("free-merge", {"type": merge}, draw(_order([t, p])))


@st.composite
def misc(draw, net: _Net, t: int | str) -> int:
    h, w, c = net.shape(t)
    kind = draw(st.sampled_from(["Subtract", "Average", "Maximum", "Minimum"]))
    operands: list[int | str] = [draw(_branch_conv(net, t, c, "m-a"))]
    operands.append(t if draw(st.booleans()) else draw(_branch_conv(net, t, c, "m-b")))
    if kind != "Subtract" and draw(st.integers(0, 2)) == 0:
        operands.append(draw(_branch_conv(net, t, c, "m-c")))
    return net.add("m", {"type": kind}, draw(_order(operands)))


@st.composite
def plain(draw, net: _Net, t: int | str, max_channels: int) -> int:
    h, w, c = net.shape(t)
    options = ["bn", "conv"] + (["pool"] if h >= 2 and w >= 2 else [])
    kind = draw(st.sampled_from(options))
    if kind == "bn":
        return net.add("bn", {"type": "BatchNormalization"}, [t])
    if kind == "pool":
        return net.add("pool", {"type": "MaxPooling2D"}, [t])
    return draw(_branch_conv(net, t, draw(st.integers(1, max_channels)), "conv", draw(st.sampled_from([1, 2]))))


@st.composite
def head(draw, net: _Net, t: int | str, max_units: int = 6) -> int:
    h, w, c = net.shape(t)
    kind = draw(st.sampled_from(["GlobalAveragePooling2D", "GlobalMaxPooling2D", "keepdims-flatten"]
                                + (["Flatten"] if h * w * c <= 160 else [])))  # fmt: skip
    if kind == "keepdims-flatten":
        k = net.add("gap", {"type": "GlobalAveragePooling2D", "keepdims": True}, [t])
        f = net.add("flat", {"type": "Flatten"}, [k])
    else:
        f = net.add("flat", {"type": kind}, [t])
    if draw(st.booleans()):  # two Dense branches merged on flat tensors
        merge = draw(st.sampled_from(MERGES))
        units = draw(st.integers(1, max_units))
        a = net.add("da", {"type": "Dense", "units": units, "activation": "tanh"}, [f])
        b = net.add("db", {"type": "Dense", "units": units if merge != "Concatenate" else draw(
            st.integers(1, max_units))}, [f])  # fmt: skip
        operands = [a, b] + ([f] if merge != "Concatenate" and units == net.shape(f)[0] and draw(st.booleans())
                             else [])  # fmt: skip
        if merge == "Subtract":
            operands = operands[:2]
        layer = {"type": merge}
        if merge == "Concatenate" and draw(st.booleans()):
            layer["axis"] = draw(st.sampled_from([-1, 1]))
        f = net.add("flat-merge", layer, draw(_order(operands)))
    return net.add("logits", {"type": "Dense", "units": CLASSES}, [f])


BLOCKS = ["residual", "concat", "se", "fanout3", "param_free", "misc", "plain"]


@st.composite
def graph_specs_with_shapes(
    draw, max_blocks: int = 4, max_side: int = 10, max_channels: int = 6, blocks: list[str] | None = None
) -> tuple[dict, list[Shape]]:
    """(spec dict, the Keras output shape of each layer in order); see the module docstring."""
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)), draw(st.integers(1, 3)))
    net = _Net(shape)
    c0 = draw(st.integers(1, max_channels))
    t: int | str = net.add("stem", _conv(c0, draw(st.sampled_from([1, 3])), activation="tanh"), ["input"])
    if draw(st.integers(0, 4)) == 0:  # the model input itself as a merge operand
        stem2 = net.add("stem2", _conv(shape[2], 3, activation="tanh"), [t])
        t = net.add("in-add", {"type": draw(st.sampled_from(["Add", "Subtract", "Maximum"]))},
                    draw(_order(["input", stem2])))  # fmt: skip
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(blocks or BLOCKS))
        if kind == "residual":
            t = draw(residual(net, t, max_channels))
        elif kind == "concat":
            t = draw(concat(net, t, max_channels, max_side))
        elif kind == "se":
            t = draw(squeeze_excite(net, t, max_channels))
        elif kind == "fanout3":
            t = draw(fanout3(net, t, max_channels))
        elif kind == "param_free":
            t = draw(param_free(net, t))
        elif kind == "misc":
            t = draw(misc(net, t))
        else:
            t = draw(plain(net, t, max_channels))
        h, w, c = net.shape(t)
        if c > 2 * max_channels:  # keep the maps small: a 1x1 conv back down
            t = net.add("squash", _conv(max_channels, 1), [t])
    draw(head(net, t, draw(st.sampled_from([4, 6]))))
    return _finalize(draw, net), [n.shape for n in net.nodes]


def _finalize(draw, net: _Net) -> dict:
    """Write the nodes as layers: `inputs` left out (sometimes) where a layer reads the previous item,
    names on every layer named in some `inputs`, sometimes on others."""
    explicit: list[list[int | str] | None] = []
    for i, node in enumerate(net.nodes):
        previous: int | str = "input" if i == 0 else i - 1
        implicit = node.inputs == [previous] and node.layer["type"] not in MERGES and draw(st.integers(0, 2)) > 0
        explicit.append(None if implicit else node.inputs)
    referenced = {t for ins in explicit if ins for t in ins if t != "input"}
    names: dict[int, str] = {}
    for i, node in enumerate(net.nodes):
        if i in referenced or draw(st.integers(0, 2)) == 0:
            style = draw(st.integers(0, 2))
            names[i] = (f"n{i}_{node.role}", f"{node.role}-{i}", f"L{i}")[style].replace("--", "-")
    layers = []
    for i, node in enumerate(net.nodes):
        layer: dict[str, Any] = {}
        if i in names:
            layer["name"] = names[i]
        layer.update(node.layer)
        ins = explicit[i]
        if ins is not None:
            written = [t if t == "input" else names[t] for t in ins]  # type: ignore[index]
            layer["inputs"] = written[0] if len(written) == 1 and draw(st.booleans()) else written
        layers.append(layer)
    return {"name": "graph", "input": {"shape": list(net.input_shape)}, "layers": layers}


def graph_specs(**kw: Any) -> st.SearchStrategy[dict]:
    """Just the spec dicts of `graph_specs_with_shapes`."""
    return graph_specs_with_shapes(**kw).map(lambda pair: pair[0])
