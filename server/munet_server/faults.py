"""Crash points for the kill -9 tests: `MUNET_CRASH_AT=name[,name]` makes the process SIGKILL itself there.

Off unless the environment variable is set (read once at import). Named points sit exactly where
a crash is most dangerous: after a durable write and before the record that would reference it.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(p for p in os.environ.get("MUNET_CRASH_AT", "").split(",") if p)


def crash_point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
