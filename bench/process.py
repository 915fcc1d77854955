"""The real server as a benchmark starts it: a free loopback port, then a wait until it serves."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from munet_client import MunetClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 300.0) -> float:
    """Seconds until the server at `target` reports SERVING; SystemExit (naming its log) when the
    process exits first or `timeout` passes, so a broken start fails the benchmark at once."""
    t0 = time.perf_counter()
    see = f"; see {log}" if log else ""
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}{see}")
        try:
            with MunetClient(target, timeout=2) as c:
                if c.health() == "SERVING":
                    return time.perf_counter() - t0
        except Exception:  # not listening yet
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server did not serve within {timeout:.0f} s{see}")
