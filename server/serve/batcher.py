"""Dynamic batching for Predict: queued requests are merged into one forward pass.

Each RPC thread decodes its images, then `submit`s them and blocks on a future. A small pool of
workers takes the task whose oldest request has waited longest, gathers that task's queued
requests (up to `max_batch` images, waiting at most `wait_ms` for more to arrive), runs one forward
pass and splits the result. With several workers, different tasks run concurrently; the oldest
waiting task always goes first, so no task starves.

With `forward_many`, a worker also takes the queued requests of other tasks that `joinable` says
can share the pass (muNet paths that start with the same frozen components), up to `max_batch`
images in all, and runs them together: the shared components then run once for all of them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

Forward = Callable[[str, torch.Tensor], torch.Tensor]
ForwardMany = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


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
        forward_many: ForwardMany | None = None,
        joinable: Callable[[str, str], bool] | None = None,
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.forward_many = forward_many
        self.joinable = joinable
        self.on_pass = on_pass  # called with the number of tasks after every forward pass
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self._queues: dict[str, deque[_Request]] = {}
        self._busy: set[str] = set()  # tasks a worker is currently gathering / running
        self._cond = threading.Condition()
        self._stopped = False
        self.batches = 0
        self.batched_images = 0
        self.multi_task_batches = 0  # passes that served more than one task
        self._threads = [
            threading.Thread(target=self._loop, name=f"munet-batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, task: str, images: torch.Tensor) -> Future:
        req = _Request(task, images)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            self._queues.setdefault(task, deque()).append(req)
            self._cond.notify()
        return req.future

    def __call__(self, task: str, images: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        return self.submit(task, images).result(timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)

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
                # Linger briefly so concurrent callers of the same task share the pass.
                deadline = self._queues[task][0].enqueued + self.wait_s
                while self._pending(task) < self.max_batch and not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batches = {task: self._take(task, self.max_batch)}
                if self.forward_many is not None:
                    self._join_others(task, batches)
                self._busy.update(batches)
            try:
                if len(batches) == 1:
                    self._run(task, batches[task])
                else:
                    self._run_many(batches)
            finally:
                with self._cond:
                    for t in batches:
                        self._busy.discard(t)
                        if not self._queues.get(t):
                            self._queues.pop(t, None)
                    self._cond.notify_all()

    def _pending(self, task: str) -> int:
        return sum(len(r.images) for r in self._queues.get(task, ()))

    def _take(self, task: str, room: int, first: bool = True) -> list[_Request]:
        """Queued requests of `task`, oldest first, up to `room` images (the first one regardless
        when `first`: a request larger than max_batch still runs, alone)."""
        q = self._queues[task]
        batch: list[_Request] = []
        n = 0
        while q and (n + len(q[0].images) <= room or (first and not batch)):
            r = q.popleft()
            batch.append(r)
            n += len(r.images)
        return batch

    def _join_others(self, task: str, batches: dict[str, list[_Request]]) -> None:
        """Add other idle tasks' queued requests that can share this pass, oldest task first."""
        room = self.max_batch - sum(len(r.images) for r in batches[task])
        others = sorted((q[0].enqueued, t) for t, q in self._queues.items() if q and t not in self._busy)
        for _, other in others:
            if room <= 0:
                break
            if other == task or self.joinable is None or not self.joinable(task, other):
                continue
            taken = self._take(other, room, first=False)
            if taken:
                batches[other] = taken
                room -= sum(len(r.images) for r in taken)

    def _run_many(self, batches: dict[str, list[_Request]]) -> None:
        assert self.forward_many is not None
        live = {t: [r for r in b if r.future.set_running_or_notify_cancel()] for t, b in batches.items()}
        live = {t: b for t, b in live.items() if b}
        if not live:
            return
        try:
            outs = self.forward_many({t: torch.cat([r.images for r in b]) for t, b in live.items()})
        except BaseException:
            # One task's failure (deleted meanwhile, say) must not fail the others: run them apart.
            for t, b in live.items():
                self._run(t, b, started=True)
            return
        self._count(len(live))
        for t, b in live.items():
            self._deliver(b, outs[t])

    def _count(self, tasks: int) -> None:
        self.batches += 1
        self.multi_task_batches += tasks > 1
        if self.on_pass is not None:
            self.on_pass(tasks)

    def _run(self, task: str, batch: list[_Request], started: bool = False) -> None:
        live = batch if started else [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            out = self.forward(task, torch.cat([r.images for r in live]))
        except BaseException as e:  # every waiter gets the error, the worker lives on
            for r in live:
                r.future.set_exception(e)
            return
        self._count(1)
        self._deliver(live, out)

    def _deliver(self, live: list[_Request], out: torch.Tensor) -> None:
        self.batched_images += len(out)
        i = 0
        for r in live:
            r.future.set_result(out[i : i + len(r.images)])
            i += len(r.images)
