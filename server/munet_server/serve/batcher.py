"""Dynamic batching for Predict: requests for one task are merged into one forward pass.

Each RPC thread announces itself (`announce`), decodes its images, then `submit`s them and blocks on
a future. A small pool of workers takes the task whose oldest request has waited longest, gathers
that task's queued requests (up to `max_batch` images) and runs one forward pass. A worker lingers
(at most `wait_ms`) only for callers of that task that announced themselves and are still decoding:
a lone caller never waits (measured: the 2 ms linger was a quarter of a batch-1 forward pass), and
concurrent callers still share one pass. With several workers, different tasks run concurrently; the
oldest waiting task always goes first, so no task starves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import torch

from munet_server.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable

Forward = Callable[[str, torch.Tensor], torch.Tensor]
Observe = Callable[[str, float], None]  # (stage, seconds): "queue" per request, "forward" per pass
OnAbandon = Callable[[Callable[[], object]], object]  # registers a callback for a caller gone away


class Announcement:
    """A caller on its way (decoding): the worker waits a little for it. Consumed by `submit`, or
    withdrawn on exit (a caller that failed before submitting)."""

    def __init__(self, batcher: Batcher, task: str) -> None:
        self.batcher, self.task, self.open = batcher, task, False

    def __enter__(self) -> Announcement:
        with self.batcher._cond:
            self.batcher._coming[self.task] = self.batcher._coming.get(self.task, 0) + 1
            self.open = True
        return self

    def __exit__(self, *exc: object) -> None:
        with self.batcher._cond:
            self.close()

    def close(self) -> None:
        """Called with the batcher's lock held."""
        if not self.open:
            return
        self.open = False
        left = self.batcher._coming[self.task] - 1
        if left:
            self.batcher._coming[self.task] = left
        else:
            del self.batcher._coming[self.task]
        self.batcher._cond.notify_all()


@dataclass
class _Request:
    task: str
    images: torch.Tensor
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        forward: Forward,
        max_batch: int = 64,
        wait_ms: float = 2.0,
        workers: int = 1,
        max_queued: int = 1024,
        observe: Observe | None = None,
    ) -> None:
        self.forward = forward
        self.observe = observe
        self.max_batch = max_batch
        self.max_queued = max_queued  # images waiting, all tasks together
        self._queued = 0
        self.wait_s = wait_ms / 1000.0
        self._queues: dict[str, deque[_Request]] = {}
        self._busy: set[str] = set()  # tasks a worker is currently gathering / running
        self._coming: dict[str, int] = {}  # announced callers per task that have not submitted yet
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.batched_images = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"munet-batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def announce(self, task: str) -> Announcement:
        """`with batcher.announce(task) as a:` decode, then `batcher(task, images, announced=a)`."""
        return Announcement(self, task)

    def submit(self, task: str, images: torch.Tensor, announced: Announcement | None = None) -> Future:
        req = _Request(task, images)
        with self._cond:
            if announced is not None:
                announced.close()
            if self._stopped:
                raise Unavailable("the server is shutting down; retry the call")
            if self._queued + len(images) > self.max_queued:
                raise ResourceExhausted(
                    f"{self._queued} images are already waiting for Predict (the server's limit is "
                    f"{self.max_queued}); retry with backoff"
                )
            self._queued += len(images)
            self._queues.setdefault(task, deque()).append(req)
            self._cond.notify()
        return req.future

    def __call__(
        self,
        task: str,
        images: torch.Tensor,
        timeout: float | None = None,
        on_abandon: OnAbandon | None = None,
        announced: Announcement | None = None,
    ) -> torch.Tensor:
        """The forward pass of `images` for `task`; `timeout` None waits as long as it takes.
        `on_abandon` registers a callback for when the caller goes away (gRPC's add_callback): its
        work is then dropped if it is still queued."""
        future = self.submit(task, images, announced)
        if on_abandon is not None:
            on_abandon(future.cancel)  # a no-op once the answer is in
        try:
            return future.result(timeout)
        except CancelledError:
            raise Cancelled("the caller went away before its Predict work ran") from None
        except FutureTimeout:
            future.cancel()  # still queued: a worker will skip it instead of computing for no one
            raise DeadlineExceeded(
                f"the Predict answer was not ready within the call's deadline ({timeout:.3g} s); "
                "retry with a longer deadline or fewer images"
            ) from None

    def stop(self) -> None:
        """Refuse new work, fail queued work with UNAVAILABLE, and wait for the pass in flight: a
        worker still inside torch when the interpreter exits aborts the process (exit 134)."""
        with self._cond:
            self._stopped = True
            queued = [r for q in self._queues.values() for r in q]
            self._queues.clear()
            self._queued = 0
            self._cond.notify_all()
        for r in queued:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(Unavailable("the server is shutting down; retry the call"))
        for t in self._threads:
            t.join()  # bounded: one forward pass of at most max_batch images

    def _next_task(self) -> str | None:
        ready = [(q[0].enqueued, t) for t, q in self._queues.items() if q and t not in self._busy]
        return min(ready)[1] if ready else None

    def _loop(self) -> None:
        while True:
            with self._cond:
                task = self._next_task()
                while task is None and not self._stopped:
                    self._cond.wait()
                    task = self._next_task()
                if task is None:
                    return
                self._busy.add(task)
                # Linger briefly for callers of this task still decoding, so that they share the pass.
                deadline = self._queues[task][0].enqueued + self.wait_s
                while self._coming.get(task) and self._pending(task) < self.max_batch and not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._take(task)
            try:
                self._run(task, batch)
            finally:
                with self._cond:
                    self._busy.discard(task)
                    if not self._queues.get(task):
                        self._queues.pop(task, None)
                    self._cond.notify_all()

    def _pending(self, task: str) -> int:
        return sum(len(r.images) for r in self._queues.get(task, ()))

    def _take(self, task: str) -> list[_Request]:
        q = self._queues[task]
        batch = [q.popleft()]
        n = len(batch[0].images)
        while q and n + len(q[0].images) <= self.max_batch:
            r = q.popleft()
            batch.append(r)
            n += len(r.images)
        self._queued -= n
        return batch

    def _run(self, task: str, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.monotonic()
        try:
            out = self.forward(task, torch.cat([r.images for r in live]) if len(live) > 1 else live[0].images)
        except BaseException as e:  # every waiter gets the error, the worker lives on
            for r in live:
                r.future.set_exception(e)
            return
        if self.observe is not None:
            for r in live:
                self.observe("queue", t0 - r.enqueued)
            self.observe("forward", time.monotonic() - t0)
        self.batches += 1
        self.batched_images += len(out)
        i = 0
        for r in live:
            r.future.set_result(out[i : i + len(r.images)])
            i += len(r.images)
