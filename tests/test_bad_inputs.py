"""The bad-input table of ../shared/RELIABILITY.md (rows 1-22 and 40), each as a subprocess run of the CLI.

Every failing run must: exit with the documented code, name the problem (a message substring), never print
a traceback, start stderr with "error:", leave no new files behind, and leave an existing `-o` file
byte-identical. The child's peak RSS and CPU time come from os.wait4, so they are the child's own.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

BASE = {
    "name": "tiny",
    "input": {"shape": [8, 8, 1]},
    "labels": ["a", "b"],
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPooling2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
}
BASE_YAML = yaml.safe_dump(BASE, sort_keys=False)
OLD_OUTPUT = b"an older model that a failed run must not touch\n"


@dataclass
class Result:
    code: int
    out: str
    err: str
    rss_mb: float
    cpu_s: float


# A small launcher forks the command and reports the child's own rusage. NOTE: on Linux a process's maxrss starts
# at its parent's RSS when it is forked and survives exec, so a child forked straight from this pytest process
# (hundreds of MB after compiling ResNet-50 in other tests) would report pytest's memory, not the command's.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "cnnspec", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "rss_kb": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime}, f)
"""


def cli(args: list[str], cwd: Path, timeout: float = 60, env: dict | None = None) -> Result:
    """Run `python -m cnnspec ARGS` in `cwd`; outputs go to files outside `cwd` so they never count as strays."""
    logs = cwd.parent / f"{cwd.name}-logs"
    logs.mkdir(exist_ok=True)
    usage_file = logs / "usage.json"
    usage_file.unlink(missing_ok=True)
    with open(logs / "out", "wb") as out, open(logs / "err", "wb") as err:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage_file), *args], cwd=cwd, stdout=out,
                                    stderr=err, env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
        try:
            launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and the command it forked
            launcher.wait()
            pytest.fail(f"cnnspec {args} did not finish in {timeout} s")
    usage = json.loads(usage_file.read_text())
    out, err = ((logs / name).read_text(errors="replace") for name in ("out", "err"))
    return Result(usage["code"], out, err, usage["rss_kb"] / 1024, usage["cpu_s"])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def assert_failure(result: Result, message: str | list[str], code: int) -> None:
    assert "Traceback" not in result.err, result.err
    assert result.err.startswith("error:"), result.err
    for part in [message] if isinstance(message, str) else message:
        assert part in result.err, result.err
    assert result.code == code, (result.code, result.err)


def with_changes(change) -> dict:
    spec = copy.deepcopy(BASE)
    change(spec)
    return spec


def layer0(**fields):
    return lambda s: s["layers"][0].update(fields)


def top(**fields):
    return lambda s: s.update(fields)


