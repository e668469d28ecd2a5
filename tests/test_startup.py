"""Start-up stays fast because each command imports only what it needs (issue 19, bug 2).

The timings themselves live in benchmarks/bench_startup.py (a shared machine makes wall-clock asserts flaky);
here each command runs in a fresh interpreter and the test checks which heavy modules it loaded: `import onnx`
alone costs ~0.65 s (ml_dtypes), so the next module that pulls it into `run` fails this test, not a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import pytest
from conftest import SPECS_DIR
from PIL import Image

from cnnspec import protos
from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.spec import load_spec

# Loaded by a command, each of these is tens to hundreds of ms: onnx's package (its helper loads ml_dtypes),
# ml_dtypes itself, and the spec side (pydantic models of every layer) that `run` never needs.
HEAVY_FOR_RUN = {"onnx", "onnx.helper", "ml_dtypes", "cnnspec.spec", "cnnspec.compiler", "cnnspec.layers", "yaml"}
HEAVY_FOR_VALIDATE = {"onnx", "ml_dtypes", "onnxruntime", "numpy", "PIL"}


def modules_loaded_by(*argv: str, cwd: Path) -> set[str]:
    """The modules a fresh interpreter holds after running `cnnspec ARGV` (exit code 0 asserted)."""
    code = (
        "import json, sys\n"
        "from cnnspec.cli import _run\n"
        f"code = _run({list(argv)!r})\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, proc.stderr
    return set(out["modules"])


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("startup")
    (work / "m.onnx").write_bytes(model_bytes(compile_spec(load_spec(SPECS_DIR / "digits.yaml"))))
    Image.new("L", (8, 8), 100).save(work / "one.png")
    return work


def test_run_loads_neither_onnx_nor_the_spec_side(model_and_image):
    loaded = modules_loaded_by("run", "m.onnx", "one.png", "--json", cwd=model_and_image)
    assert "onnxruntime" in loaded and "onnx.onnx_ml_pb2" in loaded  # it did run the model
    assert loaded & HEAVY_FOR_RUN == set()


def test_validate_loads_no_runtime():
    loaded = modules_loaded_by("validate", str(SPECS_DIR / "seed.yaml"), cwd=SPECS_DIR)
    assert "cnnspec.analysis" in loaded
    assert loaded & HEAVY_FOR_VALIDATE == set()


def test_protos_are_onnx_own_classes():
    """Messages parsed by protos.py and made by onnx are the same classes (onnx reuses the loaded module)."""
    assert protos.ModelProto is onnx.ModelProto
    assert protos.TensorProto is onnx.TensorProto
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    assert protos.load_model_from_string(model.SerializeToString()) == model


def test_itemsize_table_matches_onnx():
    for name, number in onnx.TensorProto.DataType.items():
        if number == onnx.TensorProto.UNDEFINED:
            with pytest.raises(KeyError):
                protos.itemsize(number)
            continue
        expected = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(number)).itemsize
        assert protos.itemsize(number) == expected, name


def test_protos_alone_does_not_import_onnx():
    code = "import sys, cnnspec.protos; print(sorted(m for m in ('onnx', 'ml_dtypes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
