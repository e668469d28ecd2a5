"""The pipeline's import rules (README "Architecture"): modules stand on floors and import only downwards, no
import cycles, the spec side stays light, heavy runtimes load only where things run, and typer only in the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cnnspec"

# Every module of cnnspec, on a floor, bottom first. A module may import modules on its own floor or lower
# ones, never higher; among modules of one floor only the no-cycles test applies. Every import counts: top-level,
# function-local, under `if TYPE_CHECKING:`, relative or absolute. (cnnspec/__init__.py's lazy attributes use
# importlib.import_module on strings: a facade for users, not an import of the package's own code.)
FLOORS: list[tuple[str, set[str]]] = [
    # the package's __version__, the error types and the shape arithmetic: the standard library only
    ("base", {"cnnspec", "cnnspec.errors", "cnnspec.shapes"}),
    # helpers that stand on base alone and know nothing of specs: output files, the spec file loader,
    # initializers, untrusted .onnx files, foreign models' preprocessing, image decoding, onnxruntime sessions
    (
        "utilities",
        {
            "cnnspec.files",
            "cnnspec.loader",
            "cnnspec.initializers",
            "cnnspec.modelfile",
            "cnnspec.protos",
            "cnnspec.foreign",
            "cnnspec.images",
            "cnnspec.sessions",
            "cnnspec.graph_stats",
            "cnnspec.augment",
        },
    ),
    ("builder", {"cnnspec.builder"}),
    (
        "layers",
        {
            "cnnspec.layers",
            "cnnspec.layers.base",
            "cnnspec.layers.activations",
            "cnnspec.layers.gradients",
            "cnnspec.layers.conv",
            "cnnspec.layers.conv_variants",
            "cnnspec.layers.core",
            "cnnspec.layers.merge",
            "cnnspec.layers.normalization",
            "cnnspec.layers.pooling",
            "cnnspec.layers.reshaping",
            "cnnspec.layers.activation_layers",
            "cnnspec.layers.regularization",
            "cnnspec.layers.augmentation",
        },
    ),
    ("spec", {"cnnspec.spec"}),
    ("graph", {"cnnspec.graph"}),
    ("analysis", {"cnnspec.analysis", "cnnspec.summary"}),
    ("compiler", {"cnnspec.compiler", "cnnspec.weights"}),
    (
        "training",
        {
            "cnnspec.training",
            "cnnspec.training.autodiff",
            "cnnspec.training.checkpoints",
            "cnnspec.training.distributed",
            "cnnspec.training.loop",
            "cnnspec.training.losses",
            "cnnspec.training.native",
            "cnnspec.training.optimizers",
            "cnnspec.training.ort_artifacts",
            "cnnspec.training.ort_backend",
            "cnnspec.training.ort_rewrites",
            "cnnspec.training.program",
            "cnnspec.training.runner",
            "cnnspec.training.shards",
            "cnnspec.training.staged",
            "cnnspec.training.trainer",
        },
    ),
    # running models and reading data sets: above training, which must import neither
    ("run", {"cnnspec.sandbox", "cnnspec.runtime", "cnnspec.data", "cnnspec.cudagraph"}),
    # a command's library side, when it ties several floors together
    (
        "commands",
        {
            "cnnspec.train_command",
            "cnnspec.inspection",
            "cnnspec.run_report",
            # `cnnspec import`: Keras files read as data (archive, topology), mapped to spec data (layers,
            # convert, yaml_text) and to the spec's weights (weights)
            "cnnspec.keras_import",
            "cnnspec.keras_import.archive",
            "cnnspec.keras_import.topology",
            "cnnspec.keras_import.layers",
            "cnnspec.keras_import.convert",
            "cnnspec.keras_import.weights",
            "cnnspec.keras_import.yaml_text",
            "cnnspec.command_reports",
            "cnnspec.doctor",
            # `export --to int8|fp16`: targets over the run floor (sessions, data sets, sandbox)
            "cnnspec.export",
            "cnnspec.export.source",
            "cnnspec.export.report",
            "cnnspec.export.quantize",
            "cnnspec.export.half",
            "cnnspec.transfer",
            "cnnspec.viz",
        },
    ),
    # serving and scale-out inference (issue 14): the optional web stack, Triton repositories, Ray
    (
        "serving",
        {
            "cnnspec.serving",
            "cnnspec.serving.protocol",
            "cnnspec.serving.page",
            "cnnspec.serving.models",
            "cnnspec.serving.server",
            "cnnspec.serving.cli_serve",
            "cnnspec.serving.triton",
            "cnnspec.serving.ray_batch",
        },
    ),
    ("cli", {"cnnspec.cli", "cnnspec.cli_help", "cnnspec.__main__"}),
]
FLOOR = {module: (level, name) for level, (name, modules) in enumerate(FLOORS) for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def cnnspec_imports(module: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The cnnspec modules `module` imports anywhere in `source`.

    `from X import name` is an import of the module X.name when that is a module, else of X (a package's
    __init__ for `from . import __version__` or `from .layers import Layer`)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "cnnspec"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "cnnspec":
                continue
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    found.discard(module)
    return found


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    return cnnspec_imports(module, path.read_text(), path.name == "__init__.py", set(MODULES) | set(FLOOR))


def imports_in(path: Path) -> set[str]:
    """The top-level names a file imports (anywhere in it); its relative imports count as 'cnnspec'."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("cnnspec" if node.level else (node.module or "").split(".")[0])
    return names