BILLION_LAUGHS = (  # 342 bytes (the table says 397 with spaces); expanded it is 9**9 = 387 million strings
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def flat_spec(layers: list[dict], shape=(1000, 1000, 1)) -> dict:
    return {"name": "x", "input": {"shape": list(shape)}, "layers": layers}


# (row, file name, content, expected message substrings, exit code)
SPEC_ROWS = [
    ("2-empty", "s.yaml", b"", "spec is empty", 1),
    ("2-null", "s.yaml", b"null\n", "spec is empty", 1),
    ("2-list", "s.yaml", b"- type: Dense\n", "must be a mapping", 1),
    ("3-png", "s.yaml", png_bytes(), "not UTF-8 text", 1),
    ("4-syntax", "s.yaml", b"name: x\nlayers: [1, 2\ninput: 3\n", ["YAML syntax error", "line 3, column"], 1),
    ("5-dup-yaml", "s.yaml", BASE_YAML.replace("filters: 4", "filters: 4\n  filters: 8").encode(),
     "duplicate key 'filters' (first at line", 1),
    ("5-dup-json", "s.json", json.dumps(BASE, indent=1).replace('"filters": 4', '"filters": 4,\n"filters": 8').encode(),
     "duplicate key 'filters' (first at line", 1),
    ("7-tag", "s.yaml", b"!!python/object/apply:os.system [touch pwn]\n", "unsupported YAML tag", 1),
    ("8-documents", "s.yaml", (BASE_YAML + "---\n" + BASE_YAML).encode(), "exactly one document", 1),
    ("9-5MiB", "s.yaml", b"#" * (5 << 20), "larger than 1 MiB", 1),
    ("10-deep-yaml", "s.yaml", b"a: " + b"[" * 10_000 + b"]" * 10_000, "nested too deeply", 1),
    ("10-deep-json", "s.json", b"[" * 10_000 + b"]" * 10_000, "nested too deeply", 1),
    ("11-digits", "s.yaml", BASE_YAML.replace("filters: 4", "filters: " + "9" * 5000).encode(), "integer too large", 1),
    ("12-nan", "s.yaml", (BASE_YAML + "training:\n  learning_rate: .nan\n").encode(),
     "training.learning_rate must be finite", 1),
    ("13-int-labels", "s.yaml", BASE_YAML.replace("labels:\n- a\n- b\n", "labels: [0, 1]\n").encode(),
     ["labels[0] must be a string", "quote"], 1),
    ("13-bool-labels", "s.yaml", BASE_YAML.replace("labels:\n- a\n- b\n", "labels: [true, false]\n").encode(),
     ["labels[0] must be a string", "quote"], 1),
    ("14-type", "s.yaml", BASE_YAML.replace("type: Conv2D", "type: Conv2d").encode(),
     "unknown layer type 'Conv2d' (did you mean 'Conv2D'?)", 1),
    ("14-field", "s.yaml", BASE_YAML.replace("filters: 4", "filter: 4").encode(),
     "unknown field 'filter' (did you mean 'filters'?)", 1),
]  # fmt: skip

MODEL_ROWS = [  # spec dicts whose fields or shapes are wrong
    *[(f"15-filters={v!r}", layer0(filters=v), "filters must be an integer ≥ 1") for v in (0, -1, 1.5, True, "32")],
    ("16-strides", layer0(strides=0), "strides must be an integer ≥ 1"),
    ("16-dilation", layer0(dilation_rate=0), "dilation_rate must be an integer ≥ 1"),
    ("16-pool", lambda s: s["layers"][1].update(pool_size=[2, 0]), "pool_size must be an integer ≥ 1"),
    ("16-groups", layer0(filters=5, groups=2), "groups=2 must divide both the input channels (1) and filters (5)"),
    ("17-kernel", lambda s: s.update(input={"shape": [4, 4, 1]}, layers=[
        {"type": "Activation", "activation": "relu"}, {"type": "Activation", "activation": "linear"},
        {"type": "Conv2D", "filters": 2, "kernel_size": 5}, {"type": "Flatten"}, {"type": "Dense", "units": 2}]),
     ["layers[2] Conv2D", "kernel 5x5 does not fit the 4x4 input", "output height would be", "= 0"]),
    ("18-dense-rank3", lambda s: s["layers"].pop(2), ["layers[2] Dense", "Dense needs a flat input"]),
    ("18-units-labels", lambda s: s["layers"][3].update(units=3), "labels has 2 names but the last layer"),
    ("20-input", top(input={"shape": [100000, 100000, 3]}), "input.shape[0] must be an integer ≥ 1 and ≤ 16,384"),
    ("20-input-values", top(input={"shape": [16384, 16384, 4]}), "values per image; the limit is"),
    ("20-no-layers", top(layers=[]), "layers must have at least 1 item"),
    ("20-10k-layers", lambda s: s.update(layers=[{"type": "Activation", "activation": "relu"}] * 10_000),
     "layers has 10000 items; at most 1000"),
    ("20-long-name", layer0(name="n" * 10_000), "name must be 1 to 64 letters, digits"),
    ("20-slash-name", layer0(name="a/b"), "name must be 1 to 64 letters, digits"),
    ("20-escape-name", layer0(name="\x1b[2J"), "name must be 1 to 64 letters, digits"),
]  # fmt: skip


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "out.onnx").write_bytes(OLD_OUTPUT)
    return folder


