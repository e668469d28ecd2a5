"""Tests that run inside the onnxruntime-training environment that `.ci/ort_training_env.sh` makes.

    bash .ci/ort_training_env.sh
    .venv-ort-training/bin/python -m pytest tests/ort_training --confcutdir tests/ort_training

That environment carries a marker file (MARKER in its sys.prefix): there, a missing or broken
onnxruntime-training fails every test, never skips one. In an environment without the marker and without the
package (cnnspec's main one, even under CNNSPEC_ORT_TRAINING=1) the folder is not collected at all; the main
environment's side is tests/test_ort_backend_main_env.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnspec.data import Dataset
from cnnspec.training.ort_artifacts import BackendMissing, load_ort_training

from .ort_helpers import ROOT

MARKER = ".cnnspec-ort-training-env"  # written by .ci/ort_training_env.sh
REQUIRED = (Path(sys.prefix) / MARKER).is_file()


def _available() -> bool:
    try:
        load_ort_training()
    except BackendMissing:
        return False
    return True


if not REQUIRED and not _available():
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config) -> str:
    import onnxruntime

    return f"ort-training env: onnxruntime {onnxruntime.__version__} (required: {REQUIRED})"


@pytest.fixture(scope="session", autouse=True)
def ort_training():
    """(artifacts, api); raises (so every test fails) when the package is missing or broken."""
    return load_ort_training()


@pytest.fixture(scope="session")
def digits() -> tuple[Dataset, Dataset]:
    """scikit-learn's 8x8 digits with the project's fixed 80/20 split (examples/digits_data.py)."""
    spec = importlib.util.spec_from_file_location("digits_data", ROOT / "examples" / "digits_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x_train, y_train, x_test, y_test = module.digits_split()
    as_nchw = lambda x: x[:, None].astype(np.float32)  # noqa: E731 - (N, 8, 8) -> (N, 1, 8, 8)
    return Dataset(as_nchw(x_train), y_train, []), Dataset(as_nchw(x_test), y_test, [])
