"""Bounds for long-lived calls, so that a few slow or vanished clients cannot freeze the server.

gRPC's sync server runs every call on one thread pool. Uploads, restores, snapshots and
Wait/WatchOperation may each hold a thread for minutes; without a cap, as many of them as there are
threads leave nothing for health checks and Predict. `CallSlots` keeps some threads for short calls,
and `idle_guarded` ends a client stream that stops sending (a stalled upload holds its thread until
the client's deadline, which plain stubs never set).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

from munet_server.errors import DeadlineExceeded, ResourceExhausted

T = TypeVar("T")
_END = object()


class CallSlots:
    """At most `limit` long-lived calls at once; the next is refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        with self._lock:
            if self._held >= self.limit:
                raise ResourceExhausted(
                    f"{self._held} long-lived calls (uploads, restores, snapshots, operation waits and "
                    f"watches) are open, the server's limit; retry {what} in a few seconds, or poll "
                    "GetOperation instead of waiting"
                )
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1


def idle_guarded(items: Iterator[T], idle_seconds: float, what: str) -> Iterator[T]:
    """`items` as they arrive, or DeadlineExceeded when none arrives for `idle_seconds`.

    A reader thread pulls from gRPC's request iterator (which blocks until the next message or the
    end of the call); once the handler gives up, the call ends and the reader's next pull returns.
    """
    box: queue.Queue = queue.Queue(maxsize=2)  # backpressure: the reader stays a message or two ahead
    done = threading.Event()

    def read() -> None:
        try:
            for item in items:
                while not done.is_set():
                    try:
                        box.put((item, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            box.put((_END, None))
        except BaseException as e:  # the client cancelled, or a message failed to parse
            if not done.is_set():
                box.put((_END, e))

    reader = threading.Thread(target=read, name="munet-stream-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item, error = box.get(timeout=idle_seconds)
            except queue.Empty:
                raise DeadlineExceeded(
                    f"the client sent nothing for {idle_seconds:.0f} s during {what}; the call is ended "
                    "and nothing it sent is kept. Send again (the server's --upload-idle-seconds)"
                ) from None
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        done.set()