def compile_fails(work: Path, name: str, content: bytes, message, code: int) -> Result:
    (work / name).write_bytes(content)
    before = snapshot(work)
    result = cli(["compile", name, "-o", "out.onnx"], work)
    assert_failure(result, message, code)
    assert snapshot(work) == before  # no stray files; the old output and the spec are untouched
    return result


@pytest.mark.parametrize(("row", "name", "content", "message", "code"), SPEC_ROWS, ids=[r[0] for r in SPEC_ROWS])
def test_bad_spec_file(work: Path, row: str, name: str, content: bytes, message, code: int) -> None:
    compile_fails(work, name, content, message, code)


@pytest.mark.parametrize(("row", "change", "message"), MODEL_ROWS, ids=[r[0] for r in MODEL_ROWS])
def test_bad_spec_content(work: Path, row: str, change, message) -> None:
    result = compile_fails(work, "s.json", json.dumps(with_changes(change)).encode(), message, 1)
    assert max(map(len, result.err.splitlines())) < 1000  # a 10 kB name is not echoed whole


def test_row1_missing_spec_and_directory(work: Path) -> None:
    assert_failure(cli(["validate", "missing.yaml"], work), "does not exist", 2)
    assert_failure(cli(["validate", "."], work), "is a directory", 2)
    assert_failure(cli(["compile", "missing.yaml", "-o", "out.onnx"], work), "does not exist", 2)
    assert (work / "out.onnx").read_bytes() == OLD_OUTPUT


def test_row6_billion_laughs_is_cheap(work: Path) -> None:
    assert len(BILLION_LAUGHS) < 400
    (work / "lol.yaml").write_text(BILLION_LAUGHS)
    result = cli(["validate", "lol.yaml"], work)
    assert_failure(result, "anchors/aliases are not allowed", 1)
    assert result.cpu_s < 1.0 and result.rss_mb < 150, (result.cpu_s, result.rss_mb)


def test_row7_tag_never_runs(work: Path) -> None:
    (work / "t.yaml").write_text("!!python/object/apply:os.system [touch pwn]\n")
    assert_failure(cli(["validate", "t.yaml"], work), "unsupported YAML tag", 1)
    assert not (work / "pwn").exists()


def test_row12_scientific_learning_rate_accepted(work: Path) -> None:
    import onnx

    (work / "s.yaml").write_text(BASE_YAML + "training:\n  learning_rate: 1e-3\n")
    assert cli(["validate", "s.yaml"], work).code == 0
    result = cli(["compile", "s.yaml", "-o", "new.onnx"], work)
    assert result.code == 0, result.err
    meta = {p.key: p.value for p in onnx.load(work / "new.onnx").metadata_props}
    assert json.loads(meta["cnnspec.spec"])["training"]["learning_rate"] == 0.001


def test_row13_yes_no_labels_are_strings_in_yaml_12(work: Path) -> None:
    (work / "s.yaml").write_text(BASE_YAML.replace("labels:\n- a\n- b\n", "labels: [yes, no]\n"))
    result = cli(["validate", "--json", "s.yaml"], work)
    assert result.code == 0 and json.loads(result.out)["valid"], result.err


def test_row16_dilation_with_strides_is_allowed(work: Path) -> None:
    # NOTE: Keras refuses strides > 1 with dilation_rate > 1; ONNX and PyTorch define it, and cnnspec allows it.
    (work / "s.json").write_text(json.dumps(with_changes(layer0(strides=2, dilation_rate=2))))
    assert cli(["validate", "s.json"], work).code == 0


