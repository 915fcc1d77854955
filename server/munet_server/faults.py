"""Fault points for the tests: `MUNET_CRASH_AT=name[,name]` makes the process SIGKILL itself there, and
`MUNET_DISK_FULL_AT=name[,name]` makes the write there fail as a full disk does (ENOSPC): CI machines
cannot fill a disk or mount a small one.

Off unless the environment variable is set (read once at import). Named points sit exactly where
a crash is most dangerous: after a durable write and before the record that would reference it.
"""

from __future__ import annotations

import errno
import os
import signal

_ARMED = frozenset(p for p in os.environ.get("MUNET_CRASH_AT", "").split(",") if p)
_FULL = frozenset(p for p in os.environ.get("MUNET_DISK_FULL_AT", "").split(",") if p)


def crash_point(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)


def disk_full_point(name: str, path: object) -> None:
    if name in _FULL:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
