"""The system keeps learning when it is idle (muNet's task iterations, `num_task_iters` in the official
code): while no operation is queued or running and Predict has been quiet for a while, the server runs
an improvement round over one task, a queued ImproveTask like a client's. A round gives way at once:
to Predict traffic (it waits while Predict runs) and to a client's AddTask or ImproveTask (its clock is
stopped; what it published stays). Every publication is a version with its own golden digest.

Order: the task whose last round is oldest goes first, the lowest estimate breaking ties; a task whose
round published nothing waits twice as long before its next one (up to a day), so that a system with
nothing left to gain goes quiet. With `parallel` > 1 (Ray: the cluster trains the candidates) rounds
over different tasks run at the same time, each its own operation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from munet_server.errors import MunetError
from munet_server.evolve.budget import Budget
from munet_server.operations.manager import IDLE, OperationManager
from munet_server.spec import AddTaskSpec
from munet_server.store.records import TERMINAL_STATES
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 24 * 3600.0


@dataclass
class _Rounds:
    last: float = 0.0  # time.monotonic() of the last round's end (0: never)
    fruitless: int = 0  # rounds in a row that published nothing
    count: int = 0  # rounds started (each searches with its own seed)


class IdleImprover:
    def __init__(
        self,
        operations: Callable[[], OperationManager],
        system: Callable[[], MunetSystem],
        budget: Budget,
        quiet_seconds: float = 10.0,
        retry_seconds: float = 60.0,
        predict_quiet: Callable[[float], bool] = lambda seconds: True,
        parallel: int = 1,
    ) -> None:
        """`operations`, `system`: the live ones (a restore replaces both). `predict_quiet(s)`: no
        Predict work in the last s seconds. `retry_seconds`: the wait after a round that published
        nothing, doubled after each further one. `parallel`: rounds at once (over different tasks)."""
        self.operations, self.system, self.budget = operations, system, budget
        self.quiet_seconds, self.retry_seconds, self.predict_quiet = quiet_seconds, retry_seconds, predict_quiet
        self.parallel = max(1, parallel)
        self.rounds: dict[str, _Rounds] = {}
        self._running: set[str] = set()  # the operation ids of the rounds in flight
        self._stop = threading.Event()
        self.held = threading.Event()  # set: start no round (a restore is switching the system)
        self._thread = threading.Thread(target=self._loop, name="munet-idle-improvement", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except Exception:  # the server keeps serving whatever a round did
                log.exception("idle improvement: a round could not be started")

    def tick(self) -> str | None:
        """Note how rounds ended, and start one more if the server is idle and fewer than `parallel`
        run; its operation id, or None."""
        ops = self.operations()
        for op_id in list(self._running):
            self._note_end(ops, op_id)
        if self.held.is_set() or not ops.clients_idle() or ops.idle_rounds() >= self.parallel:
            return None  # a client's operation comes first; rounds resumed after a restart count too
        if not self.predict_quiet(self.quiet_seconds):
            return None
        task = self.next_task()
        if task is None:
            return None
        system = self.system()
        rec = system.entry(task).record
        m = TaskMetrics.of(rec)
        r = self.rounds.setdefault(task, _Rounds())
        r.count += 1
        spec = AddTaskSpec(name=task, class_names=rec.class_names, budget=self.budget, scale_factor=m.scale_factor,
                           seed=1000 * rec.version + r.count)  # fmt: skip
        try:
            op = ops.submit_improve(spec, origin=IDLE)
        except MunetError as e:  # a client's operation came first, or the task has no stored images
            log.info("idle improvement: %s skipped (%s)", task, e.message)
            r.last, r.fruitless = time.monotonic(), r.fruitless + 1
            return None
        self._running.add(op.id)
        log.info("idle improvement: a round over %r (operation %s)", task, op.id)
        return op.id

    def _note_end(self, ops: OperationManager, op_id: str) -> None:
        try:
            op = ops.get(op_id)
        except MunetError:
            op = None
        if op is not None and op.state not in TERMINAL_STATES:
            return
        if op is not None:
            r = self.rounds.setdefault(op.task_name, _Rounds())
            published = int(op.progress.get("published", 0)) > 0  # it published at least one version
            r.last, r.fruitless = time.monotonic(), 0 if published else r.fruitless + 1
        self._running.discard(op_id)

    def next_task(self) -> str | None:
        """The task whose last round is oldest (never: first), of those not waiting out a backoff."""
        order = self.queue()
        return order[0] if order else None

    def queue(self) -> list[str]:
        """The tasks in the order their next rounds would run (those waiting out a backoff, or with an
        operation queued or running, left out)."""
        system, now, busy = self.system(), time.monotonic(), self.operations().improving()
        ready = []
        for name in sorted(set(system.tasks) - busy):
            r = self.rounds.get(name, _Rounds())
            wait = min(MAX_BACKOFF_SECONDS, self.retry_seconds * 2 ** (r.fruitless - 1)) if r.fruitless else 0.0
            if r.last and now - r.last < wait:
                continue
            estimate = TaskMetrics.of(system.tasks[name].record).validation_accuracy
            ready.append((r.last, estimate, name))
        return [name for *_, name in sorted(ready)]
