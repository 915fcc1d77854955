"""Wiring: store -> system -> jobs + predictor -> gRPC server (health, reflection, auth, metrics).

upload (AddTask) -> jobs/ingest -> store (LMDB) -> jobs/manager -> evolve/search -> system.commit
Predict -> serve/predictor -> serve/batcher -> system.logits
Snapshot/Restore -> store/snapshot (the system is reopened after a restore)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from munet_proto.v1 import munet_pb2, munet_pb2_grpc
from munet_server.config import ServerConfig
from munet_server.errors import FailedPrecondition
from munet_server.jobs.manager import JobManager
from munet_server.metrics import Metrics
from munet_server.rpc.auth import TokenAuth
from munet_server.rpc.servicer import MunetServicer
from munet_server.serve.predictor import Predictor, SystemRef
from munet_server.store.records import JobRecord
from munet_server.store.store import Store
from munet_server.system import MunetSystem

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SERVICE_NAME = munet_pb2.DESCRIPTOR.services_by_name["Munet"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def executor_from_config(config: ServerConfig) -> Callable[[], Any] | None:
    if config.executor == "local":
        return None
    from munet_server.evolve.ray_executor import RayExecutor  # optional extra: munet-server[ray]

    executor = RayExecutor(
        address=config.ray_address or None, num_gpus_per_candidate=config.ray_gpus_per_candidate
    )
    return lambda: executor


def task_health_name(task: str) -> str:
    """Per-task health: check service `munet.v1.Munet/<task>`."""
    return f"{SERVICE_NAME}/{task}"


class MunetApp:
    def __init__(self, config: ServerConfig, executor_factory: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.store = Store(config.store)
        try:
            root = config.root if config.root_explicit or self.store.meta.get_system() is None else None
            self.ref = SystemRef(MunetSystem.open(self.store, root, config.device))
        except BaseException:
            self.store.close()
            raise
        self.executor_factory = executor_factory or executor_from_config(config)
        self.jobs = self._make_jobs()
        self.predictor = Predictor(
            self.ref,
            config.max_batch,
            config.batch_wait_ms,
            config.max_predict_images,
            config.predict_threads,
            on_pass=lambda tasks: self.metrics.predict_passes.labels("1" if tasks == 1 else "2+").inc(),
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._restore_lock = threading.Lock()
        self.server: grpc.Server | None = None
        self.port = 0

    def _make_jobs(self) -> JobManager:
        return JobManager(
            self.ref.system,
            max_pending=self.config.max_pending_operations,
            on_commit=lambda task: self.on_tasks_changed(),
            on_progress=self._on_progress,
            executor_factory=self.executor_factory,
        )

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> int:
        cfg = self.config
        limit = cfg.max_message_mb << 20
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.rpc_workers, thread_name_prefix="munet-rpc"),
            interceptors=[TokenAuth(cfg.admin_token, cfg.predict_token)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        munet_pb2_grpc.add_MunetServicer_to_server(MunetServicer(self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise FailedPrecondition(f"could not bind {address}; is the port in use?")
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.host)
        if not cfg.admin_token and cfg.host not in LOOPBACK_HOSTS:
            log.warning(
                "listening on %s without an admin token: anyone who can reach it may add, delete and "
                "restore tasks; set --admin-token or MUNET_ADMIN_TOKEN",
                cfg.host,
            )
        self.jobs.start(resume=cfg.resume_operations)
        self.server.start()
        self.on_tasks_changed()
        log.info(
            "serving %d tasks on %s:%d (root %s, device %s)",
            len(self.ref.system.tasks),
            cfg.host,
            self.port,
            self.ref.system.root.config.model_name,
            self.ref.system.device,
        )
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Graceful: report NOT_SERVING, refuse new calls, finish in-flight ones, pause searches."""
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.jobs.stop()
        self.predictor.stop()
        self.store.close()

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()

    # ---- state changes -------------------------------------------------------------------------
    def on_tasks_changed(self, deleted: list[str] | tuple[str, ...] = ()) -> None:
        s = self.ref.system
        for name in deleted:
            self.health.set(task_health_name(name), health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        self.health.set("", SERVING)
        self.health.set(SERVICE_NAME, SERVING)
        for name in s.tasks:
            self.health.set(task_health_name(name), SERVING)
        self.metrics.tasks.set(len(s.tasks))
        self.metrics.system_params.set(sum(c.num_params for c in s.pool.values()))

    def _on_progress(self, job: JobRecord) -> None:
        m = self.metrics
        m.operations_active.set(self.jobs.active())
        if job.terminal:
            m.operations.labels(job.state).inc()
            return
        p = job.progress
        m.evolution_generation.labels(job.task_name).set(p.get("generation", 0))
        m.evolution_best_accuracy.labels(job.task_name).set(
            max(0.0, float(p.get("best_validation_accuracy", 0.0)))
        )

    def restore(self, do_restore: Callable[[Store], dict[str, Any]]) -> dict[str, Any]:
        """Swap in a restored store generation; refused while an operation is queued or running."""
        with self._restore_lock:
            if self.jobs.active():
                raise FailedPrecondition(
                    f"{self.jobs.active()} operations are queued or running; wait for them or cancel them "
                    "before a restore"
                )
            old_tasks = set(self.ref.system.tasks)
            self.jobs.stop()
            try:
                manifest = do_restore(self.store)  # verified before the switch; on error nothing changed
            finally:
                self.ref.system = MunetSystem.open(self.store, None, self.config.device)
                self.jobs = self._make_jobs()
                self.jobs.start(resume=False)
            self.on_tasks_changed(deleted=sorted(old_tasks - set(self.ref.system.tasks)))
            return manifest
