"""Reverse-mode differentiation over the graph: each layer kind holds its own backward rule.

The walk visits the nodes last to first. A node's dL/d(output) is the sum of what its consumers sent
back (fan-out), in a fixed order, so the rounding is fixed by the spec and a resumed run is bit-for-bit
the same. Each rule returns one dL/d(input) per input and dL/d(params). An input gets a gradient only
when a trainable parameter lies at or above it, so branches that lead to no parameter are not
differentiated (in a chain: the walk stops at the first trainable layer). A layer kind without a rule,
or a rule that returns the wrong number of gradients, stops the build loudly instead of training wrongly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError
from ..graph import INPUT, param_name

if TYPE_CHECKING:
    from ..analysis import Report
    from ..builder import GraphBuilder
    from ..layers import Lowering


def trainable_above(report: Report) -> dict[str, bool]:
    """Per node: whether it or anything it reads (transitively) has a trainable parameter."""
    above = {INPUT: False}
    for row in report.layers:
        above[row.name] = bool(row.trainable_keys()) or any(above[ref] for ref in row.inputs)
    return above


def backward(
    g: GraphBuilder, report: Report, contexts: list[Lowering], dy: str, *, dy_is_dz: bool = False
) -> dict[str, str]:
    """Emit the backward nodes; returns {full parameter name: gradient tensor} for trainable params.

    `dy` is dL/d(network output), or with `dy_is_dz` dL/d(last layer's pre-activation) (the fused
    softmax + cross-entropy gradient p - y).
    """
    above = trainable_above(report)
    if not any(above.values()):
        raise ModelError("the network has no trainable parameters: add a Conv2D or Dense layer to train")
    contexts[-1].dy_is_dz = dy_is_dz
    pending: dict[str, list[str]] = {report.graph.output: [dy]}
    grads: dict[str, str] = {}
    for row, ctx in zip(reversed(report.layers), reversed(contexts), strict=True):
        parts = pending.pop(row.name, None)
        if parts is None:
            continue  # nothing downstream of it is trained
        total = parts[0] if len(parts) == 1 else g.op("Sum", parts, f"{row.name}/grad")
        ctx.needs_dx = tuple(above[ref] for ref in row.inputs)
        dxs, layer_grads = row.layer.backward_node(g, total, ctx)
        if len(dxs) != len(row.inputs):
            raise NotImplementedError(
                f"{row.type}.backward gave {len(dxs)} input gradients for {len(row.inputs)} inputs"
            )
        for key in row.trainable_keys():
            if key not in layer_grads:
                raise NotImplementedError(f"{row.type}.backward gave no gradient for {key!r}")
            grads[param_name(row.name, key)] = layer_grads[key]
        for ref, dx, wanted in zip(row.inputs, dxs, ctx.needs_dx, strict=True):
            if wanted and dx is None:
                raise NotImplementedError(f"{row.type}.backward gave no dL/dx for layer {row.name!r}")
            if wanted:
                pending.setdefault(ref, []).append(dx)
    return grads
