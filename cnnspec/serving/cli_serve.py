"""The library side of `cnnspec serve` (the CLI command stays a thin call into this)."""

from __future__ import annotations

from pathlib import Path

from .models import Limits, load_models, read_api_key


def serve_command(
    models: list[Path],
    host: str,
    port: int,
    device: str,
    api_key_file: Path | None,
    name: str | None,
    threads: int | None,
    max_body_mb: int,
    timeout: float,
) -> None:
    from .server import serve

    key = read_api_key(api_key_file) if api_key_file is not None else None
    limits = Limits(max_body_bytes=max_body_mb << 20, timeout_s=timeout)
    serve(load_models(models, name, device, threads), host, port, limits, api_key=key)
