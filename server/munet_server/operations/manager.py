"""Long-running operations (AddTask, ImproveTask): queue, background worker, progress, cancel, wait,
resume.

`workers` threads run one search each (one by default: a search saturates the machine; with Ray the
cluster trains the candidates of several). More operations queue, and past `max_pending` they are
refused with RESOURCE_EXHAUSTED. Predict keeps serving meanwhile
because a search only trains its own draft copies and publishes through `MunetSystem.commit`.

Durability: the op record lives in LMDB. After every generation the population's draft tensors go
into a content-addressed shard referenced from the op's checkpoint, so a restart resumes from the
last finished generation. A cancelled or failed op deletes its checkpoint (an AddTask's upload
too; an ImproveTask's images stay with their task) and leaves the published system exactly as it was.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from munet_server import logs
from munet_server.data.dataset import build_dataset
from munet_server.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    MunetError,
    NotFound,
    ResourceExhausted,
    disk_full,
)
from munet_server.evolve.clock import Clock
from munet_server.evolve.executors import Executor
from munet_server.evolve.search import Champion, SearchProgress
from munet_server.faults import crash_point
from munet_server.learn import Learned, champion_of, learn
from munet_server.spec import AddTaskSpec
from munet_server.store.records import (
    TERMINAL_STATES,
    DatasetRecord,
    OperationKind,
    OperationRecord,
    OperationState,
    Origin,
    TaskRecord,
)
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

log = logging.getLogger(__name__)

ADD_TASK, IMPROVE_TASK = OperationKind.ADD_TASK.value, OperationKind.IMPROVE_TASK.value
CLIENT, IDLE = Origin.CLIENT.value, Origin.IDLE.value
SPEC_EXTRAS = ("dataset_id", "from_version", "origin")  # kept in an operation's spec beside AddTaskSpec
CHECKPOINT_FORMAT = 2  # a search's checkpoint; an older one is not resumed (the search starts again)


class OperationManager:
    def __init__(
        self,
        system: MunetSystem,
        *,
        max_pending: int = 8,
        history: int = 1000,
        on_commit: Callable[[str], None] | None = None,
        on_progress: Callable[[OperationRecord], None] | None = None,
        executor_factory: Callable[[], Executor] | None = None,
        workers: int = 1,
    ) -> None:
        self.system = system
        self.workers = max(1, workers)
        self.store = system.store
        self.max_pending = max_pending
        self.history = history  # finished operation records kept; older ones are deleted
        self.on_commit = on_commit
        self.on_progress = on_progress
        self.executor_factory = executor_factory  # None: train candidates in this process
        self._ops: dict[str, OperationRecord] = {}
        self._versions: dict[str, int] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_persist: dict[str, float] = {}
        self._clocks: dict[str, Clock] = {}  # running operations' clocks: an idle round's is stopped early

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self, resume: bool = True) -> None:
        """Load ops from the store; interrupted ones are resumed (or failed if resume=False).

        Uploads that never finished (the stream broke, or the process died mid-upload) have an
        incomplete dataset and no op: they are deleted here.
        """
        with self.store.meta.write() as w:
            for d in w.list_datasets():
                if not d.complete:
                    log.info("deleting the unfinished upload %s of task %r", d.id, d.task_name)
                    w.delete_dataset(d.id)
        for op in self.store.meta.list_operations():
            self._ops[op.id] = op
            self._versions[op.id] = 0
            if op.state in TERMINAL_STATES:
                continue
            if resume:
                log.info("resuming interrupted operation %s (%s)", op.id, op.task_name)
                self._cancel[op.id] = threading.Event()
                self._queue.append(op.id)
            else:
                self._finish(
                    op.id, OperationState.FAILED.value, error={"code": "ABORTED", "message": "interrupted by a restart"}
                )
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"munet-operations-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> bool:
        """Interrupt the running search; it stays RUNNING in the store and resumes on restart.
        False: the search did not pause within `timeout` (it checks between training steps)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for ev in self._cancel.values():
            ev.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # ---- API -----------------------------------------------------------------------------------
    def submit(self, spec: AddTaskSpec, dataset: DatasetRecord) -> OperationRecord:
        """Queue a search; marks the dataset complete and stores the op in one transaction. An idle
        improvement round gives way at once."""
        with self._cond:
            self.check_can_submit(spec.name)
            self.yield_idle_rounds()
            now = time.time()
            op = OperationRecord(
                id=uuid.uuid4().hex[:16],
                kind=ADD_TASK,
                task_name=spec.name,
                state=OperationState.QUEUED.value,
                spec={**spec.to_dict(), "dataset_id": dataset.id},
                progress={"phase": "queued", "examples": dataset.num_examples},
                error={},
                checkpoint={},
                created_at=now,
                updated_at=now,
            )
            with self.store.meta.write() as w:
                w.put_dataset(dataset)
                w.put_operation(op)
            self._ops[op.id] = op
            self._versions[op.id] = 0
            self._cancel[op.id] = threading.Event()
            self._queue.append(op.id)
            self._cond.notify_all()
            return op

    def submit_improve(self, spec: AddTaskSpec, origin: str = CLIENT) -> OperationRecord:
        """Queue muNet's next iteration of a committed task, on the images it was added with."""
        with self._cond:
            if origin == CLIENT:
                self.yield_idle_rounds()
            entry = self.system.entry(spec.name)  # NotFound, DataLoss for a damaged task
            if any(j.task_name == spec.name and j.state not in TERMINAL_STATES for j in self._ops.values()):
                raise FailedPrecondition(f"task {spec.name!r} already has an operation queued or running")
            self._check_queue()
            ds = entry.record.dataset_id
            ds_rec = self.store.meta.get_dataset(ds) if ds else None
            if ds_rec is None or not ds_rec.complete:
                raise FailedPrecondition(
                    f"task {spec.name!r} has no stored images to learn from again (was it restored from "
                    "a store that lost them?); delete it and add it again"
                )
            now = time.time()
            op = OperationRecord(
                id=uuid.uuid4().hex[:16],
                kind=IMPROVE_TASK,
                task_name=spec.name,
                state=OperationState.QUEUED.value,
                spec={**spec.to_dict(), "dataset_id": ds, "from_version": entry.record.version, "origin": origin},
                progress={"phase": "queued", "examples": ds_rec.num_examples},
                error={},
                checkpoint={},
                created_at=now,
                updated_at=now,
            )
            with self.store.meta.write() as w:
                w.put_operation(op)
            self._ops[op.id] = op
            self._versions[op.id] = 0
            self._cancel[op.id] = threading.Event()
            self._queue.append(op.id)
            self._cond.notify_all()
            return op

    def check_can_submit(self, name: str) -> None:
        """Refuse a duplicate name or a full queue (called before an upload, and again at submit)."""
        with self._cond:
            if name in self.system.tasks or name in self.system.damaged:
                raise AlreadyExists(f"task {name!r} already exists; choose another name or delete it first")
            if any(j.task_name == name and j.state not in TERMINAL_STATES for j in self._ops.values()):
                raise AlreadyExists(f"task {name!r} is already being added by another operation")
            self._check_queue()

    def _check_queue(self) -> None:
        with self._cond:
            pending = self.active()
            if pending >= self.max_pending:
                raise ResourceExhausted(
                    f"{pending} operations are already queued or running (limit {self.max_pending}); "
                    "wait for one to finish or cancel one"
                )

    def active(self) -> int:
        return sum(1 for j in self._ops.values() if j.state not in TERMINAL_STATES)

    def cancel_task(self, task: str) -> None:
        """Cancel every operation of `task` that is queued or running (the task is being deleted)."""
        with self._cond:
            for op in list(self._ops.values()):
                if op.task_name == task and op.state not in TERMINAL_STATES:
                    self.cancel(op.id)

    def wait_idle_rounds(self, timeout: float) -> None:
        """Wait (at most `timeout`) for stopped idle rounds to end."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.idle_rounds():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.5))

    def improving(self) -> set[str]:
        """The tasks an operation is queued or running for."""
        return {j.task_name for j in self._ops.values() if j.state not in TERMINAL_STATES}

    def idle_rounds(self) -> int:
        """Idle improvement rounds queued or running."""
        return sum(1 for j in self._ops.values() if j.spec.get("origin") == IDLE and j.state not in TERMINAL_STATES)

    def clients_idle(self) -> bool:
        """No client's operation is queued or running (idle rounds may be)."""
        return not any(j.spec.get("origin") != IDLE and j.state not in TERMINAL_STATES for j in self._ops.values())

    def yield_idle_rounds(self) -> None:
        """Stop the idle improvement round that runs (it ends at its next step, keeping what it
        published) and drop queued ones: a client's operation comes first."""
        with self._cond:
            for op in list(self._ops.values()):
                if op.spec.get("origin") != IDLE or op.state in TERMINAL_STATES:
                    continue
                if op.state == OperationState.QUEUED.value and op.id in self._queue:
                    self._queue.remove(op.id)
                    self._finish(op.id, OperationState.CANCELLED.value, error={"code": "CANCELLED", "message": "gave way to a client's operation"})
                elif op.id in self._clocks:
                    self._clocks[op.id].stop()

    def get(self, op_id: str) -> OperationRecord:
        op = self._ops.get(op_id)
        if op is None:
            raise NotFound(f"operation {op_id!r} does not exist")
        return op

    def list(self, task: str = "", state: str = "") -> list[OperationRecord]:
        ops = sorted(self._ops.values(), key=lambda j: j.created_at)
        return [j for j in ops if (not task or j.task_name == task) and (not state or j.state == state)]

    def cancel(self, op_id: str) -> OperationRecord:
        with self._cond:
            op = self.get(op_id)
            if op.state in TERMINAL_STATES:
                raise FailedPrecondition(
                    f"operation {op_id} already finished ({op.state}); nothing to cancel"
                )
            self._cancel[op_id].set()
            if op.state == OperationState.QUEUED.value and op_id in self._queue:
                self._queue.remove(op_id)
                self._finish(
                    op_id, OperationState.CANCELLED.value, error={"code": "CANCELLED", "message": "cancelled by a client"}
                )
            return self._ops[op_id]

    def wait(
        self, op_id: str, timeout: float | None, alive: Callable[[], bool] = lambda: True
    ) -> OperationRecord:
        """The record once terminal, or when `timeout` passes or the caller goes away (checked
        every second, so an abandoned wait frees its thread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.get(op_id).state not in TERMINAL_STATES and alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(1.0 if left is None else min(left, 1.0))
            return self._ops[op_id]

    def watch(self, op_id: str, alive: Callable[[], bool] = lambda: True) -> Iterator[OperationRecord]:
        """Yield the record on every change until it is terminal (or the caller goes away)."""
        seen = -1
        while alive():
            with self._cond:
                self.get(op_id)
                if self._versions[op_id] == seen:
                    self._cond.wait(1.0)
                version, op = self._versions[op_id], self._ops[op_id]
            if version != seen:
                seen = version
                yield op
                if op.state in TERMINAL_STATES:
                    return

    # ---- worker --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                op_id = self._queue.popleft()
            try:
                self._run(op_id)
                self._clocks.pop(op_id, None)
            except Cancelled:
                if self._stopping.is_set():
                    log.info("operation %s interrupted by shutdown; it resumes on restart", op_id)
                    return
                self._finish(
                    op_id, OperationState.CANCELLED.value, error={"code": "CANCELLED", "message": "cancelled by a client"}
                )
            except MunetError as e:
                log.warning("operation %s failed: %s", op_id, e.message)
                self._finish(op_id, OperationState.FAILED.value, error={"code": e.code.name, "message": e.message})
            except Exception as e:  # an engine bug must not kill the worker
                full = disk_full(e, self.store.root)
                if full is not None:
                    log.warning("operation %s failed: %s", op_id, full.message)
                    try:
                        self._finish(
                            op_id, OperationState.FAILED.value, error={"code": full.code.name, "message": full.message}
                        )
                    except Exception:  # even the final record did not fit: the operation resumes at the next start
                        log.exception("operation %s: could not record its failure", op_id)
                    continue
                incident = uuid.uuid4().hex[:8]
                log.exception("operation %s crashed (incident %s)", op_id, incident)
                msg = f"internal error ({type(e).__name__}); incident {incident} is in the server log"
                self._finish(op_id, OperationState.FAILED.value, error={"code": "INTERNAL", "message": msg})

    def _run(self, op_id: str) -> None:
        op = self._ops[op_id]
        op = self._update(op_id, state=OperationState.RUNNING.value, progress={**op.progress, "phase": "loading"}, persist=True)
        spec = AddTaskSpec.from_dict({k: v for k, v in op.spec.items() if k not in SPEC_EXTRAS})
        dataset_id = op.spec["dataset_id"]
        ds_rec = self.store.meta.get_dataset(dataset_id)
        if ds_rec is None or not ds_rec.complete:
            raise FailedPrecondition(f"the uploaded dataset of operation {op_id} is missing; upload it again")
        dataset = build_dataset(self.store.meta.iter_examples(dataset_id), ds_rec.class_names, self.system.storage_size)
        ckpt = op.checkpoint
        resume = None
        if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("state") and ckpt.get("shards"):
            resume = (ckpt["state"], self.store.shards.get(ckpt["shards"][0]))
        # A task published by this operation before a restart is its champion now, like any served task.
        champion = champion_of(self.system, spec.name) if spec.name in self.system.tasks else None
        clock = self._clocks.setdefault(op_id, Clock(spec.budget.seconds, background=op.spec.get("origin") == IDLE))
        if champion is not None:
            self._update(op_id, progress={**self._ops[op_id].progress, "task_version": champion.version})
        learned = learn(
            self.system, spec, dataset, champion=champion, dataset_id=dataset_id, operation=op_id, clock=clock,
            progress=lambda p: self._on_progress(op_id, p), cancel=self._cancel.setdefault(op_id, threading.Event()),
            executor=self.executor_factory() if self.executor_factory is not None else None, resume=resume,
            on_checkpoint=lambda state, tensors: self._checkpoint(op_id, state, tensors),
            on_publish=lambda record: self._published(op_id, record),
        )  # fmt: skip
        result = _result(learned, champion, clock)
        progress = {**self._ops[op_id].progress, "phase": "done", "result": result,
                    "task_version": learned.served_version}  # fmt: skip
        self._finish(op_id, OperationState.SUCCEEDED.value, progress=progress)
        logs.event(log, "search_ended", f"task {spec.name!r}: {result}", task=spec.name, operation=op_id,
                   version=learned.served_version, published=len(learned.records))  # fmt: skip

    def _published(self, op_id: str, record: TaskRecord) -> None:
        """A version now serves: health and metrics learn it first, then watchers."""
        if self.on_commit is not None:
            self.on_commit(record.name)
        m = TaskMetrics.of(record)
        op = self._ops[op_id]
        first = op.progress.get("first_served_at") or time.time()
        self._update(op_id, progress={**op.progress, "task_version": record.version, "serving_kind": m.kind,
                                       "serving_accuracy": m.validation_accuracy, "first_served_at": first,
                                       "published": int(op.progress.get("published", 0)) + 1}, persist=True)  # fmt: skip
        logs.event(
            log, "task_published",
            f"task {record.name!r} version {record.version} serves: {m.kind}, validation accuracy "
            f"{m.validation_accuracy:.3f} on {m.holdout_size} images, +{m.params_added:,} params, {m.search_seconds:.0f} s",
            task=record.name, operation=op_id, version=record.version, validation_accuracy=m.validation_accuracy,
            kind=m.kind, params_added=m.params_added, search_seconds=m.search_seconds,
        )  # fmt: skip

    # ---- state changes -------------------------------------------------------------------------
    def _on_progress(self, op_id: str, p: SearchProgress) -> None:
        progress = {
            "phase": p.phase,
            "serving_version": p.serving_version,
            "generation": p.generation,
            "generations_total": p.generations_total,
            "candidates_done": p.candidates_done,
            "best_validation_accuracy": p.best_accuracy,
            "best_score": p.best_score,
            "params_added": p.params_added,
            "elapsed_seconds": p.elapsed,
            "eta_seconds": p.eta,
        }
        now = time.monotonic()
        persist = now - self._last_persist.get(op_id, 0.0) > 5.0
        if persist:
            self._last_persist[op_id] = now
        self._update(op_id, progress={**self._ops[op_id].progress, **progress}, persist=persist)

    def _checkpoint(self, op_id: str, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        old = self._ops[op_id].checkpoint.get("shards", [])
        digest = self.store.shards.put(tensors, metadata={"op": op_id}) if tensors else ""
        checkpoint = {"format": CHECKPOINT_FORMAT, "state": state, "shards": [digest] if digest else []}
        self._update(op_id, checkpoint=checkpoint, persist=True)
        crash_point("after_checkpoint")
        for d in old:
            if d != digest:
                self.store.release_shard(d)

    def _update(self, op_id: str, persist: bool = False, **changes: Any) -> OperationRecord:
        with self._cond:
            op = replace(self._ops[op_id], updated_at=time.time(), **changes)
            self._ops[op_id] = op
            self._versions[op_id] += 1
            if persist:
                with self.store.meta.write() as w:
                    w.put_operation(op)
            self._cond.notify_all()
        if self.on_progress is not None:
            self.on_progress(op)
        return op

    def _oldest_finished(self, keep: int) -> list[str]:
        done = sorted((j.updated_at, j.id) for j in self._ops.values() if j.state in TERMINAL_STATES)
        return [i for _, i in done[: max(0, len(done) - keep)]]

    def _finish(self, op_id: str, state: str, error: dict[str, str] | None = None, **changes: Any) -> None:
        op = self._ops[op_id]
        shards = op.checkpoint.get("shards", [])
        with self._cond:
            done = replace(
                op, state=state, error=error or {}, checkpoint={}, updated_at=time.time(), **changes
            )
            old = self._oldest_finished(keep=self.history - 1)
            with self.store.meta.write() as w:
                if state != OperationState.SUCCEEDED.value and op.kind == ADD_TASK and op.task_name not in self.system.tasks:
                    w.delete_dataset(op.spec["dataset_id"])  # an upload nothing was published from dies with it
                w.put_operation(done)
                for o in old:  # a bounded history: the oldest finished records go
                    w.delete_operation(o)
            for o in old:
                self._ops.pop(o, None)
                self._versions.pop(o, None)
            for d in shards:  # unreferenced now; gone before any waiter sees the final state
                self.store.release_shard(d)
            self._ops[op_id] = done
            self._versions[op_id] += 1
            self._cond.notify_all()
        if state == OperationState.CANCELLED.value:
            kept = self.system.tasks.get(op.task_name)
            outcome = f"version {kept.record.version} keeps serving" if kept is not None else "nothing was published"
            logs.event(log, "task_cancelled", f"operation {op_id} ({op.task_name!r}) cancelled; {outcome}",
                       task=op.task_name, operation=op_id)  # fmt: skip
        if self.on_progress is not None:
            self.on_progress(done)


def _result(learned: Learned, champion: Champion | None, clock: Clock) -> str:
    """What an operation did, in a line: the version serving and how it got there."""
    if not learned.records:
        kept = f"kept version {learned.served_version}"
        judged = learned.state.decisions
        why = f": {judged[-1].reason}" if judged else ": no challenger beat it on the holdout"
        return kept + why + (" (stopped early for a client's operation)" if clock.stopped else "")
    last = TaskMetrics.of(learned.records[-1])
    versions = ", ".join(str(r.version) for r in learned.records)
    was = f" (was {champion.version})" if champion is not None else ""
    return (f"published version{'s' if len(learned.records) > 1 else ''} {versions}{was}; version "
            f"{learned.served_version} serves ({last.kind}, validation accuracy {last.validation_accuracy:.3f})")
