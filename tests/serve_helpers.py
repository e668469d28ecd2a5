"""Start and stop `cnnspec serve` in a subprocess for the serving tests and the benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Server:
    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "cnnspec"]

    def __init__(self, args: list[str], env: dict[str, str] | None = None, timeout_s: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "cnnspec", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}
        )
        self.url, self.stderr_lines = "", []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            if line.startswith("serving "):
                self.url = json.loads(line[len("serving ") :])["url"]
                return
        self.stop()
        raise RuntimeError("server did not start: " + "".join(self.stderr_lines))

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc.stderr.close()
