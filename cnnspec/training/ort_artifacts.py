"""onnxruntime-training 1.19.2's artifacts for a spec: the import without torch, what it refuses, the graph
it differentiates, the four artifacts (`cnnspec export-artifacts`) and OrtTrainer, which loads them. The
training over them is ort_backend.py (the native loop through a runner), which imports this module (never the
other way round).

onnxruntime-training is frozen at 1.19.2 (Python <= 3.11, CPU wheel `onnxruntime-training-cpu`) and installs
its own `onnxruntime` module, so it lives in its own environment (SETUP below). Four quirks shape this file:

- `onnxruntime.training.__init__` imports torch. `artifacts` and `api` do not need it, so `load_ort_training`
  registers a bare package object for `onnxruntime.training` (its `__path__` only) and imports the two
  submodules from it: the package `__init__` never runs.
- Artifacts written by a current onnx carry IR version 11+; ORT 1.19.2 loads IR <= 10. Every artifact is
  re-stamped with IR 10 (its opsets and ops need nothing newer), so any onnx >= 1.21 can make them.
- Its gradient builder crashes (SIGFPE) on AveragePool and has no gradient for GlobalMaxPool, Elu, Selu,
  PRelu, HardSigmoid, HardSwish, Softplus, Softsign, or BatchNormalization in training mode. The graph given
  to it lowers the others differently (see `_lower_layer` and `ort_rewrites.py`) and `unsupported` refuses
  BatchNormalization before any work. Generating the artifacts and one smoke step run in a child process, so a
  native crash becomes a clear error, never a dead CLI.
- Its CrossEntropyLoss reads logits: a final softmax (activation or Softmax layer) is left out of the graph
  it differentiates.
- ONNX's Dropout has no noise shape: a mask broadcast over whole channels or samples (Dropout's noise_shape,
  SpatialDropout2D, StochasticDepth) is a Dropout of ones of the mask's shape, times x (`_broadcast_dropout`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CnnspecError, Issue, SpecError
from .optimizers import ADAMW_DEFAULT_DECAY
from .ort_rewrites import rewrite_ops

if TYPE_CHECKING:
    import onnx

    from ..analysis import Report
    from ..spec import Spec


ORT_TRAINING_VERSION = "1.19.2"
MAX_IR_VERSION = 10  # the newest IR version onnxruntime 1.19.2 loads
ARTIFACTS = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
LOGITS, LABELS = "output", "labels"
CHILD_TIMEOUT_S = 600
SETUP = f"""python3.11 -m venv .venv-ort-training
.venv-ort-training/bin/pip install onnxruntime-training-cpu=={ORT_TRAINING_VERSION} "onnx>=1.21" numpy \\
    pydantic pyyaml typer rich pillow
