"""cnnspec: describe a CNN in a YAML/JSON file; validate, compile to ONNX, train and run it.

Heavy modules (onnx, onnxruntime, numpy) load only when the function that needs them is called,
so `cnnspec validate` starts fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_spec": "cnnspec.spec",
    "Spec": "cnnspec.spec",
    "analyze": "cnnspec.analysis",
    "compile_spec": "cnnspec.compiler",
    "Classifier": "cnnspec.runtime",
    "compile_to_file": "cnnspec.compiler",
    "train": "cnnspec.train_command",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnspec' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
