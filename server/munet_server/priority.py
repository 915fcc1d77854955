"""Serving before training: a search on the same machine pauses between its steps while Predict runs.

A training step and a Predict forward pass contend for the same cores (on a 2-core CPU a batch-1
Predict waited behind a step's OpenMP team). Predict marks its work `serving()`; the search calls
`yield_to_serving()` between training steps and feature batches: it returns at once when nothing is
being served, and otherwise waits until Predict's work ends, at most `max_wait` seconds per call, so
steady traffic slows a search down but never stops it. One gate per process: the cores are shared
by everything in it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ServingGate:
    def __init__(self, max_wait: float = 0.1) -> None:
        self.max_wait = max_wait  # 0: training never yields
        self._cond = threading.Condition()
        self._active = 0
        self.yields = 0
        self.yielded_seconds = 0.0

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    def yield_to_serving(self) -> None:
        if not self._active or self.max_wait <= 0:  # an unlocked read: a hint, checked again below
            return
        t0 = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: not self._active, timeout=self.max_wait)  # then run anyway
            self.yields += 1
            self.yielded_seconds += time.monotonic() - t0


GATE = ServingGate()
