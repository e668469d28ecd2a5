"""One train step of the native backend, as a plain function (cross-checks and small experiments).

The step is the train-step program the loop runs, with fresh optimizer state (step 0) and the
dropout masks of (seed 0, epoch 0, batch 0), exactly the loop's first step with seed 0.
"""

from __future__ import annotations

import numpy as np

from ..spec import Spec
from .loop import dropout_masks
from .optimizers import Optimizer
from .program import CORRECT, INPUT, LABELS, LOSS, LR, STEP, build_train_step, new


def one_step(
    spec: Spec,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    learning_rate: float,
    optimizer: str = "sgd",
) -> dict[str, np.ndarray]:
    """Parameters after one update on the batch (x: N,C,H,W raw pixels; y: int labels).

    The optimizer's other settings (momentum, betas, epsilon, weight decay) and label smoothing come
    from the spec's training section when it has one, else Keras's defaults.
    """
    from ..analysis import check
    from ..sessions import make_session
    from .trainer import resolve_settings

    report = check(spec)
    settings = resolve_settings(spec, optimizer=optimizer)
    opt: Optimizer = settings.optimizer
    program = build_train_step(spec, report, opt, settings.label_smoothing)
    session = make_session(program.model.SerializeToString(), "cpu")
    x = np.ascontiguousarray(x, np.float32)
    feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    feeds |= opt.initial_state({p: feeds[p] for p in program.trainable})
    feeds |= {INPUT: x, LABELS: np.asarray(y, np.int64), LR: np.asarray(learning_rate, np.float32)}
    feeds |= {STEP: np.asarray(0, np.int64)} | dropout_masks(program, 0, 0, 0, len(x))
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds), strict=True))
    assert LOSS in got and CORRECT in got
    return {p: got[new(p)] for p in program.params}