def test_row18_softmax_not_last_is_a_warning(work: Path) -> None:
    (work / "s.json").write_text(json.dumps(with_changes(layer0(activation="softmax"))))
    result = cli(["validate", "s.json"], work)
    assert result.code == 0 and "warning: layers[0] Conv2D 'conv2d': softmax is usually the last" in result.err


def test_row19_parameter_limit_before_any_allocation(work: Path) -> None:
    spec = flat_spec([{"type": "Flatten"}, {"type": "Dense", "units": 1_000_000}])
    result = compile_fails(work, "s.json", json.dumps(spec).encode(), ["1.0e+12 parameters", "exceeds the limit"], 1)
    assert result.rss_mb < 200, result.rss_mb


OUTPUT_ROWS = [
    ("missing-dir", "nowhere/d/m.onnx", "directory 'nowhere/d' does not exist", 2),
    ("existing-dir", "adir", "is a directory", 2),
    ("the-spec", "s.yaml", "would overwrite the spec", 2),
    ("parent-is-file", "plain.txt/x.onnx", "'plain.txt' is not a directory", 1),
    ("device", "/dev/null", "is not a regular file", 2),
]


@pytest.mark.parametrize(("row", "output", "message", "code"), OUTPUT_ROWS, ids=[r[0] for r in OUTPUT_ROWS])
def test_row21_bad_output_paths(work: Path, row: str, output: str, message: str, code: int) -> None:
    (work / "s.yaml").write_text(BASE_YAML)
    (work / "adir").mkdir()
    (work / "plain.txt").write_text("x")
    before = snapshot(work)
    assert_failure(cli(["compile", "s.yaml", "-o", output], work), message, code)
    assert snapshot(work) == before
    assert Path("/dev/null").is_char_device()


def test_row21_hard_link_to_the_spec(work: Path) -> None:
    (work / "s.yaml").write_text(BASE_YAML)
    os.link(work / "s.yaml", work / "link.onnx")
    assert_failure(cli(["compile", "s.yaml", "-o", "link.onnx"], work), "would overwrite the spec", 2)
    assert (work / "s.yaml").read_text() == BASE_YAML


def _commands() -> set[str]:
    import typer

    from cnnspec.cli import app

    return set(typer.main.get_command(app).commands)


OPTION_ROWS = [  # (command, option, value)
    ("compile", "--seed", "-1"), ("compile", "--seed", "abc"), ("run", "--top-k", "0"), ("run", "--device", "tpu"),
    ("train", "--epochs", "0"), ("train", "--batch-size", "0"), ("train", "--learning-rate", "nan"),
    ("train", "--val-split", "1.0"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "option", "value"), OPTION_ROWS, ids=[f"{c}{o}={v}" for c, o, v in OPTION_ROWS])
def test_row22_bad_option_values(work: Path, command: str, option: str, value: str) -> None:
    if command not in _commands():
        pytest.skip(f"the '{command}' command does not exist yet (owned by another part of issue 7)")
    (work / "s.yaml").write_text(BASE_YAML)
    (work / "m.onnx").write_bytes(b"")
    (work / "img.png").write_bytes(png_bytes())
    positional = {"compile": ["s.yaml", "-o", "out.onnx"], "run": ["m.onnx", "img.png"],
                  "train": ["s.yaml", "--data", "d.npz", "-o", "out.onnx"]}  # fmt: skip
    before = snapshot(work)
    result = cli([command, *positional[command], option, value], work)
    assert_failure(result, f"Invalid value for '{option}'", 2)
    assert snapshot(work) == before


def _many_layers_spec() -> dict:
    # validate --json prints ~200 KB for this: more than a pipe buffer, so the writer meets the closed pipe.
    return flat_spec([{"type": "Activation", "activation": "relu"}] * 998 + [{"type": "Flatten"},
                     {"type": "Dense", "units": 2}], shape=(1, 1, 1))  # fmt: skip


