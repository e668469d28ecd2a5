"""ONNX's protobuf classes without the rest of the `onnx` package, for the commands that only read a model.

`import onnx` costs ~0.65 s (its helper module loads ml_dtypes, which builds every float8/int4 type at import);
`cnnspec run` only needs to parse a ModelProto and read its fields. The generated module `onnx/onnx_ml_pb2.py`
imports nothing but google.protobuf, so it is loaded here from the installed onnx without running
`onnx/__init__.py`: ~15 ms. It is registered under its real name, so a later `import onnx` (compile, train)
reuses the very same classes and messages from either side are interchangeable.

Usage in modelfile.py: `from . import protos as onnx`, then `onnx.ModelProto`, `onnx.TensorProto.FLOAT`, ...
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

_PB2 = "onnx.onnx_ml_pb2"


def _load_pb2() -> ModuleType:
    if _PB2 in sys.modules:  # onnx itself (or an earlier call) already loaded it
        return sys.modules[_PB2]
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("cnnspec needs the onnx package: pip install onnx")
    path = next(iter(spec.submodule_search_locations))
    pb2_spec = importlib.util.spec_from_file_location(_PB2, f"{path}/onnx_ml_pb2.py")
    if pb2_spec is None or pb2_spec.loader is None:  # pragma: no cover - a broken onnx install
        import onnx

        return onnx.onnx_ml_pb2
    module = importlib.util.module_from_spec(pb2_spec)
    sys.modules[_PB2] = module
    try:
        pb2_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PB2]
        raise
    return module


_pb2 = _load_pb2()
ModelProto: Any = _pb2.ModelProto
GraphProto: Any = _pb2.GraphProto
NodeProto: Any = _pb2.NodeProto
TensorProto: Any = _pb2.TensorProto
AttributeProto: Any = _pb2.AttributeProto
ValueInfoProto: Any = _pb2.ValueInfoProto

# Bytes per element of each TensorProto.DataType as numpy holds it (onnx.helper.tensor_dtype_to_np_dtype's
# itemsize; tests/test_startup.py checks the table against it). The 2-, 4- and 6-bit types are one byte per
# element in numpy (ml_dtypes), which is also how cnnspec's size check counted them before this table.
_ITEMSIZE = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
    17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1, 24: 1, 25: 1, 26: 1, 27: 1, 28: 1,
}  # fmt: skip


def itemsize(data_type: int) -> int:
    """Bytes per element of a TensorProto data type; KeyError for one this table does not know."""
    return _ITEMSIZE[data_type]


def load_model_from_string(data: bytes) -> Any:
    """A ModelProto from bytes, as onnx.load_model_from_string does (never reads external data)."""
    model = ModelProto()
    model.ParseFromString(data)
    return model