def modules_importing(top: str) -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if top in imports_in(p)}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# ---- floors and cycles ------------------------------------------------------------------------------------


def test_every_module_has_exactly_one_floor():
    listed = [module for _, modules in FLOORS for module in modules]
    assert len(listed) == len(set(listed)), "a module is on two floors"
    assert set(MODULES) - FLOOR.keys() == set(), "a new module needs a floor in FLOORS (and a line in the README)"
    assert FLOOR.keys() - set(MODULES) == set(), "FLOORS lists a module that no longer exists"


def test_no_module_imports_a_higher_floor():
    upward = [
        f"{module} ({FLOOR[module][1]}) imports {target} ({FLOOR[target][1]})"
        for module in sorted(MODULES.keys() & FLOOR.keys())  # a module with no floor fails the test above
        for target in sorted(imports_of(module) & FLOOR.keys())
        if FLOOR[target][0] > FLOOR[module][0]
    ]
    assert upward == []


def test_training_imports_neither_runtime_nor_data():
    """Spelled out (the floors imply it): what training needs comes from sessions.py or from the command layer."""
    offenders = {
        (module, target)
        for module in MODULES
        if module.startswith("cnnspec.training")
        for target in imports_of(module)
        if target in ("cnnspec.runtime", "cnnspec.data", "cnnspec.sandbox", "cnnspec.train_command")
    }
    assert offenders == set()


def test_no_import_cycles():
    graph = {module: imports_of(module) for module in MODULES}
    assert cycles(graph) == []


def test_the_import_parser_sees_every_form():
    """The rules above are only as good as this parser: relative, absolute, function-local, TYPE_CHECKING,
    submodules and package attributes."""
    source = (
        "from __future__ import annotations\n"
        "import numpy as np\n"
        "import cnnspec.errors\n"
        "from typing import TYPE_CHECKING\n"
        "from . import program, __version__\n"
        "from .loop import Data\n"
        "from ..layers import Layer\n"
        "from ..layers.gradients import ints\n"
        "if TYPE_CHECKING:\n"
        "    from ..builder import GraphBuilder\n"
        "def f():\n"
        "    from ..runtime import Classifier\n"
        "    from cnnspec.data import load_dataset\n"
        "    class C:\n"
        "        def g(self):\n"
        "            import cnnspec.sessions as s\n"
    )
    known = {"cnnspec.training.program", "cnnspec.training.loop", "cnnspec.layers", "cnnspec.layers.gradients"}
    assert cnnspec_imports("cnnspec.training.x", source, False, known) == {
        "cnnspec.errors",
        "cnnspec.training.program",
        "cnnspec.training",  # __version__ is an attribute of the package, not a module
        "cnnspec.training.loop",
        "cnnspec.layers",
        "cnnspec.layers.gradients",
        "cnnspec.builder",
        "cnnspec.runtime",
        "cnnspec.data",
        "cnnspec.sessions",
    }
    package = "from . import conv\nfrom .. import shapes\n"  # in cnnspec/layers/__init__.py
    assert cnnspec_imports("cnnspec.layers", package, True, {"cnnspec.layers.conv", "cnnspec.shapes"}) == {
        "cnnspec.layers.conv",
        "cnnspec.shapes",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


# ---- what loads where -------------------------------------------------------------------------------------


def test_the_spec_side_imports_no_heavy_runtime():
    """validate must start fast: spec -> shapes -> analysis -> summary load none of these."""
    code = (
        "import sys, cnnspec.analysis, cnnspec.spec, cnnspec.summary, cnnspec.loader\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'PIL', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_onnxruntime_is_imported_only_where_models_run():
    # doctor.py checks onnxruntime itself: its distribution, providers and a CUDA-only session
    allowed = {"sessions.py", "runtime.py", "training/runner.py", "training/staged.py", "training/ort_artifacts.py"}
    allowed.add("doctor.py")
    # onnxruntime's own quantization and float16 tools, used by `export` (they run the model to calibrate)
    allowed |= {"export/source.py", "export/quantize.py", "export/half.py"}
    allowed.add("cudagraph.py")  # IOBinding buffers and run options for CUDA graphs
    allowed.add("serving/models.py")  # one shared session per served model
    assert modules_importing("onnxruntime") <= allowed


def test_torch_lives_only_in_the_distributed_runner():
    assert modules_importing("torch") <= {"training/distributed.py"}


def test_typer_lives_only_in_the_cli():
    assert modules_importing("typer") == {"cli.py", "cli_help.py"}


def test_errors_and_shapes_use_the_standard_library_only():
    for name in ("errors.py", "shapes.py"):
        assert imports_in(PACKAGE / name) <= {"__future__", "dataclasses", "math", "typing"}, name
