"""The train-step program: forward (training mode), loss, backward and optimizer update in ONE graph.

  inputs:  params... (layer order, running statistics included), optimizer state..., input [N,C,H,W]
           raw pixels, labels [N] int64, learning_rate (scalar), step (int64 scalar: updates done so
           far), and one `<dropout layer>.mask` [N, ...] per Dropout layer
  outputs: loss (scalar), correct (int64 scalar), new.<param>..., new.<state>...

Only standard-domain operators, so any onnxruntime (CPU, CUDA) or other ONNX runtime can run it.
The eval program (params..., input, labels) -> (loss, correct) is the inference forward plus the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..analysis import Report
from ..builder import GraphBuilder, make_model
from ..compiler import DEFAULT_OPSET, lower_layers, lower_preprocess
from ..graph import param_name
from ..shapes import hwc_to_chw
from ..spec import Spec
from .autodiff import backward
from .losses import binary_cross_entropy, cross_entropy, logits_of
from .optimizers import Optimizer

INPUT, LABELS, LR, STEP, LOSS, CORRECT = "input", "labels", "learning_rate", "step", "loss", "correct"
TRAIN_OPSET = max(DEFAULT_OPSET, 18)  # ScatterElements reduction="add" (MaxPool's gradient: 16), Col2Im (18)


def new(name: str) -> str:
    """Output name of a tensor's value after the step."""
    return f"new.{name}"


