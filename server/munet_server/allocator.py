"""Keep freed tensor memory in the process instead of handing it back to the OS after every pass.

On Linux, PyTorch's CPU tensors come from glibc malloc. A forward or backward pass frees and
allocates activations of megabytes each time; with glibc's defaults the large ones are mmap'd and
unmapped on every pass (and the top of the heap is trimmed), so every pass page-faults its working
memory in again. Raising the mmap and trim thresholds lets malloc reuse that memory: the process
keeps its peak working set, and passes stop paying for page faults. Measured on a 2-core EPYC VM
(tf_efficientnet_lite0, batch 32, 112 px): a training step 790-847 -> 716-754 ms, a served batch of
32 (gRPC Predict) 141-144 -> 120-125 ms; see bench/RESULTS.md. Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = 2**31 - 1  # never give the heap's free top back (mallopt takes an int)


@functools.cache  # once per process: Ray workers call it for every candidate task they run
def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; True where they took effect. Call it early (before
    the big allocations)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return ok
