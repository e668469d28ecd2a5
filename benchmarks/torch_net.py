"""The same network as a cnnspec spec, in PyTorch eager (benchmark baseline only).

Sequential specs become an nn.Sequential of the spec's layers; graph specs (blocks, `inputs:`) become a
GraphNet that runs the expanded graph of `cnnspec.analysis.check(spec).layers` row by row, each row reading
its inputs by name, with the kinds ResNet- and MobileNet-style specs use."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "relu6": nn.ReLU6,
    "hard_sigmoid": nn.Hardsigmoid,
    "hard_silu": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "selu": nn.SELU,
}


def activation(name):
    # softmax is left to CrossEntropyLoss (the cnnspec loss is fused the same way)
    return [] if name in (None, "linear", "softmax") else [ACTIVATIONS[name]()]


def is_graph(spec) -> bool:
    """A spec with blocks or `inputs:` (anything that is not one layer after another)."""
    return (
        bool(spec.blocks)
        or any(getattr(item, "inputs", None) is not None for item in spec.layers)
        or any(not hasattr(item, "type") for item in spec.layers)
    )


def torch_model(spec):
    from cnnspec.analysis import check

    report = check(spec)
    if is_graph(spec):
        model = GraphNet(report)
        return model, graph_optimizer(spec, model)
    layers: list[nn.Module] = []
    for row, layer in zip(report.layers, spec.layers, strict=True):
        layers += convert(layer, row)
    model = nn.Sequential(*layers)
    t = spec.training
    kind, lr = (t.optimizer, t.resolved_learning_rate) if t else ("adam", 1e-3)
    if kind in ("adam", "adamw"):
        opt = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if kind != "sgd" else 0.0)
    return model, opt


def convert(layer, row) -> list[nn.Module]:
    kind = layer.type
    if kind == "DepthwiseConv2D":  # cnnspec lowers it as this grouped Conv2D (group = C, weight [C·m, 1, kh, kw])
        return convert(layer._as_conv(row.input_shape), row)
    if kind == "Conv2D":
        top, left, bottom, right = layer.pads(row.input_shape)
        pad = [nn.ZeroPad2d((left, right, top, bottom))] if (top, left, bottom, right) != (0, 0, 0, 0) else []
        conv = nn.Conv2d(row.input_shape[2], layer.filters, layer.kernel_size, layer.strides, 0,
                         layer.dilation_rate, layer.groups, layer.use_bias)  # fmt: skip
        return pad + [conv] + activation(layer.activation)
    if kind == "MaxPooling2D":
        return [nn.MaxPool2d(layer.pool_size, layer.stride_pair)]
    if kind == "AveragePooling2D":
        return [nn.AvgPool2d(layer.pool_size, layer.stride_pair)]
    if kind == "Flatten":
        return [nn.Flatten()]
    if kind == "Dense":
        return [nn.Linear(row.input_shape[0], layer.units, layer.use_bias)] + activation(layer.activation)
    if kind == "Dropout":
        return [nn.Dropout(layer.rate)]
    if kind == "BatchNormalization":
        bn = nn.BatchNorm2d if len(row.input_shape) == 3 else nn.BatchNorm1d
        return [bn(row.input_shape[-1], eps=layer.epsilon, momentum=1 - layer.momentum)]
    if kind == "Activation":
        return activation(layer.activation)
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        pool = nn.AdaptiveAvgPool2d(1) if kind == "GlobalAveragePooling2D" else nn.AdaptiveMaxPool2d(1)
        return [pool, nn.Flatten()]
    if kind == "ZeroPadding2D":
        (top, bottom), (left, right) = layer.padding
        return [nn.ZeroPad2d((left, right, top, bottom))]
    if kind == "ReLU":
        if layer.threshold == 0 and layer.negative_slope == 0:
            return [nn.ReLU() if layer.max_value is None else nn.Hardtanh(0.0, layer.max_value)]
        return [KerasReLU(layer.max_value, layer.negative_slope, layer.threshold)]
    raise NotImplementedError(kind)


class KerasReLU(nn.Module):
    """y = [x > t] · min(x, max_value) + slope · min(x - t, 0), as cnnspec's ReLU layer."""

    def __init__(self, max_value, slope, threshold):
        super().__init__()
        self.max_value, self.slope, self.threshold = max_value, slope, threshold

    def forward(self, x):
        kept = x if self.max_value is None else torch.clamp(x, max=self.max_value)
        return kept * (x > self.threshold) + self.slope * torch.clamp(x - self.threshold, max=0.0)


