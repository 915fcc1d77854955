"""What the server can be asked to do, independent of the transport (the gRPC servicer converts).

One object owns the live state: the store, the system (replaced by a restore), the operations and the
Predict batcher. Uploads and restores exclude each other: a restore is refused while an upload
streams or an operation is queued or running, and an upload is refused while a restore switches the
system, so no acknowledged example is ever lost to a restore. A restore receives its snapshot before
it takes any lock, so a slow or stalled sender holds up nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from munet_server import logs
from munet_server.config import ServerConfig
from munet_server.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from munet_server.ingest.upload import DatasetWriter
from munet_server.metrics import Metrics
from munet_server.operations.improver import IdleImprover
from munet_server.operations.manager import OperationManager
from munet_server.priority import GATE
from munet_server.serve.batcher import OnAbandon
from munet_server.serve.export import Piece, export_archive, export_task
from munet_server.serve.predictor import LabelScore, Predictor, RawPixels, SystemRef, ranked
from munet_server.spec import AddTaskSpec
from munet_server.store import snapshot
from munet_server.store.records import OperationRecord, Origin
from munet_server.store.snapshot import publish_staged, staged_restore
from munet_server.store.store import Store
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

log = logging.getLogger(__name__)
TasksChanged = Callable[[list[str]], None]  # called with the names of deleted tasks


@dataclass(frozen=True)
class Prediction:
    """One request's answer: every class's probability, and the version of the task that gave it."""

    task: str
    version: int
    class_names: list[str]
    probabilities: torch.Tensor  # [images, classes], float32

    def ranked(self, top_k: int) -> list[list[LabelScore]]:
        """The top_k most probable classes of each image (0: one)."""
        check_top_k(top_k, len(self.class_names))
        return ranked(self.probabilities, self.class_names, top_k or 1)


def check_top_k(top_k: int, classes: int) -> None:
    if not 1 <= (top_k or 1) <= classes:
        raise InvalidArgument(f"top_k={top_k} must be between 1 and the task's {classes} classes")


@dataclass(frozen=True)
class Deleted:
    freed_components: list[str]
    params_freed: int


class MunetService:
    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        executor_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        GATE.max_wait = config.training_yield_ms / 1000.0  # the process's one gate (priority.py)
        self.store = Store(config.store)
        try:
            root = config.root if config.root_explicit or self.store.meta.get_system() is None else None
            self.ref = SystemRef(MunetSystem.open(self.store, root, config.device, config.max_resident_mb))
        except BaseException:
            self.store.close()
            raise
        self.executor_factory = executor_factory
        self.on_tasks_changed: TasksChanged = lambda deleted: None
        self.on_operation: Callable[[OperationRecord], None] = lambda op: None
        self.operations = self._make_operations()
        self.predictor = Predictor(
            self.ref,
            config.max_batch,
            config.batch_wait_ms,
            config.max_predict_images,
            config.predict_threads,
            on_pass=lambda tasks: metrics.predict_passes.labels("1" if tasks == 1 else "2+").inc(),
            max_queued=config.max_queued_images,
            observe=lambda stage, s: metrics.predict_stage.labels(stage).observe(s),
        )
        self._state = threading.Lock()  # guards the two counters below
        self._uploads = 0
        self._restoring = False
        self._restore_lock = threading.Lock()  # one restore at a time
        self._serving = False
        self.improver: IdleImprover | None = None

    @property
    def system(self) -> MunetSystem:  # the live one: a restore replaces it
        return self.ref.system

    def predict(
        self,
        task_ref: str,
        encoded: list[bytes],
        raw: list[RawPixels],
        timeout: float | None = None,
        on_abandon: OnAbandon | None = None,
        top_k: int = 1,
    ) -> Prediction:
        """Predict for every door (gRPC Predict, HTTP, the inference protocol); `task_ref` is "task"
        (the served version) or "task@N". `top_k`: the most the caller will rank, checked before any
        image is decoded."""
        t0 = time.perf_counter()
        record = self.system.entry(task_ref).record
        check_top_k(top_k, len(record.class_names))
        probabilities = self.predictor.probabilities(task_ref, encoded, raw, timeout, on_abandon)
        self.metrics.observe_predict(record.name, record.version, len(probabilities), time.perf_counter() - t0)
        return Prediction(record.name, record.version, record.class_names, probabilities)

    def _make_operations(self) -> OperationManager:
        return OperationManager(
            self.ref.system,
            max_pending=self.config.max_pending_operations,
            history=self.config.operation_history,
            on_commit=lambda task: self.on_tasks_changed([]),
            on_progress=lambda op: self.on_operation(op),
            executor_factory=self.executor_factory,
            workers=self.config.searches_at_once,
        )

    def start(self) -> None:
        self.operations.start(resume=self.config.resume_operations)
        cfg = self.config
        if cfg.idle_improvement and not cfg.read_only:
            budget = replace(cfg.default_budget, seconds=cfg.idle_round_seconds)
            self.improver = IdleImprover(lambda: self.operations, lambda: self.system, budget,
                                         quiet_seconds=cfg.idle_quiet_seconds, predict_quiet=GATE.quiet_for,
                                         parallel=cfg.searches_at_once)  # fmt: skip
            self.improver.start()
        self._serving = True

    def ready(self) -> bool:
        """Serving requests: started and not shutting down."""
        return self._serving

    def stop(self) -> bool:
        """Pause the search, fail queued Predict work, close the store. False: the search did not
        pause in time, so the store stays open under it (it is crash-safe: the caller may exit hard)."""
        self._serving = False
        if self.improver is not None:
            self.improver.stop()
        paused = self.operations.stop(self.config.grace_seconds)
        self.predictor.stop()
        if not paused:
            log.warning("the search did not pause within %.0f s; leaving the store to crash recovery",
                        self.config.grace_seconds)  # fmt: skip
            return False
        self.store.close()
        return True

    def improvement_queue(self) -> dict[str, Any]:
        """What idle improvement will do: on or off, the tasks of the rounds running, the tasks next."""
        cfg, imp = self.config, self.improver
        running = [j.task_name for j in self.operations.list() if j.spec.get("origin") == Origin.IDLE.value and not j.terminal]
        return {"enabled": imp is not None, "running": running, "next": imp.queue() if imp else [],
                "round_seconds": cfg.idle_round_seconds, "quiet_seconds": cfg.idle_quiet_seconds}  # fmt: skip

    # ---- AddTask -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _upload(self) -> Iterator[None]:
        with self._state:
            if self._restoring:
                raise FailedPrecondition(
                    "a restore is replacing the system right now; add the task again when it has finished"
                )
            self._uploads += 1
        try:
            yield
        finally:
            with self._state:
                self._uploads -= 1

    def add_task(
        self, spec: AddTaskSpec, examples: Iterable[tuple[bytes, int]], alive: Callable[[], bool]
    ) -> OperationRecord:
        """Store an upload example by example, then queue its operation; a failed or abandoned
        upload leaves nothing behind."""
        with self._upload():
            self.operations.check_can_submit(spec.name)  # duplicate names and a full queue fail first
            writer = DatasetWriter(
                self.store, spec.name, spec.class_names, self.config.upload, self.system.storage_size
            )
            try:
                for image, label in examples:
                    writer.add(image, label)
                if not alive():
                    raise Cancelled("the client went away during the upload")
                dataset = writer.finish()
                op = self.operations.submit(spec, dataset)
            except BaseException:
                writer.abort()
                raise
        log.info("AddTask %s: %d examples stored; operation %s queued", spec.name, dataset.num_examples, op.id)
        return op

    # ---- a task's later life: ImproveTask, versions ---------------------------------------------
    def improve_task(self, name: str, budget: dict[str, Any], seed: int | None) -> OperationRecord:
        """Queue muNet's next iteration of `name`, with its own class names and scale factor."""
        if "@" in name:
            raise InvalidArgument(f"{name!r}: ImproveTask takes a task name, not a pinned version")
        rec = self.system.entry(name).record
        spec = AddTaskSpec(
            name=name,
            class_names=rec.class_names,
            budget=replace(self.config.default_budget, **budget),
            scale_factor=TaskMetrics.of(rec).scale_factor,
            seed=rec.version if seed is None else seed,
        )
        op = self.operations.submit_improve(spec)
        log.info("ImproveTask %s (serving version %d): operation %s queued", name, rec.version, op.id)
        return op

    def set_task_version(self, name: str, version: int) -> None:
        rec = self.system.set_version(name, version)
        self.on_tasks_changed([])
        logs.event(log, "task_version_set", f"task {name!r} now serves version {rec.version}",
                   task=name, version=rec.version)  # fmt: skip

    def delete_task_version(self, name: str, version: int) -> Deleted:
        sizes = {cid: c.num_params for cid, c in self.system.pool.items()}
        freed = self.system.delete_version(name, version)
        logs.event(log, "task_version_deleted", f"task {name!r}: version {version} deleted; "
                   f"{len(freed)} components freed", task=name, version=version)  # fmt: skip
        self.metrics.forget_task(name, version)
        return Deleted(freed, sum(sizes.get(c, 0) for c in freed))

    # ---- tasks ---------------------------------------------------------------------------------
    def delete_task(self, name: str) -> Deleted:
        s = self.system
        if name not in s.tasks and name not in s.damaged:
            raise NotFound(f"task {name!r} does not exist")
        self.operations.cancel_task(name)  # a search still improving it stops before it publishes again
        sizes = {cid: c.num_params for cid, c in s.pool.items()}
        freed = s.delete_task(name)
        self.on_tasks_changed([name])
        logs.event(log, "task_deleted", f"task {name!r} deleted; {len(freed)} components freed",
                   task=name, freed_components=len(freed))  # fmt: skip
        return Deleted(freed, sum(sizes.get(c, 0) for c in freed))

    def export_task(self, name: str, chunk_size: int = 1 << 20) -> Iterator[Piece]:
        return export_task(self.system, name, chunk_size)

    def export_archive(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return export_archive(self.system, name, chunk_size)

    # ---- snapshot / restore --------------------------------------------------------------------
    def server_path(self, raw: str, what: str = "snapshot") -> Path:
        """A server-side directory a client named, confined to --snapshot-root when that is set."""
        if not raw:
            raise InvalidArgument(f"give the server-side {what} directory")
        if "\x00" in raw:
            raise InvalidArgument(f"the {what} path contains a NUL byte")
        p = Path(raw).expanduser().resolve()
        root = self.config.snapshot_root
        if root is not None and not p.is_relative_to(root.resolve()):
            raise PermissionDenied(f"{what} directories must be inside {root} (the server's --snapshot-root)")
        return p

    def snapshot_to(self, dest: Path) -> dict[str, Any]:
        return snapshot.snapshot_to_dir(self.store, dest)

    def stream_snapshot(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return snapshot.iter_archive(self.store, chunk_size)

    def restore_from_dir(self, src: Path) -> dict[str, Any]:
        with staged_restore(self.store, src_dir=src) as staging:
            return self._switch(staging)

    def restore_from_stream(self, chunks: Iterable[bytes]) -> dict[str, Any]:
        limit = self.config.upload.max_bytes * 4  # a snapshot may hold several uploads' worth of weights
        with staged_restore(self.store, chunks=chunks, max_bytes=limit) as staging:
            return self._switch(staging)

    def _switch(self, staging: Path) -> dict[str, Any]:
        """Phase 2 of a restore: refuse while a client's work is in flight (idle rounds give way),
        then verify, switch and reopen."""
        with self._restore_lock, self._idle_rounds_held():
            self.operations.yield_idle_rounds()
            self.operations.wait_idle_rounds(self.config.grace_seconds)
            with self._state:
                active = self.operations.active()
                if self._uploads or active:
                    raise FailedPrecondition(
                        f"{self._uploads} uploads are streaming and {active} operations are queued or "
                        "running; wait for them (or cancel them) before a restore"
                    )
                self._restoring = True
            try:
                old_tasks = set(self.system.tasks) | set(self.system.damaged)
                self.operations.stop()
                try:
                    manifest = publish_staged(self.store, staging)  # verified first: on error nothing changed
                finally:
                    self.ref.system = MunetSystem.open(
                        self.store, None, self.config.device, self.config.max_resident_mb
                    )
                    self.operations = self._make_operations()
                    self.operations.start(resume=False)
                now = set(self.system.tasks) | set(self.system.damaged)
                self.on_tasks_changed(sorted(old_tasks - now))
                return manifest
            finally:
                with self._state:
                    self._restoring = False

    @contextlib.contextmanager
    def _idle_rounds_held(self) -> Iterator[None]:
        """No idle round starts meanwhile (a restore replaces the system under it)."""
        if self.improver is not None:
            self.improver.held.set()
        try:
            yield
        finally:
            if self.improver is not None:
                self.improver.held.clear()
