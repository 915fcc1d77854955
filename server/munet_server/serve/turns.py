"""On a CPU, Predict's decoding and its forward passes take turns instead of running side by side.

The forward pass is an OpenMP team over every core; a PNG decode on an RPC thread beside it takes a
core from the team, whose other threads then wait at the next barrier. Measured on 2 cores with 4
clients sending 32 images each: a 64-image pass took 198 ms beside the decodes against ~150 ms
alone, and throughput was 0.62 of one in-process loop. So any number of decodes may run together
(each is single-threaded), a forward pass waits for those running to finish and runs alone, and
decodes that arrive while a pass waits or runs wait for it (the pass goes first: it is what callers
are waiting for). On a GPU the forward pass leaves the CPU free and Predict does not use this.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._decoding = 0
        self._passes = 0  # forward passes running or waiting for their turn

    @contextmanager
    def decoding(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._passes)
            self._decoding += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                if not self._decoding:
                    self._cond.notify_all()

    @contextmanager
    def forward(self) -> Iterator[None]:
        with self._cond:
            self._passes += 1
            self._cond.wait_for(lambda: not self._decoding)
        try:
            yield
        finally:
            with self._cond:
                self._passes -= 1
                if not self._passes:
                    self._cond.notify_all()
