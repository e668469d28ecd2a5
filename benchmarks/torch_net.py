"""The same network as a cnnspec spec, in PyTorch eager (benchmark baseline only)."""

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
}


def activation(name):
    # softmax is left to CrossEntropyLoss (the cnnspec loss is fused the same way)
    return [] if name in (None, "linear", "softmax") else [ACTIVATIONS[name]()]


def torch_model(spec):
    from cnnspec.analysis import check

    report = check(spec)
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
    raise NotImplementedError(kind)