.venv-ort-training/bin/pip install --no-deps -e .
.venv-ort-training/bin/cnnspec train SPEC --data DATA -o OUT.onnx --backend ort-training"""


class BackendMissing(CnnspecError):
    """onnxruntime-training is not importable here."""


# ---- importing onnxruntime.training without its torch-importing __init__ -----------------------------------


def load_ort_training() -> tuple[types.ModuleType, types.ModuleType]:
    """(artifacts, api) from onnxruntime-training, or BackendMissing with the commands that install it."""
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    folder = Path(onnxruntime.__file__).parent / "training" if onnxruntime else None
    if folder is None or not (folder / "artifacts.py").is_file():
        found = f"onnxruntime {onnxruntime.__version__} without training" if onnxruntime else "no onnxruntime"
        raise BackendMissing(
            f"--backend ort-training and export-artifacts need onnxruntime-training {ORT_TRAINING_VERSION}, which "
            f"is not installed in this environment ({sys.executable}: {found}). It replaces the `onnxruntime` "
            "module and needs Python <= 3.11, so it gets its own environment; from the cnnspec checkout run "
            f"(or `bash .ci/ort_training_env.sh`, which does the same):\n{SETUP}\n"
            "Or train with the default --backend native (docs/ort-training.md)."
        )
    onnxruntime.set_default_logger_severity(3)  # its warnings (unused initializers in eval) are not the user's
    if "onnxruntime.training" not in sys.modules:
        # A bare package: the submodules import from its folder; its __init__ (which imports torch) never runs.
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(folder)]
        package.__package__ = "onnxruntime.training"
        sys.modules["onnxruntime.training"] = package
    artifacts = importlib.import_module("onnxruntime.training.artifacts")
    api = importlib.import_module("onnxruntime.training.api")
    return artifacts, api


# ---- what this backend refuses, before any work -----------------------------------------------------------


NO_BATCH_NORM = (
    "--backend ort-training cannot train BatchNormalization: onnxruntime-training 1.19.2 has no gradient for it "
    "in training mode (batch statistics). Hint: use --backend native, or remove the layer"
)


def unsupported(spec: Spec) -> list[Issue]:
    """Layers and training settings onnxruntime-training cannot train, each with the reason and a fix."""
    from ..graph import build_graph

    issues = [
        Issue(f"{node.origin.label}: {NO_BATCH_NORM}", node.origin.index, "type")
        for node in build_graph(spec)[0].nodes
        if node.layer.type == "BatchNormalization"
    ]
    t = training_of(spec)
    if t.optimizer in ("momentum", "nesterov"):
        why = f"has no '{t.optimizer}' optimizer (onnxruntime-training 1.19.2 offers plain SGD and AdamW)"
        hint = "optimizer sgd, adam or adamw, or --backend native"
        issues.append(
            Issue(f"training.optimizer: --backend ort-training {why}. Hint: {hint}", None, "training.optimizer")
        )
    from ..analysis import analyze

    report = analyze(spec)
    if report.valid and report.binary:
        why = "--backend ort-training trains with CrossEntropyLoss only, not a binary head's binary cross-entropy"
        hint = "--backend native, or units: 2 with activation: softmax"
        issues.append(Issue(f"{why}. Hint: {hint}", report.layers[-1].index, "activation"))
    if t.label_smoothing > 0:
        why = "--backend ort-training's CrossEntropyLoss has no label smoothing"
        hint = "label_smoothing: 0, or --backend native"
        issues.append(Issue(f"training.label_smoothing: {why}. Hint: {hint}", None, "training.label_smoothing"))
    return issues


def check_supported(spec: Spec) -> None:
    issues = unsupported(spec)
    if issues:
        raise SpecError(issues)


# ---- the graph onnxruntime-training differentiates --------------------------------------------------------


def training_graph(spec: Spec, report: Report, params: dict[str, np.ndarray], seed: int = 0) -> onnx.ModelProto:
    """The inference graph with Dropout active, no final softmax (the loss reads logits) and the layers ORT
    cannot differentiate lowered to ops it can. Input `input` raw pixels, output `output` logits."""

    from ..builder import GraphBuilder, make_model
    from ..compiler import DEFAULT_OPSET, INPUT_NAME, classifier_graph, lower_layers, lower_preprocess

    g = GraphBuilder(DEFAULT_OPSET)
    for name, value in params.items():
        g.initializer(name, value)
    x = lower_preprocess(g, spec, INPUT_NAME)
    seeds = {row.name: seed + index for index, row in enumerate(report.layers)}  # one Dropout seed per layer
    output = report.graph.output

    def lower(layer, g, xs: list[str], ctx) -> str:
        if ctx.name == output and getattr(layer, "activation", None) == "softmax":
            layer = layer.model_copy(update={"activation": None})  # NOTE: the loss applies the softmax
        if ctx.name == output and layer.type == "Softmax":
            return xs[0]  # NOTE: the loss applies the softmax (a last Softmax layer is over the classes)
        start = len(g.nodes)
        y = _lower_layer(g, layer, xs, ctx, seeds[ctx.name])
        rewrite_ops(g, start)
        return y

    x = lower_layers(g, report, x, lambda name: name, training=False, lower=lower).output
    x = g.op("Identity", [x], "logits")
    g.nodes[-1].output[0] = LOGITS
    return make_model(classifier_graph(g, spec, report, LOGITS), DEFAULT_OPSET)


def _lower_layer(g, layer, xs: list[str], ctx, seed: int) -> str:
    x = xs[0]
    if layer.type in BROADCAST_DROPS and (layer.type != "Dropout" or layer.noise_shape is not None):
        shape, rate = BROADCAST_DROPS[layer.type](layer, ctx.in_shape)
        return x if rate == 0 else _broadcast_dropout(g, x, ctx, shape, rate, seed)
    if layer.type == "Dropout":
        if layer.rate == 0:
            return x
        # Training mode as the third input: ORT's eval model blanks it, so evaluation does not drop.
        ratio, on = _scalar(g, ctx.name, np.float32(layer.rate)), _scalar(g, ctx.name, np.bool_(True))
        # ORT's Dropout gradient reads the mask: the node needs its second output.
        return g.op("Dropout", [x, ratio, on], ctx.name, outputs=2, seed=int(seed))[0]
    if layer.type == "GlobalMaxPooling2D":
        # NOTE: ORT has no GlobalMaxPool gradient; a MaxPool whose window is the whole map is the same op.
        h, w = ctx.in_shape[0], ctx.in_shape[1]
        pooled = g.op("MaxPool", [x], ctx.name, kernel_shape=[h, w], strides=[1, 1])
        return pooled if layer.keepdims else g.op("Flatten", [pooled], ctx.name, axis=1)
    if layer.type == "AveragePooling2D":
        return _average_pool_as_conv(g, layer, x, ctx)
    if layer.type == "Conv2DTranspose":
        return _conv_transpose_as_conv(g, layer, x, ctx)
    if layer.type in ("Add", "Average") and len(xs) > 2:
        # NOTE: ORT has no gradient for Sum (n-ary); chained Adds are the same sum.
        total = xs[0]
        for term in xs[1:]:
            total = g.op("Add", [total, term], ctx.name)
        return total if layer.type == "Add" else g.op("Div", [total, g.constant(ctx.name, float(len(xs)))], ctx.name)
    return layer.lower_node(g, xs, ctx)


BROADCAST_DROPS = {  # layer type -> (per-sample NCHW mask shape, rate) of its mask
    "Dropout": lambda layer, shape: (layer.mask_shape(shape), layer.rate),
    "SpatialDropout2D": lambda layer, shape: ((shape[-1], 1, 1), layer.rate),
    "StochasticDepth": lambda layer, shape: ((1,) * len(shape), layer.drop_path_rate),
}


def _broadcast_dropout(g, x: str, ctx, shape: tuple[int, ...], rate: float, seed: int) -> str:
    """A mask broadcast over some axes (Keras's noise_shape: whole channels, whole samples) from ONNX Dropout.

    ONNX's Dropout has no noise_shape, so it drops a tensor of ones of the mask's shape [N, *shape]: its output
    is 0 or 1/(1 - rate), the mask, and y = x ⊙ mask. ORT's eval model turns training mode off, so the mask is
    then all ones and y = x. The ones come from Shape(x), which has no gradient: only the Mul is differentiated.
    """
    from onnx import helper

    scope = ctx.name
    batch = g.op("Slice", [g.op("Shape", [x], scope), *(g.constant(scope, [v], "int64") for v in (0, 1))], scope)
    dims = g.op("Concat", [batch, g.constant(scope, list(shape), "int64")], scope, axis=0)
    ones = g.op("ConstantOfShape", [dims], scope, value=helper.make_tensor("value", 1, [1], [1.0]))
    ratio, on = _scalar(g, scope, np.float32(rate)), _scalar(g, scope, np.bool_(True))
    mask = g.op("Dropout", [ones, ratio, on], scope, outputs=2, seed=int(seed))[0]
    return g.op("Mul", [x, mask], scope)


def _scalar(g, scope: str, value: Any) -> str:
    """A 0-d constant (GraphBuilder.constant goes through ascontiguousarray, which makes it 1-d)."""
    from onnx import numpy_helper

    name = g.unique(f"{scope}/const")
    g.initializers.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _average_pool_as_conv(g, layer, x: str, ctx) -> str:
    """AveragePool as a depthwise Conv with a fixed kernel of ones, then a division by each window's count.

    ORT's AveragePool gradient crashes (SIGFPE). Keras's 'same' average divides by the real (unpadded) pixels
    in each window: y[i, j] = sum(window ∩ image) / count[i, j], so the divisor is a fixed (OH, OW) map.
    """
    (h, w, c), (oh, ow, _) = ctx.in_shape, ctx.out_shape
    (kh, kw), (sh, sw) = layer.pool_size, layer.stride_pair
    top, left, bottom, right = layer.pads(ctx.in_shape)
    rows = [min(i * sh - top + kh, h) - max(i * sh - top, 0) for i in range(oh)]
    cols = [min(j * sw - left + kw, w) - max(j * sw - left, 0) for j in range(ow)]
    inverse = 1.0 / np.outer(rows, cols).reshape(1, 1, oh, ow)
    ones = g.constant(ctx.name, np.ones((c, 1, kh, kw)))
    summed = g.op("Conv", [x, ones], ctx.name, kernel_shape=[kh, kw], strides=[sh, sw], group=c,
                  pads=[top, left, bottom, right])  # fmt: skip
    return g.op("Mul", [summed, g.constant(ctx.name, inverse)], ctx.name)


def _conv_transpose_as_conv(g, layer, x: str, ctx) -> str:
    """ConvTranspose as a Conv on the zero-stuffed input, as Keras's JAX backend computes it.

    NOTE: ORT's gradient builder emits ConvTransposeGrad, which 1.19.2 has no CPU kernel for ("Could not find
    an implementation for ConvTransposeGrad"). The same values: put s-1 zeros after every input pixel
    (Reshape to [N, C, H, 1, W, 1], Pad, Reshape), pad by Keras's (left, right) = (K-1-top, K-1-bottom+
    output_padding) per axis, then a stride-1 Conv (dilation d) with the kernel flipped in space and its
    channel axes swapped ([C_in, filters] -> [filters, C_in]).
    """
    from ..layers.gradients import ints

    scope, (h, w, c) = ctx.name, ctx.in_shape
    (sh, sw), (kh, kw), (dh, dw) = layer.strides, layer.kernel_size, layer.dilation_rate
    top, left, bottom, right = layer.pads(ctx.in_shape)
    extra_h, extra_w = layer.onnx_output_padding(ctx.in_shape)
    ext_h, ext_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    before = [ext_h - 1 - top, ext_w - 1 - left]
    after = [ext_h - 1 - bottom + extra_h, ext_w - 1 - right + extra_w]  # past the last input pixel
    if (sh, sw) != (1, 1):
        x = g.op("Reshape", [x, ints(g, scope, [0, c, h, 1, w, 1])], scope)
        x = g.op("Pad", [x, ints(g, scope, [0] * 6 + [0, 0, 0, sh - 1, 0, sw - 1])], scope)
        x = g.op("Reshape", [x, ints(g, scope, [0, c, h * sh, w * sw])], scope)
        after = [after[0] - (sh - 1), after[1] - (sw - 1)]  # the stuffing already put s-1 zeros after the last
        if min(after) < 0:
            ends = [h * sh + min(after[0], 0), w * sw + min(after[1], 0)]
            x = g.op("Slice", [x, ints(g, scope, [0, 0]), ints(g, scope, ends), ints(g, scope, [2, 3])], scope)
    pads = [0, 0, before[0], before[1], 0, 0, max(after[0], 0), max(after[1], 0)]
    if any(pads):
        x = g.op("Pad", [x, ints(g, scope, pads)], scope)
    weight = ctx.params["weight"]
    weight = g.op("Gather", [weight, ints(g, scope, list(range(kh - 1, -1, -1)))], scope, axis=2)
    weight = g.op("Gather", [weight, ints(g, scope, list(range(kw - 1, -1, -1)))], scope, axis=3)
    weight = g.op("Transpose", [weight], scope, perm=[1, 0, 2, 3])
    inputs = [x, weight] + ([ctx.params["bias"]] if layer.use_bias else [])
    z = g.op("Conv", inputs, scope, kernel_shape=[kh, kw], dilations=[dh, dw])
    from ..layers.activations import lower_activation

    return lower_activation(g, z, layer.activation, scope)


# ---- the four artifacts, made in a child process ----------------------------------------------------------


@dataclass(frozen=True)
class OptimizerConfig:
    """What `generate_artifacts` bakes into the optimizer model (the learning rate is set per step)."""

    kind: str = "sgd"  # sgd | adamw (Adam is AdamW without weight decay)
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0

    @classmethod
    def of(cls, spec: Spec) -> OptimizerConfig:
        t = training_of(spec)
        if t.optimizer == "sgd":
            return cls("sgd")
        # As the native backend: AdamW's decay defaults to Keras's 0.004, Adam has none.
        decay = (t.weight_decay or ADAMW_DEFAULT_DECAY) if t.optimizer == "adamw" else 0.0
        return cls("adamw", t.beta_1, t.beta_2, t.epsilon, decay)


def generate_artifacts(model: onnx.ModelProto, trainable: list[str], optimizer: OptimizerConfig, folder: Path) -> None:
    """Write the four artifacts into `folder` (a private temp folder) through a child process.

    The child generates them, re-stamps their IR version and runs one smoke step; a signal or an error in it
    (a crash in ORT's native gradient builder) becomes a CnnspecError here.
    """
    load_ort_training()  # the missing-package message, before any work
    (folder / "base.onnx").write_bytes(model.SerializeToString())
    (folder / "config.json").write_text(json.dumps({"trainable": trainable, "optimizer": optimizer.__dict__}))
    code = "import sys; from cnnspec.training.ort_artifacts import _child_main; sys.exit(_child_main(sys.argv[1]))"
    source = str(Path(__file__).resolve().parents[2])  # the child imports this cnnspec, installed or not
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired:
        raise CnnspecError(
            f"onnxruntime-training did not build the training artifacts in {CHILD_TIMEOUT_S} s"
        ) from None
    if done.returncode == 0:
        return
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        why = f"crashed with {name} while building or testing the training graph"
    else:
        why = "failed: " + _child_error(done.stderr, done.returncode)
    raise CnnspecError(f"onnxruntime-training {why}. Hint: --backend native trains every cnnspec layer")


def _child_error(stderr: str, code: int) -> str:
    """The child's last error line, without ORT's C++ signatures."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {code}"
    missing = re.search(r"has not been registered: (\w+) for node (\S+?)\.?$", last)
    if missing:
        return f"it has no gradient for {missing.group(1)} (node {missing.group(2)})"
    kernel = re.search(r"Could not find an implementation for (\w+)\(\d+\) node with name '([^']+)'", last)
    if kernel:
        return f"it has no kernel for {kernel.group(1)} (node {kernel.group(2)})"
    return last if len(last) <= 400 else last[:397] + "..."


def _child_main(folder: str) -> int:
    """In the child: generate, re-stamp to IR <= 10, and run one step on a tiny zero batch."""
    import onnx

    artifacts, api = load_ort_training()
    out = Path(folder)
    config = json.loads((out / "config.json").read_text())
    model = onnx.load_model(str(out / "base.onnx"))
    opt = config["optimizer"]
    if opt["kind"] == "sgd":
        block = artifacts.OptimType.SGD
    else:
        from onnxruntime.training.onnxblock.optim import AdamW

        block = AdamW(betas=(opt["beta_1"], opt["beta_2"]), eps=opt["epsilon"], weight_decay=opt["weight_decay"])
    artifacts.generate_artifacts(
        model, requires_grad=config["trainable"], loss=artifacts.LossType.CrossEntropyLoss, optimizer=block,
        artifact_directory=out, additional_output_names=[LOGITS],
    )  # fmt: skip
    for name in ARTIFACTS[:3]:
        _restamp_ir(out / name)
    trainer = OrtTrainer(out, api)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x, y = np.zeros((2, *dims), np.float32), np.zeros(2, np.int64)
    trainer.module.train()
    trainer.module(x, y)
    trainer.module.eval()
    trainer.module(x, y)
    return 0


def _restamp_ir(path: Path) -> None:
    """onnx >= 1.17 writes IR 11+; ORT 1.19.2 refuses it. The artifacts' ops need nothing past IR 10."""
    import onnx

    model = onnx.load_model(str(path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        path.write_bytes(model.SerializeToString())


# ---- the artifacts loaded ---------------------------------------------------------------------------------


class OrtTrainer:
    """CheckpointState + Module + Optimizer over one artifacts folder."""

    def __init__(self, folder: Path, api: types.ModuleType, checkpoint: Path | None = None) -> None:
        self.state = api.CheckpointState.load_checkpoint(str(checkpoint or folder / "checkpoint"))
        self.module = api.Module(str(folder / ARTIFACTS[0]), self.state, str(folder / ARTIFACTS[1]), device="cpu")
        self.optimizer = api.Optimizer(str(folder / ARTIFACTS[2]), self.module)

    def step(self, x: np.ndarray, y: np.ndarray, learning_rate: float) -> tuple[float, int]:
        """One optimizer step on a batch; (mean loss, correct predictions) before the update."""
        self.module.train()
        self.optimizer.set_learning_rate(learning_rate)
        loss, logits = self.module(x, y)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss), int((logits.argmax(axis=1) == y).sum())

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """(mean loss, accuracy) in eval mode (Dropout off)."""
        self.module.eval()
        total, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            loss, logits = self.module(xb, yb)
            total += float(loss) * len(xb)
            correct += int((logits.argmax(axis=1) == yb).sum())
        return total / max(len(x), 1), correct / max(len(x), 1)

    def params(self, names: list[str]) -> dict[str, np.ndarray]:
        return {name: self.state.parameters[name].data.copy() for name in names}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy weights into the CheckpointState (the module trains on them; the optimizer state stays)."""
        for name, value in params.items():
            self.state.parameters[name] = np.ascontiguousarray(value, np.float32)

    def checkpoint_bytes(self) -> bytes:
        """The ORT checkpoint (weights and optimizer state) as bytes, for an atomic write."""
        with tempfile.TemporaryDirectory(prefix="cnnspec-ort-") as temp:
            path = Path(temp) / "state"
            type(self.state).save_checkpoint(self.state, str(path), include_optimizer_state=True)
            return path.read_bytes()


# ---- `cnnspec export-artifacts` ---------------------------------------------------------------------------


def export_artifacts(spec: Spec, folder: Path, seed: int = 0) -> list[Path]:
    """`cnnspec export-artifacts`: the four artifacts for on-device training, initial weights from `seed`."""
    from ..analysis import check
    from ..compiler import initial_params
    from ..files import atomic_write

    load_ort_training()
    report = check(spec)
    check_supported(spec)
    params = initial_params(spec, report, seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="cnnspec-ort-") as temp:
        model = training_graph(spec, report, params, seed)
        generate_artifacts(model, trainable(spec, report), OptimizerConfig.of(spec), Path(temp))
        for name in ARTIFACTS:
            atomic_write(folder / name, (Path(temp) / name).read_bytes())
            written.append(folder / name)
    return written


def trainable(spec: Spec, report: Report) -> list[str]:
    return report.trainable


def training_of(spec: Spec):
    """The spec's training section, Keras's defaults without one."""
    from ..spec import Training

    return spec.training or Training()
