"""Long-running operations (AddTask, ImproveTask): queue, background worker, progress, cancel, wait,
resume.

One worker thread runs one search at a time (searches saturate the machine; more AddTasks queue,
and past `max_pending` they are refused with RESOURCE_EXHAUSTED). Predict keeps serving meanwhile
because a search only trains its own draft copies and publishes through `MunetSystem.commit`.

Durability: the job record lives in LMDB. After every generation the population's draft tensors go
into a content-addressed shard referenced from the job's checkpoint, so a restart resumes from the
last finished generation. A cancelled or failed job deletes its checkpoint (an AddTask's upload
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
from munet_server.evolve.search import Executor, SearchProgress
from munet_server.faults import crash_point
from munet_server.learn import improve_task, learn_task
from munet_server.spec import AddTaskSpec
from munet_server.store.records import TERMINAL_STATES, DatasetRecord, OperationRecord
from munet_server.system import MunetSystem

log = logging.getLogger(__name__)


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
    ) -> None:
        self.system = system
        self.store = system.store
        self.max_pending = max_pending
        self.history = history  # finished operation records kept; older ones are deleted
        self.on_commit = on_commit
        self.on_progress = on_progress
        self.executor_factory = executor_factory  # None: train candidates in this process
        self._jobs: dict[str, OperationRecord] = {}
        self._versions: dict[str, int] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._last_persist: dict[str, float] = {}

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self, resume: bool = True) -> None:
        """Load jobs from the store; interrupted ones are resumed (or failed if resume=False).

        Uploads that never finished (the stream broke, or the process died mid-upload) have an
        incomplete dataset and no job: they are deleted here.
        """
        with self.store.meta.write() as w:
            for d in w.list_datasets():
                if not d.complete:
                    log.info("deleting the unfinished upload %s of task %r", d.id, d.task_name)
                    w.delete_dataset(d.id)
        for job in self.store.meta.list_operations():
            self._jobs[job.id] = job
            self._versions[job.id] = 0
            if job.state in TERMINAL_STATES:
                continue
            if resume:
                log.info("resuming interrupted operation %s (%s)", job.id, job.task_name)
                self._cancel[job.id] = threading.Event()
                self._queue.append(job.id)
            else:
                self._finish(
                    job.id, "FAILED", error={"code": "ABORTED", "message": "interrupted by a restart"}
                )
        self._worker = threading.Thread(target=self._loop, name="munet-operations", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Interrupt the running search; it stays RUNNING in the store and resumes on restart.
        False: the search did not pause within `timeout` (it checks between training steps)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for ev in self._cancel.values():
            ev.set()
        if self._worker is not None:
            self._worker.join(timeout)
            return not self._worker.is_alive()
        return True

    # ---- API -----------------------------------------------------------------------------------
    def submit(self, spec: AddTaskSpec, dataset: DatasetRecord) -> OperationRecord:
        """Queue a search; marks the dataset complete and stores the job in one transaction."""
        with self._cond:
            self.check_can_submit(spec.name)
            now = time.time()
            job = OperationRecord(
                id=uuid.uuid4().hex[:16],
                kind="add_task",
                task_name=spec.name,
                state="QUEUED",
                spec={**spec.to_dict(), "dataset_id": dataset.id},
                progress={"phase": "queued", "examples": dataset.num_examples},
                error={},
                checkpoint={},
                created_at=now,
                updated_at=now,
            )
            with self.store.meta.write() as w:
                w.put_dataset(dataset)
                w.put_operation(job)
            self._jobs[job.id] = job
            self._versions[job.id] = 0
            self._cancel[job.id] = threading.Event()
            self._queue.append(job.id)
            self._cond.notify_all()
            return job

    def submit_improve(self, spec: AddTaskSpec) -> OperationRecord:
        """Queue muNet's next iteration of a committed task, on the images it was added with."""
        with self._cond:
            entry = self.system.entry(spec.name)  # NotFound, DataLoss for a damaged task
            if any(j.task_name == spec.name and j.state not in TERMINAL_STATES for j in self._jobs.values()):
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
            job = OperationRecord(
                id=uuid.uuid4().hex[:16],
                kind="improve_task",
                task_name=spec.name,
                state="QUEUED",
                spec={**spec.to_dict(), "dataset_id": ds, "from_version": entry.record.version},
                progress={"phase": "queued", "examples": ds_rec.num_examples},
                error={},
                checkpoint={},
                created_at=now,
                updated_at=now,
            )
            with self.store.meta.write() as w:
                w.put_operation(job)
            self._jobs[job.id] = job
            self._versions[job.id] = 0
            self._cancel[job.id] = threading.Event()
            self._queue.append(job.id)
            self._cond.notify_all()
            return job

    def check_can_submit(self, name: str) -> None:
        """Refuse a duplicate name or a full queue (called before an upload, and again at submit)."""
        with self._cond:
            if name in self.system.tasks or name in self.system.damaged:
                raise AlreadyExists(f"task {name!r} already exists; choose another name or delete it first")
            if any(j.task_name == name and j.state not in TERMINAL_STATES for j in self._jobs.values()):
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
        return sum(1 for j in self._jobs.values() if j.state not in TERMINAL_STATES)

    def get(self, job_id: str) -> OperationRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"operation {job_id!r} does not exist")
        return job

    def list(self, task: str = "", state: str = "") -> list[OperationRecord]:
        jobs = sorted(self._jobs.values(), key=lambda j: j.created_at)
        return [j for j in jobs if (not task or j.task_name == task) and (not state or j.state == state)]

    def cancel(self, job_id: str) -> OperationRecord:
        with self._cond:
            job = self.get(job_id)
            if job.state in TERMINAL_STATES:
                raise FailedPrecondition(
                    f"operation {job_id} already finished ({job.state}); nothing to cancel"
                )
            self._cancel[job_id].set()
            if job.state == "QUEUED" and job_id in self._queue:
                self._queue.remove(job_id)
                self._finish(
                    job_id, "CANCELLED", error={"code": "CANCELLED", "message": "cancelled by a client"}
                )
            return self._jobs[job_id]

    def wait(
        self, job_id: str, timeout: float | None, alive: Callable[[], bool] = lambda: True
    ) -> OperationRecord:
        """The record once terminal, or when `timeout` passes or the caller goes away (checked
        every second, so an abandoned wait frees its thread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.get(job_id).state not in TERMINAL_STATES and alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(1.0 if left is None else min(left, 1.0))
            return self._jobs[job_id]

    def watch(self, job_id: str, alive: Callable[[], bool] = lambda: True) -> Iterator[OperationRecord]:
        """Yield the record on every change until it is terminal (or the caller goes away)."""
        seen = -1
        while alive():
            with self._cond:
                self.get(job_id)
                if self._versions[job_id] == seen:
                    self._cond.wait(1.0)
                version, job = self._versions[job_id], self._jobs[job_id]
            if version != seen:
                seen = version
                yield job
                if job.state in TERMINAL_STATES:
                    return

    # ---- worker --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                job_id = self._queue.popleft()
            try:
                self._run(job_id)
            except Cancelled:
                if self._stopping.is_set():
                    log.info("operation %s interrupted by shutdown; it resumes on restart", job_id)
                    return
                self._finish(
                    job_id, "CANCELLED", error={"code": "CANCELLED", "message": "cancelled by a client"}
                )
            except MunetError as e:
                log.warning("operation %s failed: %s", job_id, e.message)
                self._finish(job_id, "FAILED", error={"code": e.code.name, "message": e.message})
            except Exception as e:  # an engine bug must not kill the worker
                full = disk_full(e, self.store.root)
                if full is not None:
                    log.warning("operation %s failed: %s", job_id, full.message)
                    try:
                        self._finish(
                            job_id, "FAILED", error={"code": full.code.name, "message": full.message}
                        )
                    except Exception:  # even the final record did not fit: the operation resumes at the next start
                        log.exception("operation %s: could not record its failure", job_id)
                    continue
                incident = uuid.uuid4().hex[:8]
                log.exception("operation %s crashed (incident %s)", job_id, incident)
                msg = f"internal error ({type(e).__name__}); incident {incident} is in the server log"
                self._finish(job_id, "FAILED", error={"code": "INTERNAL", "message": msg})

    def _run(self, job_id: str) -> None:
        job = self._jobs[job_id]
        job = self._update(
            job_id, state="RUNNING", progress={**job.progress, "phase": "loading"}, persist=True
        )
        spec = AddTaskSpec.from_dict({k: v for k, v in job.spec.items() if k not in ("dataset_id", "from_version")})
        dataset_id = job.spec["dataset_id"]
        cancel = self._cancel.setdefault(job_id, threading.Event())
        ds_rec = self.store.meta.get_dataset(dataset_id)
        if ds_rec is None or not ds_rec.complete:
            raise FailedPrecondition(
                f"the uploaded dataset of operation {job_id} is missing; upload it again"
            )
        dataset = build_dataset(
            self.store.meta.iter_examples(dataset_id), ds_rec.class_names, self.system.storage_size
        )
        ckpt = job.checkpoint
        resume = None
        if ckpt.get("state") and ckpt.get("shards"):
            resume = (ckpt["state"], self.store.shards.get(ckpt["shards"][0]))
        hooks: dict[str, Any] = dict(
            progress=lambda p: self._on_progress(job_id, p),
            cancel=cancel,
            executor=self.executor_factory() if self.executor_factory is not None else None,
            resume=resume,
            on_generation=lambda state, tensors: self._checkpoint(job_id, state, tensors),
            before_commit=lambda: self._update(
                job_id, progress={**self._jobs[job_id].progress, "phase": "committing"}
            ),
        )
        if job.kind == "improve_task":
            self._improve(job_id, spec, dataset, hooks)
            return
        learned = learn_task(self.system, spec, dataset, dataset_id=dataset_id, **hooks)
        progress = {
            **self._jobs[job_id].progress,
            "phase": "done",
            "params_added": learned.record.metrics["params_added"],
            "best_validation_accuracy": learned.record.metrics["validation_accuracy"],
            "result": f"published version {learned.record.version}",
            "task_version": learned.record.version,
        }
        if self.on_commit is not None:  # before SUCCEEDED is visible: waiters find the task serving
            self.on_commit(spec.name)
        self._finish(job_id, "SUCCEEDED", progress=progress)
        m = learned.record.metrics
        logs.event(
            log, "task_committed",
            f"task {spec.name!r} committed: validation accuracy {m['validation_accuracy']:.3f} "
            f"({m['kind']}), +{m['params_added']:,} params, {m['search_seconds']:.0f} s",
            task=spec.name, operation=job_id, validation_accuracy=m["validation_accuracy"], kind=m["kind"],
            params_added=m["params_added"], search_seconds=m["search_seconds"],
        )  # fmt: skip

    def _improve(self, job_id: str, spec: AddTaskSpec, dataset: Any, hooks: dict[str, Any]) -> None:
        improved = improve_task(self.system, spec, dataset, **hooks)
        r, rec = improved.result, improved.record
        if rec is None:
            vs, cur = r.versus_current, r.current
            why = (
                f"the new path scored {vs.trained_accuracy:.3f} vs its {vs.probe_accuracy:.3f} on {vs.size} images"
                if vs is not None
                else f"no path beat its recipe ({cur.evaluation.accuracy:.3f} on the holdout)"
                if cur is not None
                else "nothing better was found"
            )
            result = f"kept version {improved.served_version}: {why}"
            extra = {"params_added": 0, "best_validation_accuracy": cur.evaluation.accuracy if cur else 0.0}
        else:
            result = f"published version {rec.version} (was {rec.metrics.get('improved_from')})"
            extra = {
                "params_added": rec.metrics["params_added"],
                "best_validation_accuracy": rec.metrics["validation_accuracy"],
            }
            if self.on_commit is not None:  # before SUCCEEDED is visible: waiters find it serving
                self.on_commit(spec.name)
        progress = {
            **self._jobs[job_id].progress,
            **extra,
            "phase": "done",
            "result": result,
            "task_version": improved.served_version,
        }
        self._finish(job_id, "SUCCEEDED", progress=progress)
        logs.event(log, "task_improved", f"task {spec.name!r}: {result}", task=spec.name, operation=job_id,
                   version=improved.served_version, published=rec is not None)  # fmt: skip

    # ---- state changes -------------------------------------------------------------------------
    def _on_progress(self, job_id: str, p: SearchProgress) -> None:
        progress = {
            "phase": p.phase,
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
        persist = now - self._last_persist.get(job_id, 0.0) > 5.0
        if persist:
            self._last_persist[job_id] = now
        self._update(job_id, progress={**self._jobs[job_id].progress, **progress}, persist=persist)

    def _checkpoint(self, job_id: str, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        old = self._jobs[job_id].checkpoint.get("shards", [])
        digest = self.store.shards.put(tensors, metadata={"job": job_id}) if tensors else ""
        self._update(job_id, checkpoint={"state": state, "shards": [digest] if digest else []}, persist=True)
        crash_point("after_checkpoint")
        for d in old:
            if d != digest:
                self.store.release_shard(d)

    def _update(self, job_id: str, persist: bool = False, **changes: Any) -> OperationRecord:
        with self._cond:
            job = replace(self._jobs[job_id], updated_at=time.time(), **changes)
            self._jobs[job_id] = job
            self._versions[job_id] += 1
            if persist:
                with self.store.meta.write() as w:
                    w.put_operation(job)
            self._cond.notify_all()
        if self.on_progress is not None:
            self.on_progress(job)
        return job

    def _oldest_finished(self, keep: int) -> list[str]:
        done = sorted((j.updated_at, j.id) for j in self._jobs.values() if j.state in TERMINAL_STATES)
        return [i for _, i in done[: max(0, len(done) - keep)]]

    def _finish(self, job_id: str, state: str, error: dict[str, str] | None = None, **changes: Any) -> None:
        job = self._jobs[job_id]
        shards = job.checkpoint.get("shards", [])
        with self._cond:
            done = replace(
                job, state=state, error=error or {}, checkpoint={}, updated_at=time.time(), **changes
            )
            old = self._oldest_finished(keep=self.history - 1)
            with self.store.meta.write() as w:
                if state != "SUCCEEDED" and job.kind == "add_task":
                    w.delete_dataset(job.spec["dataset_id"])  # the upload dies with its operation
                w.put_operation(done)
                for o in old:  # a bounded history: the oldest finished records go
                    w.delete_operation(o)
            for o in old:
                self._jobs.pop(o, None)
                self._versions.pop(o, None)
            for d in shards:  # unreferenced now; gone before any waiter sees the final state
                self.store.release_shard(d)
            self._jobs[job_id] = done
            self._versions[job_id] += 1
            self._cond.notify_all()
        if state == "CANCELLED":
            logs.event(log, "task_cancelled", f"operation {job_id} ({job.task_name!r}) cancelled; nothing was committed",
                       task=job.task_name, operation=job_id)  # fmt: skip
        if self.on_progress is not None:
            self.on_progress(done)
