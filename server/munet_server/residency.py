"""Which committed layers stay in memory (--max-resident-mb).

A thousand tasks each with their own cloned blocks do not fit in memory, and most are not asked for
at any moment. The root's layers always stay (every path runs through them). Every other committed
component is resident or on disk: a Predict for a task first loads whatever of its path is on disk
(from the component's shard, the same bytes the golden digest was computed with, so its outputs
are bit-identical), and when the resident layers pass the bound, the least recently used ones that
no call is running through go back to disk. Like the CPU/disk tiers of multi-adapter servers (LoRAX,
vLLM's `max_cpu_loras`), with a task's own layers as the adapter.

A search holds everything resident while it runs: it probes every task's path.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from munet_server.model.components import Component

Tensors = dict[str, torch.Tensor]


@dataclass
class ResidencyStats:
    max_bytes: int  # 0: no bound
    resident: int  # components in memory (the root's not counted)
    resident_bytes: int
    evicted: int  # components on disk only
    loads: int  # loads from disk since start
    evictions: int
    load_seconds: float  # total time spent loading


class Residency:
    def __init__(self, max_bytes: int, load: Callable[[str], Tensors], device: torch.device) -> None:
        self.max_bytes = max_bytes
        self._load = load  # component id -> its stored tensors
        self.device = device
        self._resident: OrderedDict[str, Component] = OrderedDict()  # least recently used first
        self._evicted: dict[str, tuple[Component, Tensors]] = {}  # id -> (component, non-persistent buffers)
        self._bytes: dict[str, int] = {}
        self._in_use: Counter[str] = Counter()
        self._holds = 0
        self._lock = threading.RLock()
        self.loads = self.evictions = 0
        self.load_seconds = 0.0

    # ---- bookkeeping -----------------------------------------------------------------------------
    def add(self, c: Component) -> None:
        """A committed, in-memory component that may go to disk when not used (not the root's)."""
        with self._lock:
            if c.id in self._resident or c.id in self._evicted:
                return
            self._bytes[c.id] = sum(t.numel() * t.element_size() for t in c.module.state_dict().values())
            self._resident[c.id] = c
        self.trim()

    def forget(self, cid: str) -> None:
        """A component freed by a delete."""
        with self._lock:
            self._resident.pop(cid, None)
            self._evicted.pop(cid, None)
            self._bytes.pop(cid, None)

    def stats(self) -> ResidencyStats:
        with self._lock:
            return ResidencyStats(
                max_bytes=self.max_bytes,
                resident=len(self._resident),
                resident_bytes=sum(self._bytes[c] for c in self._resident),
                evicted=len(self._evicted),
                loads=self.loads,
                evictions=self.evictions,
                load_seconds=self.load_seconds,
            )

    # ---- use -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, components: Iterable[Component]) -> Iterator[None]:
        """The components are in memory, and stay, until the block ends."""
        ids = [c.id for c in components if c.id in self._bytes]
        with self._lock:
            for cid in ids:
                if cid in self._evicted:
                    self._bring_back(cid)
                self._resident.move_to_end(cid)
                self._in_use[cid] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use.subtract(ids)
            self.trim()

    @contextlib.contextmanager
    def hold_all(self) -> Iterator[None]:
        """Everything in memory, nothing evicted, until the block ends (a search)."""
        with self._lock:
            self._holds += 1
            for cid in list(self._evicted):
                self._bring_back(cid)
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
            self.trim()

    def trim(self) -> None:
        """Evict least recently used components no call is running through, down to the bound."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            if self._holds:
                return
            total = sum(self._bytes[c] for c in self._resident)
            for cid in list(self._resident):
                if total <= self.max_bytes:
                    break
                if self._in_use[cid] > 0:
                    continue
                total -= self._bytes[cid]
                self._send_away(cid)

    # ---- moving ----------------------------------------------------------------------------------
    def _send_away(self, cid: str) -> None:
        c = self._resident.pop(cid)
        keep = _non_persistent_buffers(c.module)  # not in the shard: kept (they are small)
        c.module.to("meta")  # the same module objects: every path built on them stays valid
        self._evicted[cid] = (c, keep)
        self.evictions += 1

    def _bring_back(self, cid: str) -> None:
        t0 = time.perf_counter()
        c, keep = self._evicted[cid]
        tensors = self._load(cid)
        c.module.to_empty(device=self.device)
        c.module.load_state_dict(tensors, strict=True)
        for name, value in keep.items():
            owner, _, leaf = name.rpartition(".")
            c.module.get_submodule(owner)._buffers[leaf] = value
        c.module.requires_grad_(False)
        c.module.eval()
        del self._evicted[cid]
        self._resident[cid] = c
        self.loads += 1
        self.load_seconds += time.perf_counter() - t0


def _non_persistent_buffers(module: nn.Module) -> Tensors:
    stored = set(module.state_dict())
    return {name: b for name, b in module.named_buffers() if name not in stored}