# ---- graph specs ----------------------------------------------------------------------------------

MERGES = {
    "Add": lambda xs: sum(xs[1:], xs[0]),
    "Subtract": lambda xs: xs[0] - xs[1],
    "Multiply": lambda xs: _fold(torch.mul, xs),
    "Average": lambda xs: sum(xs[1:], xs[0]) / len(xs),
    "Maximum": lambda xs: _fold(torch.maximum, xs),
    "Minimum": lambda xs: _fold(torch.minimum, xs),
}


def _fold(op, xs):
    out = xs[0]
    for x in xs[1:]:
        out = op(out, x)
    return out


class GraphNet(nn.Module):
    """The expanded graph of a spec: one module per single-input row (`convert`, as the sequential path),
    merges applied to the named inputs. Row outputs are dropped after their last reader."""

    def __init__(self, report):
        super().__init__()
        self.rows = [(row.name, row.type, tuple(row.inputs), row) for row in report.layers]
        self.steps = nn.ModuleList()
        last_use: dict[str, int] = {}
        for i, (_name, kind, inputs, row) in enumerate(self.rows):
            for source in inputs:
                last_use[source] = i
            if kind in MERGES or kind == "Concatenate":
                self.steps.append(nn.Identity())
            else:
                layer = row.layer
                if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D") and getattr(layer, "keepdims", False):
                    pool = nn.AdaptiveAvgPool2d(1) if kind == "GlobalAveragePooling2D" else nn.AdaptiveMaxPool2d(1)
                    self.steps.append(pool)
                else:
                    self.steps.append(nn.Sequential(*convert(layer, row)))
        self.output = self.rows[-1][0]
        self.drop = [[s for s in inputs if last_use[s] == i] for i, (_, _, inputs, _) in enumerate(self.rows)]

    def forward(self, x):
        values = {"input": x}
        for (name, kind, inputs, row), step, drop in zip(self.rows, self.steps, self.drop, strict=True):
            xs = [values[source] for source in inputs]
            if kind in MERGES:
                values[name] = MERGES[kind](xs)
            elif kind == "Concatenate":
                axis = row.layer._axis(len(row.input_shapes[0]))
                dim = (2, 3, 1)[axis] if len(row.input_shapes[0]) == 3 else 1
                values[name] = torch.cat(xs, dim)
            else:
                values[name] = step(xs[0])
            for source in drop:
                del values[source]
        return values[self.output]


def graph_optimizer(spec, model):
    """The spec's optimizer with its momentum, nesterov and weight decay (PyTorch's coupled L2 for SGD, decoupled
    for AdamW; cnnspec decouples both: the same work per step)."""
    from cnnspec.training.optimizers import Optimizer

    t = spec.training
    if t is None:
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    o, lr = Optimizer.from_training(t), t.resolved_learning_rate
    if o.kind in ("adam", "adamw"):
        kind = torch.optim.AdamW if o.kind == "adamw" or o.weight_decay else torch.optim.Adam
        return kind(model.parameters(), lr=lr, betas=(o.beta_1, o.beta_2), eps=o.epsilon, weight_decay=o.weight_decay)
    momentum = o.momentum if o.kind != "sgd" else 0.0
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, nesterov=o.kind == "nesterov", weight_decay=o.weight_decay
    )
