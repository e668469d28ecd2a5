"""`cnnspec run` / `evaluate` as a user meets them: subprocesses, exact JSON, exit codes, RELIABILITY rows 23-37.

Common rules checked on every call: no "Traceback" on stderr; a failing call's stderr starts with "error:";
no new files appear next to the inputs.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from cnnspec.compiler import compile_spec, model_bytes
from cnnspec.spec import spec_from_data

SPEC = {
    "name": "tiny",
    "input": {"shape": [8, 8, 3]},
    "labels": ["cat", "dog", "eel"],
    "preprocess": {"scale": 1 / 255},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 3, "activation": "softmax"},
    ],
}
HAS_CUDA = False
try:
    import onnxruntime

    HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
except ImportError:  # pragma: no cover
    pass


def cnnspec(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cnnspec", *map(os.fsdecode, args)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        assert proc.stderr.startswith(("error:", "warning:")), proc.stderr
    return proc


def run_json(*args: str, **kw) -> tuple[int, list[dict], str]:
    proc = cnnspec("run", *args, "--json", **kw)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def png(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    model = compile_spec(spec_from_data(SPEC), seed=0)
    (d / "m.onnx").write_bytes(model_bytes(model))
    rng = np.random.default_rng(0)
    png(d / "good.png", Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    (d / "txt.png").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    return d


def entry_keys_exact(entries: list[dict]) -> None:
    for e in entries:
        assert set(e) == {"path", "predictions", "error"}
        assert isinstance(e["path"], str) and (e["error"] is None or isinstance(e["error"], str))
        for p in e["predictions"]:
            assert set(p) == {"label", "index", "score"}
            assert isinstance(p["label"], str) and isinstance(p["index"], int) and isinstance(p["score"], float)


def no_new_files(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before


def test_json_shape_and_one_good_two_bad(work):
    before = {p.name for p in work.iterdir()}
    code, entries, err = run_json(work / "m.onnx", work / "txt.png", work / "empty.png", work / "good.png")
    entry_keys_exact(entries)
    assert code == 1 and "2 of 3 image(s)" in err
    assert [bool(e["error"]) for e in entries] == [True, True, False]
    assert all("cannot identify image file" in e["error"] for e in entries[:2])
    assert len(entries[2]["predictions"]) == 3 and sum(p["score"] for p in entries[2]["predictions"]) == pytest.approx(
        1
    )
    no_new_files(work, before)


def test_all_good_exits_0_and_table_output(work):
    proc = cnnspec("run", work / "m.onnx", work / "good.png", "--top-k", "2")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "good.png" in proc.stdout and any(label in proc.stdout for label in ("cat", "dog", "eel"))
    code, entries, _ = run_json(work / "m.onnx", work / "good.png", "--top-k", "1")
    assert code == 0 and len(entries[0]["predictions"]) == 1


def test_folder_and_glob_inputs(work, tmp_path):
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(["0.png", "sub/1.png", "sub/2.png"]):
        png(tmp_path / name, Image.new("RGB", (9, 7), i * 40))
    code, entries, _ = run_json(work / "m.onnx", tmp_path, "--batch-size", "2", "--threads", "1")
    assert code == 0 and [Path(e["path"]).name for e in entries] == ["0.png", "1.png", "2.png"]
    code, entries, _ = run_json(work / "m.onnx", str(tmp_path / "sub" / "*.png"))
    assert code == 0 and len(entries) == 2


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_row23_cuda_requested_on_a_cpu_only_install(work):
    proc = cnnspec("run", work / "m.onnx", work / "good.png", "--device", "cuda")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "CUDA requested but CUDAExecutionProvider is not available (available: CPU" in proc.stderr
    assert "pip install onnxruntime-gpu" in proc.stderr


def jpeg_cut(fraction: float) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: int(len(buf.getvalue()) * fraction)]


def png_header(width: int, height: int, bad_crc: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 3).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    if bad_crc:
        data[data.index(b"IDAT") + 4] ^= 0xFF
    return bytes(data)


def test_rows25_to_27_bad_files_each_in_their_own_entry(work, tmp_path):
    files = {
        "cut10.jpg": jpeg_cut(0.1), "cut50.jpg": jpeg_cut(0.5), "cut90.jpg": jpeg_cut(0.9),
        "crc.png": png_header(8, 8, bad_crc=True), "bomb20k.png": png_header(20000, 20000),
        "bomb10k.png": png_header(10000, 10000), "fits.png": b"SIMPLE  =                    T" + b" " * 50,
        "psd.png": b"8BPS\x00\x01" + b"\x00" * 40, "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n",
        "fpx.png": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100,
    }  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    code, entries, _ = run_json(work / "m.onnx", *(tmp_path / n for n in files), work / "good.png")
    by_name = {Path(e["path"]).name: e["error"] for e in entries}
    assert code == 1 and by_name["good.png"] is None
    for name in ("cut10.jpg", "cut50.jpg", "cut90.jpg", "crc.png"):
        assert "image file is truncated" in by_name[name]
    assert "image is 400.0 MP; limit 64 MP" in by_name["bomb20k.png"]
    assert "image is 100.0 MP; limit 64 MP" in by_name["bomb10k.png"]
    for name in ("fits.png", "psd.png", "eps.png", "fpx.png"):
        assert "unsupported image format" in by_name[name] and "allowed: PNG, JPEG" in by_name[name]


def test_row28_special_files_do_not_hang(work, tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    code, entries, _ = run_json(work / "m.onnx", "/dev/zero", tmp_path / "fifo.png", tmp_path / "dangling.png")
    assert code == 1
    assert "not a regular file" in entries[0]["error"] and "not a regular file" in entries[1]["error"]
    assert "dangling symlink" in entries[2]["error"]


def test_row29_odd_file_names_give_valid_json(work, tmp_path):
    odd = [os.fsencode(tmp_path) + b"/new\nline.png", os.fsencode(tmp_path) + b"/bad\xffbyte.png"]
    for name in odd:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), 90).save(buf, "PNG")
        Path(os.fsdecode(name)).write_bytes(buf.getvalue())
    proc = subprocess.run([sys.executable, "-m", "cnnspec", "run", str(work / "m.onnx"), *odd, "--json"],
                          capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert entries[0]["path"].endswith("new\nline.png") and entries[1]["path"].endswith("bad\\xffbyte.png")


def test_row30_every_kind_of_good_image_succeeds_quietly(work, tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = Image.new("P", (8, 8))
    pal.putpalette([255, 0, 0] * 256)
    frames = [Image.new("P", (8, 8), i) for i in range(3)]
    files = [
        png(tmp_path / "ramp16.png", Image.fromarray(ramp)),
        png(tmp_path / "cmyk.jpg", Image.new("CMYK", (20, 10), (0, 50, 100, 0))),
        png(tmp_path / "rgba.png", Image.new("RGBA", (8, 8), (255, 0, 0, 0))),
        png(tmp_path / "ptrns.png", pal, transparency=0),
        png(tmp_path / "exif6.png", Image.new("RGB", (16, 8), 30), exif=exif.tobytes()),
        png(tmp_path / "one.png", Image.new("RGB", (1, 1), 7)),
        png(tmp_path / "tall.png", Image.new("RGB", (1, 4000), 7)),
        png(tmp_path / "gray.png", Image.new("L", (8, 8), 99)),
    ]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code, entries, err = run_json(work / "m.onnx", *files, tmp_path / "anim.gif")
    assert code == 0 and err == "" and all(e["error"] is None for e in entries)


def test_row31_models_that_are_not_onnx(work, tmp_path):
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "zero.onnx").write_bytes(b"")
    with open(tmp_path / "huge.onnx", "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used, and never read
    cases = [("random.onnx", "not a valid ONNX model", 1), ("zero.onnx", "model is empty (no graph)", 1),
             ("huge.onnx", "model larger than limit", 1), (".", "is a directory", 2)]  # fmt: skip
    for name, message, exit_code in cases:
        proc = cnnspec("run", tmp_path / name, work / "good.png")
        assert proc.returncode == exit_code and message in proc.stderr, (name, proc.stderr)


def test_row32_external_data_never_read(work, tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"SENTINEL-7f3a" * 100)
    model = onnx.load(work / "m.onnx")
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../secret.bin")
    sub = tmp_path / "models"
    sub.mkdir()
    (sub / "ext.onnx").write_bytes(model.SerializeToString())
    proc = cnnspec("run", sub / "ext.onnx", work / "good.png", "--json")
    assert proc.returncode == 1 and "models with external data are not supported" in proc.stderr
    assert "SENTINEL" not in proc.stdout + proc.stderr


def test_rows33_to_35_refused_before_onnxruntime(work, tmp_path):
    model = onnx.load(work / "m.onnx")
    model.graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["bomb"]))
    (tmp_path / "cos.onnx").write_bytes(model.SerializeToString())
    model = onnx.load(work / "m.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "w"
    (tmp_path / "dyn.onnx").write_bytes(model.SerializeToString())
    proc = cnnspec("run", tmp_path / "cos.onnx", work / "good.png")
    assert proc.returncode == 1 and "operator ConstantOfShape is not supported by cnnspec run" in proc.stderr
    proc = cnnspec("run", tmp_path / "dyn.onnx", work / "good.png")
    assert proc.returncode == 1 and "model input must be float32 [N,C,H,W] with fixed C,H,W" in proc.stderr


def test_row36_labels_from_metadata_are_escaped_or_replaced(work, tmp_path):
    model = onnx.load(work / "m.onnx")
    labels = next(p for p in model.metadata_props if p.key == "cnnspec.labels")
    labels.value = json.dumps(["\x1b[2Jcat", "dog\nx", "[bold]eel"])
    (tmp_path / "ansi.onnx").write_bytes(model.SerializeToString())
    proc = cnnspec("run", tmp_path / "ansi.onnx", work / "good.png", "--top-k", "3")
    assert proc.returncode == 0 and "\x1b[2J" not in proc.stdout and "\\x1b[2Jcat" in proc.stdout
    assert "[bold]eel" in proc.stdout and "dog\\nx" in proc.stdout
    labels.value = '["only one"]'
    (tmp_path / "short.onnx").write_bytes(model.SerializeToString())
    proc = cnnspec("run", tmp_path / "short.onnx", work / "good.png", "--json")
    assert proc.returncode == 0 and proc.stderr.startswith("warning:") and "class indices" in proc.stderr
    assert {p["label"] for p in json.loads(proc.stdout)[0]["predictions"]} <= {"0", "1", "2"}


def test_row37_worker_crash_is_one_line(work):
    proc = cnnspec("run", work / "m.onnx", work / "good.png", env={"CNNSPEC_TEST_HOOK": "crash_inference_worker"})
    assert proc.returncode == 1
    assert (
        "the inference worker crashed (signal 11) while loading the model" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )


@pytest.mark.parametrize("args", [["--top-k", "0"], ["--device", "tpu"], ["--batch-size", "0"], ["--resize", "zoom"]])
def test_usage_errors_exit_2(work, args):
    proc = cnnspec("run", work / "m.onnx", work / "good.png", *args)
    assert proc.returncode == 2 and "Invalid value for '--" in proc.stderr


def test_foreign_model_with_labels_and_scale(work, tmp_path):
    model = onnx.load(work / "m.onnx")
    del model.metadata_props[:]
    (tmp_path / "foreign.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    code, entries, _ = run_json(tmp_path / "foreign.onnx", work / "good.png", "--labels", tmp_path / "labels.txt",
                                "--scale", "0.5", "--mean", "1,2,3", "--std", "2")  # fmt: skip
    assert code == 0 and {p["label"] for p in entries[0]["predictions"]} == {"x", "y", "z"}
    proc = cnnspec("run", work / "m.onnx", work / "good.png", "--scale", "0.5")
    assert proc.returncode == 2 and "preprocesses inside the graph" in proc.stderr


def test_evaluate_npz_and_folder(work, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 30)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    proc = cnnspec("evaluate", work / "m.onnx", "--data", tmp_path / "d.npz", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n"] == 30 and 0 <= out["accuracy"] <= 1 and out["loss"] > 0
    assert np.array(out["confusion"]).sum() == 30
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        png(tmp_path / "imgs" / label / "a.png", Image.new("RGB", (12, 12), 40))
    proc = cnnspec("evaluate", work / "m.onnx", "--data", tmp_path / "imgs")
    assert proc.returncode == 0 and "accuracy" in proc.stdout and "confusion" in proc.stdout
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"junk")
    proc = cnnspec("evaluate", work / "m.onnx", "--data", tmp_path / "imgs")
    assert proc.returncode == 1 and "broken.png" in proc.stderr and "--skip-bad-images" in proc.stderr
    proc = cnnspec("evaluate", work / "m.onnx", "--data", tmp_path / "imgs", "--skip-bad-images", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["n"] == 2
    np.savez(tmp_path / "bad.npz", x=x, y=y + 3)
    proc = cnnspec("evaluate", work / "m.onnx", "--data", tmp_path / "bad.npz")
    assert proc.returncode == 1 and "out of range" in proc.stderr


def test_row40_closed_pipe_is_quiet(work):
    many = " ".join([str(work / "good.png")] * 200)
    cmd = f"{sys.executable} -m cnnspec run {work / 'm.onnx'} {many} --json | head -c 1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 141) and proc.stdout == "[" and "Traceback" not in proc.stderr
    assert proc.stderr == ""
