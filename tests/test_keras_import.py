"""`cnnspec import` in the main environment (no Keras): committed fixture files made by Keras
(tests/fixtures/keras/make_fixtures.py) against Keras's own saved outputs, the compile --weights round trip,
and the refusals of untrusted or unsupported files. The exactness against a live Keras is tests/keras_env/."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnspec.analysis import analyze
from cnnspec.keras_import import import_keras, import_to_files
from cnnspec.spec import load_spec
from cnnspec.weights import read_weights

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
EXPECTED = np.load(FIXTURES / "expected.npz", allow_pickle=False)
CASES = [("seq_small", ".keras"), ("graph_small", ".keras"), ("graph_small", ".h5")]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command line in a fresh process (the exit code and stderr a user sees)."""
    return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)  # fmt: skip


def cli_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The same error boundary in this process (cheaper): cnnspec.cli._run with stderr captured."""
    import contextlib
    import os

    from cnnspec.cli import _run

    err, out = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = _run(list(args))
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run(model: Path, x_nhwc: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x_nhwc.transpose(0, 3, 1, 2).copy()})[0]


@pytest.mark.parametrize("name, suffix", CASES)
def test_fixture_matches_keras_outputs(name, suffix, tmp_path):
    spec, onnx_path, weights = tmp_path / "s.yaml", tmp_path / "m.onnx", tmp_path / "w.npz"
    import_to_files(FIXTURES / f"{name}{suffix}", spec, onnx_path, weights)
    want = EXPECTED[f"{name}.y"]
    got = run(onnx_path, EXPECTED[f"{name}.x"])
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-4
    params, source = read_weights(weights)
    assert sum(v.size for v in params.values()) == int(EXPECTED[f"{name}.params"])
    assert analyze(load_spec(spec)).valid
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    origin = json.loads(meta["cnnspec.weights_source"])
    assert origin["file"] == f"{name}{suffix}" and len(origin["sha256"]) == 64 and origin == json.loads(source)


def test_compile_with_the_imported_weights_gives_the_same_file(tmp_path):
    result = cli("import", str(FIXTURES / "graph_small.keras"), "-o", "g.yaml", "--onnx", "a.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.weights.npz").is_file()  # the default place of the weights
    result = cli("compile", "g.yaml", "--weights", "g.weights.npz", "-o", "b.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_spec_is_readable_yaml_one_layer_per_line():
    text = import_keras(FIXTURES / "graph_small.keras").yaml
    layers = text.split("\nlayers:\n")[1].splitlines()
    assert all(line.startswith("  - {") and line.endswith("}") for line in layers)
    assert "{block: inner, name: inner, inputs: stem}" in text  # the nested model, as a block
    assert "InputLayer" not in text and "linear" not in text  # both vanish
    assert "preprocess: {scale: 0.00784313725490196, mean: 1.0}" in text  # Rescaling(1/127.5, offset=-1)
    seq = import_keras(FIXTURES / "seq_small.keras").yaml
    assert "name:" not in seq.split("layers:")[1]  # a chain with Keras's default names needs none


def test_nested_model_weights_get_dotted_names():
    params = import_keras(FIXTURES / "graph_small.keras").params
    assert {"inner.separable_conv2d.depthwise.weight", "inner.separable_conv2d.pointwise.weight"} <= set(params)


def test_labels(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    model = str(FIXTURES / "seq_small.keras")
    result = cli_here("import", model, "-o", "s.yaml", "--labels", "labels.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_spec(tmp_path / "s.yaml").labels == ["cat", "dog", "bird"]


# ---- refusals ------------------------------------------------------------------------------------


def rezip(tmp_path: Path, name: str, config=None, members: dict | None = None, source="seq_small.keras") -> Path:
    """A copy of a fixture archive with its config edited or members replaced/added."""
    with zipfile.ZipFile(FIXTURES / source) as original:
        files = {info.filename: original.read(info) for info in original.infolist()}
    if config is not None:
        files["config.json"] = json.dumps(config(json.loads(files["config.json"]))).encode()
    files.update(members or {})
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def layer(config: dict, class_name: str) -> dict:
    return next(item for item in config["config"]["layers"] if item["class_name"] == class_name)


def edit(kind: str, **changes):
    def apply(config: dict) -> dict:
        target = layer(config, kind)
        for key, value in changes.items():
            if key in ("class_name", "module", "registered_name"):
                target[key] = value
            else:
                target["config"][key] = value
        return config

    return apply


def two_outputs(config: dict) -> dict:
    config["config"]["output_layers"] = [["dense_1", 0, 0], ["stem", 0, 0]]
    return config


def two_inputs(config: dict) -> dict:
    config["config"]["input_layers"] = [["input_layer", 0, 0], ["input_layer", 0, 0]]
    return config


REFUSALS = [
    ("lambda", lambda t: FIXTURES / "lambda.keras", ["'double' (Lambda)", "Python code"]),
    ("custom", lambda t: rezip(t, "c.keras", edit("Conv2D", module="my_pkg.layers", registered_name="my_pkg>Conv2D")),
     ["'conv2d' (Conv2D)", "custom class 'my_pkg>Conv2D'"]),
    ("rnn", lambda t: rezip(t, "r.keras", edit("Flatten", class_name="LSTM")), ["(LSTM)", "recurrent"]),
    ("channels_first", lambda t: rezip(t, "cf.keras", edit("Conv2D", data_format="channels_first")),
     ["'conv2d' (Conv2D)", "data_format='channels_first'", "channels-last"]),
    ("two outputs", lambda t: rezip(t, "o.keras", two_outputs, source="graph_small.keras"), ["2 outputs"]),
    ("two inputs", lambda t: rezip(t, "i.keras", two_inputs, source="graph_small.keras"), ["2 inputs"]),
    ("subclassed", lambda t: rezip(t, "m.keras", lambda c: {**c, "class_name": "MyModel"}), ["'MyModel'"]),
    ("a zip of something else", lambda t: FIXTURES / "expected.npz", ["it is not a Keras 3 model archive"]),
    ("not a zip", lambda t: FIXTURES / "make_fixtures.py", ["neither a Keras 3 .keras archive"]),
]  # fmt: skip


@pytest.mark.parametrize("case, make, needles", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_files_give_one_clear_error(case, make, needles, tmp_path):
    spec = tmp_path / "out.yaml"
    spec.write_text("old")
    result = cli_here("import", str(make(tmp_path)), "-o", str(spec), "--onnx", str(tmp_path / "m.onnx"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr
    assert spec.read_text() == "old" and not (tmp_path / "m.onnx").exists()
    assert not (tmp_path / "out.weights.npz").exists()


def test_unsupported_arguments_are_refused_all_at_once(tmp_path):
    l2 = {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.01}}

    def many(config: dict) -> dict:
        edit("Conv2D", kernel_regularizer=l2, padding="causal")(config)
        edit("BatchNormalization", renorm=True, axis=1)(config)
        return config

    result = cli_here("import", str(rezip(tmp_path, "u.keras", many)), "-o", "s.yaml", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any("'conv2d' (Conv2D): kernel_regularizer=L2 is not supported" in line for line in lines)
    assert any("'batch_normalization' (BatchNormalization): renorm=True is not supported" in line for line in lines)
    assert any("'batch_normalization' (BatchNormalization): axis=1 is not supported" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_path_traversal_member_is_refused(tmp_path):
    bad = rezip(tmp_path, "p.keras", members={"../../evil.sh": b"echo pwned"})
    with pytest.raises(Exception, match="unsafe path '../../evil.sh'"):
        import_keras(bad)
    assert not (tmp_path.parent / "evil.sh").exists()


def test_zip_bomb_is_refused_before_decompressing(tmp_path):
    bomb = rezip(tmp_path, "b.keras", members={"model.weights.h5": b"\0" * (64 << 20)})
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(Exception, match="zip bomb"):
        import_keras(bomb)


def test_huge_config_is_refused(tmp_path):
    huge = rezip(tmp_path, "h.keras", members={"config.json": b"{" + b" " * (17 << 20) + b"}"})
    result = cli_here("import", str(huge), "-o", "s.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "config.json is 17,825,794 bytes uncompressed; the limit is" in result.stderr


def test_deeply_nested_config_is_refused(tmp_path):
    deep = rezip(tmp_path, "d.keras", members={"config.json": b"[" * 100_000 + b"]" * 100_000})
    result = cli_here("import", str(deep), "-o", "s.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "config.json" in result.stderr


def test_hdf5_external_link_is_refused(tmp_path):
    import h5py

    with zipfile.ZipFile(FIXTURES / "seq_small.keras") as archive:
        weights = archive.read("model.weights.h5")
    buffer = io.BytesIO(weights)
    with h5py.File(buffer, "a") as h5:
        del h5["layers/conv2d/vars/0"]
        h5["layers/conv2d/vars/0"] = h5py.ExternalLink("/etc/passwd", "/x")
    bad = rezip(tmp_path, "e.keras", members={"model.weights.h5": buffer.getvalue()})
    with pytest.raises(Exception, match="ExternalLink"):
        import_keras(bad)


def test_weights_that_do_not_fit_the_spec(tmp_path):
    import_to_files(FIXTURES / "seq_small.keras", tmp_path / "s.yaml")
    other = tmp_path / "g.npz"
    import_to_files(FIXTURES / "graph_small.keras", tmp_path / "g.yaml", weights_out=other)
    result = cli_here("compile", "s.yaml", "--weights", "g.npz", "-o", "m.onnx", cwd=tmp_path)
    assert result.returncode == 1 and "the weights do not fit the spec: missing conv2d.weight" in result.stderr


def test_the_import_example_runs(tmp_path):
    """examples/import_keras.sh end to end (the README's example), with this environment's cnnspec on PATH."""
    import os

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "examples/import_keras.sh", str(tmp_path)], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical:" in result.stdout and "Traceback" not in result.stderr
    assert (tmp_path / "graph_small.yaml").read_text().count("\n") > 10


def keras2_dialect(config: dict) -> dict:
    """A Keras 3 functional config rewritten in Keras 2's dialect: inbound_nodes as [[[name, node, tensor, {}]]],
    `batch_input_shape`, endpoints as lists of lists, no `module`/`registered_name`."""

    def tensors(value, out):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            out.append([*value["config"]["keras_history"], {}])
        elif isinstance(value, dict):
            for child in value.values():
                tensors(child, out)
        elif isinstance(value, list):
            for child in value:
                tensors(child, out)

    for item in config["config"]["layers"]:
        item.pop("module", None), item.pop("registered_name", None)
        refs: list = []
        for node in item.get("inbound_nodes", []):
            tensors(node.get("args", []), refs)
        item["inbound_nodes"] = [refs] if refs else []
        if item["class_name"] == "InputLayer":
            item["config"]["batch_input_shape"] = item["config"].pop("batch_shape")
    for key in ("input_layers", "output_layers"):
        value = config["config"][key]
        config["config"][key] = [value] if isinstance(value[0], str) else value
    return config


def test_keras2_config_dialect(tmp_path):
    import h5py

    path = tmp_path / "keras2.h5"
    path.write_bytes((FIXTURES / "graph_small.h5").read_bytes())
    with h5py.File(path, "a") as h5:
        h5.attrs["model_config"] = json.dumps(keras2_dialect(json.loads(h5.attrs["model_config"])))
    import_to_files(path, tmp_path / "s.yaml", tmp_path / "m.onnx")
    want = EXPECTED["graph_small.y"]
    got = run(tmp_path / "m.onnx", EXPECTED["graph_small.x"])
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-4
