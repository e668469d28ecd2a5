"""`cnnspec serve` end to end: the real Triton client (binary and JSON modes), curl and raw HTTP against a server
subprocess; every answer is checked against onnxruntime run directly on the model file and Pillow decoding."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import signal
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image, ImageDraw
from serve_helpers import Server
from tritonclient.utils import InferenceServerException

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPEC = {
    "name": "digits",
    "input": {"shape": [28, 28, 1]},
    "labels": LABELS,
    "preprocess": {"scale": 1 / 255},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPooling2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    ],
}
KEY = "k3y-for-the-serve-tests-0123456789"


def compile_model(folder: Path, name: str = "digits", seed: int = 3) -> Path:
    from cnnspec.compiler import compile_spec, model_bytes
    from cnnspec.spec import load_spec

    spec_path = folder / f"{name}.json"
    spec_path.write_text(json.dumps(SPEC))
    path = folder / f"{name}.onnx"
    path.write_bytes(model_bytes(compile_spec(load_spec(spec_path), seed=seed)))
    return path


def digit_png(digit: int = 1) -> bytes:
    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    draw.line([(14, 4), (14, 24)], fill=255, width=3) if digit == 1 else draw.ellipse(
        [6, 4, 22, 24], outline=255, width=3
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return compile_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(model):
    srv = Server([str(model)])
    yield srv
    assert srv.stop() == 0


def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.hostport, network_timeout=60.0, connection_timeout=60.0)


def post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(server.hostport, timeout=60)
    conn.request("POST", path, body, headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    doc = json.loads(data) if resp.getheader("content-type", "").startswith("application/json") else {}
    return resp.status, doc, data


# ---- the protocol, with the real client ------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_matches_onnxruntime(server, model, binary):
    x = np.random.default_rng(0).uniform(0, 255, (5, 1, 28, 28)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("output", binary_data=binary)
    result = client(server).infer("digits", [tensor], outputs=[out], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("output"), reference(model, x), rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "req-7"


def test_health_metadata_and_labels(server):
    c = client(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
    assert not c.is_model_ready("nope")
    meta = c.get_model_metadata("digits")
    assert meta["labels"] == LABELS
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert meta["inputs"][1] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]


def test_image_bytes_input_with_classification(server, model):
    images = [digit_png(1), digit_png(0)]
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    c = client(server)
    scores = c.infer("digits", [tensor]).as_numpy("output")
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32)[None] for b in images])
    expected = reference(model, pixels)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    top = c.infer("digits", [tensor], outputs=[triton.InferRequestedOutput("output", class_count=3)])
    rows = top.as_numpy("output")
    assert rows.shape == (2, 3)
    for row, probs in zip(rows, expected, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(np.argmax(probs)) and label == LABELS[int(index)]
        assert float(score) == pytest.approx(float(probs.max()), abs=1e-5)


def test_curl_json_and_base64_image(server, model):
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test"
    x = np.random.default_rng(1).uniform(0, 255, (1, 1, 28, 28)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}
    out = subprocess.run(
        [curl, "-sS", "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(body),
         f"{server.url}/v2/models/digits/infer"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["outputs"][0]["shape"] == [1, 10]
    np.testing.assert_allclose(doc["outputs"][0]["data"], reference(model, x).ravel(), rtol=1e-5, atol=1e-6)
    img = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(digit_png()).decode()]}
        ]
    }
    out = subprocess.run(
        [curl, "-sS", "-w", "\n%{http_code}", "-d", json.dumps(img), f"{server.url}/v2/models/digits/infer"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    text, code = out.stdout.rsplit("\n", 1)
    assert code == "200" and len(json.loads(text)["outputs"][0]["data"]) == 10


# ---- bad requests: one clear error each, and the server keeps serving ----------------------------------------


def _binary(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def _fp32(name="input", shape=(1, 1, 28, 28), datatype="FP32", data=None) -> bytes:
    count = int(np.prod(shape))
    values = [0.0] * count if data is None else data
    return json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": values}]}).encode()


def _nan_binary():
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 3, 3] = np.nan
    return _binary(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        },
        x.tobytes(),
    )


def _image_binary(data: bytes):
    blob = struct.pack("<I", len(data)) + data
    return _binary(
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
            ]
        },
        blob,
    )


BAD = [
    # (id, path, body, headers, status, message substring)
    ("unknown-model", "/v2/models/nope/infer", _fp32(), {}, 404, "unknown model 'nope'"),
    ("unknown-version", "/v2/models/digits/versions/7/infer", _fp32(), {}, 404, "unknown model version"),
    ("wrong-name", "/v2/models/digits/infer", _fp32(name="pixels"), {}, 400, "unknown input 'pixels'"),
    ("wrong-dtype", "/v2/models/digits/infer", _fp32(datatype="INT64"), {}, 400, "datatype must be FP32"),
    ("wrong-shape", "/v2/models/digits/infer", _fp32(shape=(1, 3, 28, 28)), {}, 400, "must have shape [N, 1, 28, 28]"),
    ("wrong-rank", "/v2/models/digits/infer", _fp32(shape=(1, 28, 28)), {}, 400, "must have shape [N, 1, 28, 28]"),
    ("short-data", "/v2/models/digits/infer", _fp32(data=[0.0] * 10), {}, 400, "has 784 elements but 'data' has 10"),
    ("nan-json", "/v2/models/digits/infer", _fp32(data=[float("nan")] * 784), {}, 400, "NaN or infinite"),
    ("nan-binary", "/v2/models/digits/infer", *_nan_binary(), 400, "NaN or infinite"),
    ("malformed-json", "/v2/models/digits/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("no-inputs", "/v2/models/digits/infer", b'{"outputs": []}', {}, 400, "'inputs' must be a non-empty list"),
    (
        "header-too-long", "/v2/models/digits/infer", b"{}", {"Inference-Header-Content-Length": "999"}, 400,
        "Inference-Header-Content-Length is 999",
    ),
    (
        "binary-size-too-big", "/v2/models/digits/infer",
        *_binary({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "parameters": {"binary_data_size": 3136}}]}, b"\0" * 100),
        400, "does not fit",
    ),
    (
        "binary-size-mismatch", "/v2/models/digits/infer",
        *_binary({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                             "parameters": {"binary_data_size": 100}}]}, b"\0" * 100),
        400, "needs 3136 bytes of FP32",
    ),
    ("not-an-image", "/v2/models/digits/infer", *_image_binary(b"hello, not a png"), 400, "cannot identify image file"),
    (
        "too-many-elements", "/v2/models/digits/infer", _fp32(shape=(100_000, 1, 28, 28), data=[]), {}, 413,
        "limit 16,777,216",
    ),
    ("unknown-output", "/v2/models/digits/infer",
     json.dumps({"inputs": json.loads(_fp32())["inputs"], "outputs": [{"name": "probs"}]}).encode(), {}, 400,
     "unknown output 'probs'"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_gets_a_clear_json_error(server, case):
    _, path, body, headers, status, message = case
    code, doc, _ = post(server, path, body, headers)
    assert code == status, doc
    assert message in doc["error"]


def test_bomb_image_is_refused_by_the_pixel_cap(server):
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # 81 MP of one bit each: a small file
    code, doc, _ = post(server, "/v2/models/digits/infer", *_image_binary(buf.getvalue()))
    assert code == 400 and "limit 64 MP" in doc["error"]


def test_server_keeps_serving_and_memory_stays_flat(server, model):
    x = np.ones((1, 1, 28, 28), np.float32)
    body = _fp32(data=x.ravel().tolist())
    for _ in range(20):  # warm up the allocator's pools
        post(server, "/v2/models/digits/infer", body)
    before = server.rss_kib()
    for i in range(120):
        case = BAD[i % len(BAD)]
        assert post(server, case[1], case[2], case[3])[0] == case[4]
        assert post(server, "/v2/models/digits/infer", body)[0] == 200
    grown_mib = (server.rss_kib() - before) / 1024
    assert grown_mib < 64, f"RSS grew {grown_mib:.0f} MiB over 240 requests"


def test_page_lists_the_models(server):
    conn = http.client.HTTPConnection(server.hostport, timeout=60)
    conn.request("GET", "/")
    page = conn.getresponse().read().decode()
    assert '["digits"]' in page and "classification: 5" in page


# ---- the key, the body cap, the timeout, SIGTERM ---------------------------------------------------------


def test_api_key_body_cap_and_timeout(tmp_path, model):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    marker = tmp_path / "started"
    srv = Server(
        [str(model), "--api-key-file", str(key_file), "--max-body-mb", "1", "--timeout", "0.5"],
        env={"CNNSPEC_TEST_HOOK": f"serve_slow:{marker}"},
    )
    try:
        ok = {"Authorization": f"Bearer {KEY}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            code, doc, _ = post(srv, "/v2/models/digits/infer", _fp32(), headers)
            assert code == 401 and "API key" in doc["error"]
        conn = http.client.HTTPConnection(srv.hostport, timeout=60)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 401
        code, doc, _ = post(srv, "/v2/models/digits/infer", b"{" + b" " * (2 << 20) + b"}", ok)
        assert code == 413 and "limit" in doc["error"]
        code, doc, _ = post(srv, "/v2/models/digits/infer", _fp32(), ok)  # the hook takes 2 s
        assert code == 504 and "0.5 s request timeout" in doc["error"]
        assert marker.exists()
    finally:
        assert srv.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish(tmp_path, model):
    marker = tmp_path / "started"
    srv = Server([str(model)], env={"CNNSPEC_TEST_HOOK": f"serve_slow:{marker}"})
    answer: list = []
    worker = threading.Thread(target=lambda: answer.append(post(srv, "/v2/models/digits/infer", _fp32())))
    worker.start()
    for _ in range(600):
        if marker.exists():
            break
        threading.Event().wait(0.05)
    assert marker.exists(), "the request never reached inference"
    assert srv.stop(signal.SIGTERM) == 0
    worker.join(60)
    assert answer and answer[0][0] == 200 and answer[0][1]["outputs"][0]["shape"] == [1, 10]


def test_warning_for_all_interfaces_without_a_key(tmp_path):
    out = subprocess.run(
        [*Server.command(), "serve", str(tmp_path / "missing.onnx"), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "warning: serving on 0.0.0.0 without --api-key-file" in out.stderr
    assert out.returncode != 0 and "Traceback" not in out.stderr


def test_two_models_served_under_their_stems(tmp_path):
    a, b = compile_model(tmp_path, "alpha", 1), compile_model(tmp_path, "beta", 2)
    srv = Server([str(a), str(b)])
    try:
        x = np.full((1, 1, 28, 28), 7.0, np.float32)
        tensor = triton.InferInput("input", [1, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(x)
        c = client(srv)
        for path in (a, b):
            np.testing.assert_allclose(c.infer(path.stem, [tensor]).as_numpy("output"), reference(path, x), atol=1e-6)
        with pytest.raises(InferenceServerException, match="unknown model"):
            c.infer("gamma", [tensor])
    finally:
        assert srv.stop() == 0
