"""Serving before training: a search on the same machine gives way to Predict.

A training step and a Predict forward pass contend for the same cores (on a 2-core CPU a batch-1
Predict waited behind a step's OpenMP team). Predict marks its work `serving()`; the search calls
`yield_to_serving()` between training steps and feature batches, which does two things:
- it waits while Predict's work is in flight, at most `max_wait` seconds per call, so steady traffic
  slows a search down but never stops it;
- on a CPU, while Predict runs or ran in the last `recent` seconds, the search's next steps run on
  one thread (a thread budget): a step already under way cannot be paused, and a two-thread team
  running beside Predict's pass took a core from it for the whole step.
`max_wait` 0 turns both off. One gate per process: the cores are shared by everything in it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

RECENT_S = 1.0  # Predict traffic this recent keeps a CPU search on one thread


class ServingGate:
    def __init__(self, max_wait: float = 0.1, recent: float = RECENT_S) -> None:
        self.max_wait = max_wait  # 0: training never yields
        self.recent = recent
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = float("-inf")
        self._threads = threading.local()  # per search thread: its own thread count, and the current one
        self.yields = 0
        self.yielded_seconds = 0.0
        self.narrow_steps = 0  # steps a CPU search ran on one thread because Predict was busy
        self.background_waits = 0  # times an idle round waited for Predict traffic to pass
        self.background_wait_seconds = 0.0

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last_end = time.monotonic()
                if not self._active:
                    self._cond.notify_all()

    def yield_to_serving(self, device: torch.device | str | None = None) -> None:
        """Called by a search between its steps; `device` is where the step runs (None: the CPU)."""
        if self.max_wait <= 0:
            return
        if device is None or torch.device(device).type == "cpu":
            self._budget_threads()
        if not self._active:  # an unlocked read: a hint, checked again below
            return
        t0 = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: not self._active, timeout=self.max_wait)  # then run anyway
            self.yields += 1
            self.yielded_seconds += time.monotonic() - t0

    def quiet_for(self, seconds: float) -> bool:
        """No Predict work is in flight, nor ended in the last `seconds`."""
        with self._cond:
            return not self._active and time.monotonic() - self._last_end >= seconds

    def wait_for_quiet(self, stop: Callable[[], bool]) -> None:
        """A background round (idle improvement) waits until no Predict work has run for `recent`
        seconds, or until `stop()`: it gives way to traffic instead of only slowing down."""
        if self.max_wait <= 0:
            return
        t0 = time.monotonic()
        waited = False
        while not stop():
            with self._cond:
                if not self._active and time.monotonic() - self._last_end >= self.recent:
                    break
                waited = True
                self._cond.wait(0.1)
        if waited:
            self.background_waits += 1
            self.background_wait_seconds += time.monotonic() - t0

    def _budget_threads(self) -> None:
        # torch.set_num_threads sets the calling thread's OpenMP team size (and the size a thread that
        # has not run torch yet starts with); threads already running keep theirs.
        mine = self._threads
        if not hasattr(mine, "own"):
            mine.own = mine.now = torch.get_num_threads()
        busy = self._active > 0 or time.monotonic() - self._last_end < self.recent
        want = 1 if busy else mine.own
        if busy and mine.own > 1:
            self.narrow_steps += 1
        if want != mine.now:
            torch.set_num_threads(want)
            mine.now = want


GATE = ServingGate()