@dataclass
class Program:
    model: onnx.ModelProto
    params: list[str]
    """Every parameter, in layer order (graph inputs and, as new.<name>, outputs)."""
    trainable: list[str]
    state: list[str] = field(default_factory=list)
    masks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Dropout mask inputs and their per-sample NCHW shapes."""
    rates: dict[str, float] = field(default_factory=dict)
    """Dropout rate of each mask input."""
    serial: bool = False
    """Runs only in a session with one intra-op thread (see GraphBuilder.serial)."""


def _float(g: GraphBuilder) -> int:
    return TensorProto.DOUBLE if g.dtype.itemsize == 8 else TensorProto.FLOAT


def _forward(g: GraphBuilder, spec: Spec, report: Report, training: bool, smoothing: float):
    x = lower_preprocess(g, spec, INPUT)
    forward = lower_layers(g, report, x, lambda name: name, training=training)
    if report.binary:  # one sigmoid unit: binary cross-entropy on its logit, the sigmoid's input
        logit = forward.contexts[-1].pre_activation
        return forward, binary_cross_entropy(g, logit, LABELS, smoothing), True
    logits, fused = logits_of(report.layers[-1].layer, forward.contexts[-1], forward.output)
    loss = cross_entropy(g, logits, LABELS, report.output_shape[0], smoothing)
    return forward, loss, fused


def build_train_step(
    spec: Spec,
    report: Report,
    optimizer: Optimizer,
    smoothing: float = 0.0,
    *,
    gradients_only: bool = False,
    dtype: type = np.float32,
    device: str = "cpu",
    serial: bool = False,
) -> Program:
    """The train-step graph; with `gradients_only`, outputs grad.<param> instead of updating.

    `device` picks among equivalent formulations: Col2Im and MaxUnpool (faster on onnxruntime's CPU)
    have no CUDA kernel in onnxruntime, so a cuda program uses ConvTranspose and ScatterElements.
    A `serial` program must run with one intra-op thread (GraphBuilder.serial): the runners' shards.
    """
    g = GraphBuilder(TRAIN_OPSET, dtype)
    g.device, g.serial = device, serial
    forward, loss, fused = _forward(g, spec, report, True, smoothing)
    grads = backward(g, report, forward.contexts, loss.dlogits, dy_is_dz=fused)
    params = list(report.param_shapes)
    program = Program(None, params, [p for p in params if p in grads], serial=serial)  # type: ignore[arg-type]
    outputs: dict[str, str] = {LOSS: loss.loss, CORRECT: loss.correct}
    if gradients_only:
        outputs |= {f"grad.{p}": grads[p] for p in program.trainable}
    else:
        outputs |= _updates(g, optimizer, grads, program)
    for ctx in forward.contexts:
        outputs |= {new(param_name(ctx.name, key)): t for key, t in ctx.updates.items()}
        program.masks |= {mask: shape for mask, (shape, _) in ctx.masks.items()}
        program.rates |= {mask: rate for mask, (_, rate) in ctx.masks.items()}
    if not gradients_only:  # parameters nobody updates (none today) pass through unchanged
        outputs |= {new(p): p for p in params if new(p) not in outputs}
    inputs = _inputs(g, spec, report, program)
    if gradients_only:
        inputs = [i for i in inputs if i.name not in (LR, STEP)]
    program.model = _model(g, spec, inputs, outputs)
    return program


def shard_grad(k: int, param: str) -> str:
    return f"shard{k}.grad.{param}"


def shard_weight(k: int) -> str:
    return f"shard{k}.weight"


def build_shard_update(gradients: Program, optimizer: Optimizer, shards: int) -> Program:
    """The optimizer update after data-parallel shards of one batch (see runner.ShardedStepRunner):

      inputs:  trainable params..., optimizer state..., shard<k>.grad.<param>..., shard<k>.weight
               (scalar) for k < `shards`, learning_rate, step
      outputs: new.<param>..., new.<state>...

    `gradients` is the shards' gradients-only program. The batch's gradient is g = Σ_k weight_k·grad_k
    with weight_k = n_k / n: the mean loss over the batch is the size-weighted mean of the shards'
    mean losses, and the gradient is linear.
    """
    inputs = {i.name: i for i in gradients.model.graph.input}
    g = GraphBuilder(TRAIN_OPSET)
    grads = {}
    for p in gradients.trainable:
        terms = [g.op("Mul", [shard_grad(k, p), shard_weight(k)], "shards") for k in range(shards)]
        grads[p] = terms[0] if shards == 1 else g.op("Sum", terms, "shards")
    program = Program(None, list(gradients.trainable), list(gradients.trainable))  # type: ignore[arg-type]
    outputs = _updates(g, optimizer, grads, program)
    value = helper.make_tensor_value_info
    graph_inputs = [inputs[n] for n in program.params]
    graph_inputs += [value(s, TensorProto.FLOAT, _dims(inputs[p])) for s, p in _state_of(program)]
    for k in range(shards):
        graph_inputs += [value(shard_grad(k, p), TensorProto.FLOAT, _dims(inputs[p])) for p in program.trainable]
    graph_inputs += [value(shard_weight(k), TensorProto.FLOAT, []) for k in range(shards)]
    graph_inputs += [value(LR, TensorProto.FLOAT, []), value(STEP, TensorProto.INT64, [])]
    out_infos = [_output_info(name, graph_inputs) for name in outputs]
    renames = {tensor: name for name, tensor in outputs.items()}
    for node in g.nodes:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    graph = helper.make_graph(g.nodes, "shard-update", graph_inputs, out_infos, initializer=g.initializers)
    program.model = _wrap(graph)
    return program


def _state_of(program: Program) -> list[tuple[str, str]]:
    """(state name, its parameter) pairs: 'm.conv2d.weight' belongs to 'conv2d.weight'."""
    return [(s, s.split(".", 1)[1]) for s in program.state]


def _dims(info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in info.type.tensor_type.shape.dim]


def _updates(g: GraphBuilder, optimizer: Optimizer, grads: dict[str, str], program: Program) -> dict[str, str]:
    t = g.op("Add", [g.op("Cast", [STEP], "optimizer", to=_float(g)), g.constant("optimizer", 1.0)], "optimizer")
    scalars = optimizer.step_scalars(g, LR, t)
    outputs = {}
    for p in program.trainable:
        names = optimizer.state_names(p)
        program.state += names
        w, state = optimizer.emit(g, p, grads[p], names, scalars)
        outputs[new(p)] = w
        outputs |= {new(n): s for n, s in zip(names, state, strict=True)}
    return outputs


def _inputs(g: GraphBuilder, spec: Spec, report: Report, program: Program) -> list[onnx.ValueInfoProto]:
    shapes = dict(report.param_shapes)
    shapes |= {n: shapes[n.split(".", 1)[1]] for n in program.state}
    c, h, w = hwc_to_chw(spec.input_shape)
    f = _float(g)
    value = helper.make_tensor_value_info
    inputs = [value(n, f, list(shapes[n])) for n in program.params + program.state]
    inputs += [value(INPUT, f, ["batch", c, h, w]), value(LABELS, TensorProto.INT64, ["batch"])]
    inputs += [value(LR, f, []), value(STEP, TensorProto.INT64, [])]
    inputs += [value(m, f, ["batch", *shape]) for m, shape in program.masks.items()]
    return inputs


def _model(g: GraphBuilder, spec: Spec, inputs, outputs: dict[str, str]) -> onnx.ModelProto:
    """Name the outputs (renaming the producing tensors; Identity where a name is taken)."""
    graph_inputs = {i.name for i in inputs}
    produced = {o for node in g.nodes for o in node.output}
    renames, out_infos = {}, []
    for name, tensor in outputs.items():
        if tensor in graph_inputs or tensor in renames or tensor not in produced:
            g.nodes.append(helper.make_node("Identity", [renames.get(tensor, tensor)], [name], name=f"{name}/Identity"))
        else:
            renames[tensor] = name
        out_infos.append(_output_info(name, inputs))
    for node in g.nodes:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    graph = helper.make_graph(g.nodes, f"{spec.name}-train-step", inputs, out_infos, initializer=g.initializers)
    return _wrap(graph)


def _output_info(name: str, inputs: list[onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    """A graph output's declared type: loss (float) and correct (int64) are scalars; new.<x> and grad.<x>
    are typed and shaped as the input <x> (onnx's checker wants every graph output typed)."""
    by_name = {i.name: i for i in inputs}
    source = by_name.get(name.removeprefix("new.").removeprefix("grad."))
    if source is not None:
        info = onnx.ValueInfoProto()
        info.CopyFrom(source)
        info.name = name
        return info
    float_type = by_name[INPUT].type.tensor_type.elem_type if INPUT in by_name else TensorProto.FLOAT
    kind = TensorProto.INT64 if name == CORRECT else float_type
    return helper.make_tensor_value_info(name, kind, [])


def _wrap(graph: onnx.GraphProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(make_model(graph, TRAIN_OPSET))


def build_eval(spec: Spec, report: Report, smoothing: float = 0.0) -> Program:
    """(params..., input, labels) -> (loss, correct) with the inference forward (running statistics)."""
    g = GraphBuilder(TRAIN_OPSET)
    _, loss, _ = _forward(g, spec, report, False, smoothing)
    program = Program(None, list(report.param_shapes), [])  # type: ignore[arg-type]
    inputs = _inputs(g, spec, report, program)
    inputs = [i for i in inputs if i.name not in (LR, STEP)]
    program.model = _model(g, spec, inputs, {LOSS: loss.loss, CORRECT: loss.correct})
    return program
