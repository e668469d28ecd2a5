"""The shipped graph specs against the numbers of the networks they reproduce, end to end on the CPU.

Parameter counts are Keras's `model.count_params()` for keras.applications.ResNet50 / DenseNet121
(weights=None) and the PyTorch CIFAR ResNet-18's state dict (11,173,962 trainable + 9,600 running
statistics). Each spec validates, compiles, classifies an image and trains one step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnspec.analysis import check
from cnnspec.compiler import compile_spec, initial_params, model_bytes
from cnnspec.spec import load_spec
from cnnspec.training.loop import dropout_masks
from cnnspec.training.optimizers import Optimizer
from cnnspec.training.program import build_train_step
from cnnspec.training.runner import StepRunner

SPECS = Path(__file__).resolve().parents[1] / "specs"

NUMBERS = {  # spec: (total params, non-trainable, {layer: Keras output shape})
    "resnet18_cifar": (11_183_562, 9_600, {"layer1": (32, 32, 64), "layer2": (16, 16, 128), "layer4": (4, 4, 512)}),
    "resnet50": (25_636_712, 53_120, {"layer1.2.relu": (56, 56, 256), "layer2.3.relu": (28, 28, 512),
                                      "layer3.5.relu": (14, 14, 1024), "layer4.2.relu": (7, 7, 2048)}),
    "densenet121": (8_062_504, 83_648, {}),
    "se_small": (295_270, 896, {}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_parameter_counts_and_stage_shapes_match_the_reference(name: str) -> None:
    total, frozen, stages = NUMBERS[name]
    report = check(load_spec(SPECS / f"{name}.yaml"))
    assert (report.total_params, report.total_params - report.trainable_params) == (total, frozen)
    shapes = {row.name: row.output_shape for row in report.layers}
    for layer, shape in stages.items():
        produced = shapes.get(layer) or shapes[[r.name for r in report.layers if r.name.startswith(layer + ".")][-1]]
        assert produced == shape, layer


def test_densenet121_stages_match_keras() -> None:
    """Keras's DenseNet121: 56x56x256, 28x28x512, 14x14x1024 and 7x7x1024 after the four dense blocks."""
    report = check(load_spec(SPECS / "densenet121.yaml"))
    concat = [row for row in report.layers if row.type == "Concatenate"]
    assert len(concat) == 6 + 12 + 24 + 16
    ends = [concat[i].output_shape for i in (5, 17, 41, 57)]
    assert ends == [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 1024)]


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_compiles_runs_and_trains_a_step(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    report = check(spec)
    model = compile_spec(spec, seed=0)
    onnx.checker.check_model(model)  # (the full check's shape inference over 100 MB is left to the small nets)
    h, w, c = spec.input_shape
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, c, h, w)).astype(np.float32)
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"input": image})
    assert probabilities.shape == (1, report.output_shape[0])
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)

    program = build_train_step(spec, report, Optimizer("sgd"))
    runner = StepRunner(program)
    params = initial_params(spec, report, seed=0)
    runner.load(params, {})
    x = rng.uniform(0, 255, (2, c, h, w)).astype(np.float32)
    y = np.array([0, 1], np.int64)
    loss, _ = runner.step(x, y, 0.01, 0, dropout_masks(program, 0, 0, 0, 2))
    assert np.isfinite(loss)
    after = runner.params()
    changed = [k for k in program.trainable if not np.array_equal(after[k], params[k])]
    assert len(changed) == len(program.trainable)  # every trainable parameter got a gradient
