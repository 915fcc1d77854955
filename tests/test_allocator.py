"""munet_server.allocator: freed tensor memory stays in the process (glibc), so passes reuse it."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A fresh interpreter: allocate and touch 256 MiB, free it, report the resident set before and after.
PROBE = """
import sys, torch
if sys.argv[1] == "keep":
    from munet_server.allocator import keep_freed_memory
    assert keep_freed_memory()
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024
before = rss_mb()
x = torch.ones(64, 1024, 1024)
del x
print(rss_mb() - before)
"""


def _kept_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_kept_for_the_next_pass():
    assert _kept_mb("default") < 64  # glibc's default: a 256 MiB block is unmapped when freed
    assert _kept_mb("keep") > 192  # kept: the next pass reuses it without page faults