@pytest.mark.parametrize("json_mode", [True, False])
def test_row40_closed_pipe_is_quiet(work: Path, json_mode: bool) -> None:
    (work / "s.json").write_text(json.dumps(_many_layers_spec()))
    args = [sys.executable, "-m", "cnnspec", "validate", *(["--json"] if json_mode else []), "s.json"]
    proc = subprocess.Popen(args, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(1)
    proc.stdout.close()  # like `| head -c 1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)
    assert err == ""


# ---- the error boundary itself (in-process) -------------------------------------------------------------


def test_validate_exits_1_when_shapes_fail(work: Path) -> None:
    (work / "s.json").write_text(json.dumps(with_changes(lambda s: s["layers"].pop(2))))
    assert_failure(cli(["validate", "s.json"], work), "Dense needs a flat input", 1)
    result = cli(["validate", "--json", "s.json"], work)
    assert result.code == 1 and json.loads(result.out)["errors"][0]["layer"] == 2


def _boundary(monkeypatch: pytest.MonkeyPatch, exc: BaseException, debug: bool = False) -> int:
    import cnnspec.spec
    from cnnspec.cli import main

    def boom(path):
        raise exc

    monkeypatch.setattr(cnnspec.spec, "load_spec", boom)
    monkeypatch.setenv("CNNSPEC_DEBUG", "1" if debug else "0")
    with pytest.raises(SystemExit) as info:
        main(["validate", "any.yaml"])
    return info.value.code


def test_unexpected_exception_is_an_internal_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert _boundary(monkeypatch, RuntimeError("boom")) == 1
    err = capsys.readouterr().err
    assert err == "internal error: RuntimeError: boom (set CNNSPEC_DEBUG=1 for a traceback)\n"
    with pytest.raises(RuntimeError, match="boom"):
        _boundary(monkeypatch, RuntimeError("boom"), debug=True)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (KeyboardInterrupt(), 130, "error: interrupted"),
        (PermissionError(13, "Permission denied", "s.yaml"), 1, "error: cannot access 's.yaml': Permission denied"),
        (MemoryError(), 1, "error: out of memory"),
    ],
)
def test_boundary_maps_environment_failures(monkeypatch: pytest.MonkeyPatch, capsys, exc, code, message) -> None:
    assert _boundary(monkeypatch, exc) == code
    assert capsys.readouterr().err.startswith(message)


def test_row40_run_json_into_a_closed_pipe(work: Path) -> None:
    if "run" not in _commands():
        pytest.skip("the 'run' command does not exist yet")
    (work / "s.yaml").write_text(BASE_YAML)
    assert cli(["compile", "s.yaml", "-o", "m.onnx"], work).code == 0
    png = png_bytes()
    (work / "imgs").mkdir()
    for n in range(400):  # ~80 KB of JSON: more than a pipe buffer
        (work / "imgs" / f"{n}.png").write_bytes(png)
    proc = subprocess.Popen([sys.executable, "-m", "cnnspec", "run", "m.onnx", "imgs", "--json"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.read(1) == b"["
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141) and err == "", err


def test_inspect_escapes_untrusted_text(work: Path) -> None:
    import onnx

    (work / "s.yaml").write_text(BASE_YAML)
    assert cli(["compile", "s.yaml", "-o", "m.onnx"], work).code == 0
    model = onnx.load(work / "m.onnx")
    del model.metadata_props[:]  # a foreign model: inspect prints its own strings
    model.producer_name = "evil\x1b[2J"
    model.graph.input[0].name = "in\x1b[31m"
    model.graph.input[0].type.tensor_type.elem_type = 33  # unknown to this onnx (a fuzzing finding)
    (work / "evil.onnx").write_bytes(model.SerializeToString())
    result = cli(["inspect", "evil.onnx"], work)
    assert result.code == 0, result.err
    assert "\x1b" not in result.out and "evil\\x1b[2J" in result.out and "type 33" in result.out
