"""The library side of `cnnspec serve` (the CLI command stays a thin call into this)."""

from __future__ import annotations

import ipaddress
import sys
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

    if api_key_file is None and not is_loopback(host):
        print(
            f"warning: serving on {host} without --api-key-file: anyone who can reach this port can use the models",
            file=sys.stderr,
        )
    key = read_api_key(api_key_file) if api_key_file is not None else None
    limits = Limits(max_body_bytes=max_body_mb << 20, timeout_s=timeout)
    serve(load_models(models, name, device, threads), host, port, limits, api_key=key)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
