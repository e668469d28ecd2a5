"""Tests that run inside the Keras environment that `.ci/keras_env.sh` makes.

    bash .ci/keras_env.sh
    .venv-keras/bin/python -m pytest tests/keras_env --confcutdir tests/keras_env -q -p no:cacheprovider

There they build Keras models, save them, import them with `cnnspec import` and compare the ONNX outputs with
`model.predict`. That environment carries a marker file (MARKER in its sys.prefix): there, a missing or broken
Keras fails every test, never skips one. Elsewhere (cnnspec's main environment, which has no Keras) the folder
is not collected; the main environment's side is tests/test_keras_import.py, on committed fixture files.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MARKER = ".cnnspec-keras-env"  # written by .ci/keras_env.sh
REQUIRED = (Path(sys.prefix) / MARKER).is_file()

if not REQUIRED and importlib.util.find_spec("keras") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config) -> str:
    import keras

    return f"keras env: keras {keras.__version__}, backend {keras.backend.backend()} (required: {REQUIRED})"
