"""Running the train-step program: parameters and optimizer state stay where the session runs.

With IOBinding, the new.<name> outputs of one step are bound as the <name> inputs of the next, so
on CUDA a step moves only the batch (and the two scalars loss/correct back); on the CPU it saves a
copy of every parameter per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..compiler import model_bytes
from ..runtime import make_session
from .program import CORRECT, INPUT, LABELS, LOSS, LR, STEP, Program, new

# NOTE: a train step is hundreds of operators; onnxruntime's spinning worker threads then lose most of
# the time when another process holds a core (measured here: 2 spinning threads 2x slower than 1).
# Without spinning, idle workers sleep and a busy machine costs little.
NO_SPINNING = {"session.intra_op.allow_spinning": "0"}


class StepRunner:
    """One train-step session and the device-resident values of its parameters and state."""

    def __init__(self, program: Program, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.program, self.device = program, device
        self.session = make_session(model_bytes(program.model), device, threads, NO_SPINNING)
        self.names = program.params + program.state
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._ort = ort
        self._device = ("cuda", 0) if device == "cuda" else ("cpu", 0)
        self.values: dict[str, Any] = {}

    def load(self, params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        """Copy parameters and state to the device (once, at the start or on resume)."""
        kind, index = self._device
        values = params | state
        self.values = {
            n: self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(values[n]), kind, index) for n in self.names
        }

    def step(
        self, x: np.ndarray, y: np.ndarray, lr: float, step: int, masks: dict[str, np.ndarray]
    ) -> tuple[float, int]:
        """One update; returns the batch's mean loss and number of correct predictions."""
        binding = self.session.io_binding()
        for name in self.names:
            binding.bind_ortvalue_input(name, self.values[name])
        feeds = {INPUT: x, LABELS: y, LR: np.asarray(lr, np.float32), STEP: np.asarray(step, np.int64)} | masks
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        kind, index = self._device
        for name in self.outputs:
            if name in (LOSS, CORRECT):
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, kind, index)
        self.session.run_with_iobinding(binding)
        got = dict(zip(self.outputs, binding.get_outputs(), strict=True))
        self.values = {n: got[new(n)] for n in self.names}
        return float(got[LOSS].numpy()), int(got[CORRECT].numpy())

    def arrays(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: np.array(self.values[n].numpy()) for n in names}

    def params(self) -> dict[str, np.ndarray]:
        return self.arrays(self.program.params)

    def state(self) -> dict[str, np.ndarray]:
        return self.arrays(self.program.state)


class Evaluator:
    """Loss and accuracy of the inference forward (running statistics, no dropout) on a data set."""

    def __init__(self, program: Program, device: str = "cpu", threads: int | None = None) -> None:
        self.program = program
        self.session = make_session(model_bytes(program.model), device, threads, NO_SPINNING)

    def __call__(self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int) -> tuple[float, float]:
        total, correct = 0.0, 0
        for start in range(0, len(y), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            loss, hits = self.session.run([LOSS, CORRECT], params | {INPUT: xb, LABELS: yb})
            total += float(loss) * len(yb)
            correct += int(hits)
        return total / len(y), correct / len(y)
