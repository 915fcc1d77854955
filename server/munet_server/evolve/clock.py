"""One clock for a search: the budget in seconds, shared by the search, its trainer, its judge and the
executors. A search always has a champion serving, so the clock needs no reserve: what it cuts short is
a candidate (trained for less) or a judgement (the champion stays). `stop()` ends it early (an idle
improvement round yields to a new AddTask)."""

from __future__ import annotations

import threading
import time


class Clock:
    def __init__(self, seconds: float, spent: float = 0.0, background: bool = False) -> None:
        """`spent`: seconds of this budget used before (a resumed search). `background`: an idle
        round, which waits while Predict traffic runs instead of only slowing down."""
        self.seconds = seconds
        self.background = background
        self._started = time.monotonic() - spent
        self._stopped = threading.Event()

    def resume(self, spent: float) -> None:
        """Count `spent` seconds of this budget as used before now (a resumed search)."""
        self._started = time.monotonic() - spent

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def end(self) -> float:
        """time.monotonic() at which the budget ends."""
        return self._started + self.seconds

    def left(self) -> float:
        return 0.0 if self._stopped.is_set() else max(0.0, self.end() - time.monotonic())

    def expired(self) -> bool:
        return self._stopped.is_set() or time.monotonic() >= self.end()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()
