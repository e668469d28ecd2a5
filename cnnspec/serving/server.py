"""`cnnspec serve`: the Open Inference Protocol (KServe v2) over HTTP on FastAPI + uvicorn, and a page at `/`.

Why not kserve's ModelServer: kserve 0.21 pulls in ~30 packages (the Kubernetes client, grpcio, pandas) and
pins psutil/protobuf versions next to onnx; the protocol's HTTP side is a handful of routes, written here over
FastAPI (routing, ASGI) and uvicorn (HTTP, keep-alive, graceful shutdown on SIGTERM).

Concurrency: every model has one onnxruntime session, shared by all requests; each request runs on a worker
thread (`run` is thread-safe). Requests are not merged into batches on the server: a client that has many
images sends them in one request (N > 1); Triton (`cnnspec export --to triton`) does dynamic batching.
"""

# NOTE: no `from __future__ import annotations`: FastAPI reads the route functions' annotations (Request) at
# definition time, and fastapi is imported inside create_app so that a plain install never imports it.

import asyncio
import hmac
import json
import signal
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from .. import __version__
from .models import Limits, ServedModel, run_options
from .page import render_page
from .protocol import HEADER_LENGTH, ProtocolError, encode_response, parse_request


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"{exc.name} is not installed; pip install 'cnnspec[{extra}]'")


def create_app(models: dict[str, ServedModel], limits: Limits, api_key: str | None = None, workers: int = 8) -> Any:
    """The ASGI app. Each model's session is shared; `workers` threads run inference."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.exceptions import HTTPException
    except ImportError as exc:
        raise _missing("serve", exc) from None

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnspec-infer")

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=True)  # after uvicorn has drained the in-flight requests

    app = FastAPI(
        title="cnnspec", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    def error(status: int, message: str) -> Any:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, exc: Any) -> Any:  # unknown routes and methods: JSON like every error
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Any, exc: Any) -> Any:
        return error(400, f"bad request: {exc.errors()[:1]}")

    @app.middleware("http")
    async def guard(request: Any, call_next: Any) -> Any:
        # NOTE: the page at `/` is static HTML that holds no data; everything it shows comes from /v2 calls, which
        # need the key like every other route (the page has a field for it).
        if api_key is not None and not (request.method == "GET" and request.url.path == "/"):
            given = request.headers.get("authorization", "")
            expected = f"Bearer {api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):  # constant time: no timing oracle
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        return await call_next(request)

    def model_or_404(name: str) -> ServedModel:
        if name not in models:
            raise ProtocolError(f"unknown model '{name[:100]}'; serving: {', '.join(sorted(models))}", 404)
        return models[name]

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return HTMLResponse(render_page(sorted(models), api_key is not None))

    @app.get("/v2")
    async def server_metadata() -> Any:
        return {"name": "cnnspec", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def health() -> Any:
        return {}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "1") -> Any:
        try:
            return _check_version(version) or model_or_404(name).metadata()
        except ProtocolError as exc:
            return error(exc.status, str(exc))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1") -> Any:
        try:
            _check_version(version) or model_or_404(name)
        except ProtocolError as exc:
            return error(exc.status, str(exc))
        return {}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1") -> Any:
        try:
            _check_version(version)
            model = model_or_404(name)
            body = await _read_body(request, limits.max_body_bytes)
            parsed = parse_request(body, request.headers.get(HEADER_LENGTH), limits.max_elements)
            outputs = await _run(pool, model, parsed, limits)
        except ProtocolError as exc:
            return error(exc.status, str(exc))
        content, header_len = encode_response(name, parsed.id, outputs)
        if header_len is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_len)}
        )

    return app


def _check_version(version: str) -> None:
    if version not in ("", "1"):
        raise ProtocolError(f"unknown model version '{version[:20]}'; every model has version 1", 404)


async def _read_body(request: Any, cap: int) -> bytes:
    """The body, refused with 413 as soon as it passes the cap (Content-Length or the bytes actually sent)."""
    if request.headers.get("content-encoding", "identity") != "identity":
        raise ProtocolError("compressed request bodies (Content-Encoding) are not supported")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ProtocolError(f"the request body is {int(declared):,} bytes; limit {cap:,}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ProtocolError(f"the request body is over the limit of {cap:,} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _run(pool: ThreadPoolExecutor, model: ServedModel, parsed: Any, limits: Limits) -> Any:
    cancel = run_options()
    future = asyncio.get_running_loop().run_in_executor(pool, model.infer, parsed, limits, cancel)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout=limits.timeout_s)
    except asyncio.TimeoutError:
        cancel.terminate = True  # onnxruntime stops the run at its next node; the thread is free again
        raise ProtocolError(f"inference took longer than the {limits.timeout_s:g} s request timeout", 504) from None


def serve(
    models: dict[str, ServedModel],
    host: str,
    port: int,
    limits: Limits,
    api_key: str | None = None,
) -> None:
    """Run uvicorn until SIGINT/SIGTERM; in-flight requests finish first (uvicorn's graceful shutdown)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise _missing("serve", exc) from None
    app = create_app(models, limits, api_key)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(limits.timeout_s) + 5,
        limit_concurrency=1024, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    # NOTE: uvicorn catches SIGINT/SIGTERM, drains the in-flight requests, puts the previous handlers back and
    # raises the signal again; with these no-op handlers in place that re-raise ends here and the exit code is 0.
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(_serve_and_announce(server, models))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        print(f"stopped ({signal.Signals(caught[0]).name}); in-flight requests finished", file=sys.stderr)


async def _serve_and_announce(server: Any, models: dict[str, ServedModel]) -> None:
    """Start uvicorn, then print one JSON line with the bound address (port 0 picks a free one)."""
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        sock = server.servers[0].sockets[0].getsockname()
        line = json.dumps({"url": f"http://{_url_host(sock[0])}:{sock[1]}", "models": sorted(models)})
        print(f"serving {line}", file=sys.stderr, flush=True)
    await task


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
