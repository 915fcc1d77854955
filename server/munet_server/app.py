"""Wiring: the service (store -> system -> operations + predictor) behind a gRPC server (munet.v1 and
the inference protocol, with health, reflection and token auth), HTTP and Prometheus metrics.

upload (AddTask) -> ingest -> store (LMDB) -> operations -> learn -> system.commit
Predict -> serve/predictor -> serve/batcher -> system.logits
Snapshot/Restore -> store/snapshot (the system is reopened after a restore)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from munet_proto.v1 import munet_pb2, munet_pb2_grpc
from munet_server.config import ServerConfig
from munet_server.errors import FailedPrecondition
from munet_server.metrics import Metrics
from munet_server.operations.manager import OperationManager
from munet_server.preflight import cannot_bind, cannot_serve
from munet_server.priority import GATE
from munet_server.rpc import inference, reflection
from munet_server.rpc.auth import ReadOnly, TokenAuth
from munet_server.rpc.inference import InferenceServicer
from munet_server.rpc.servicer import MunetServicer
from munet_server.serve.predictor import SystemRef
from munet_server.service import MunetService
from munet_server.store.records import OperationRecord

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
    """The process: the service, its gRPC server (health, reflection, auth), metrics endpoint."""

    def __init__(self, config: ServerConfig, executor_factory: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.service = MunetService(config, self.metrics, executor_factory or executor_from_config(config))
        self.service.on_tasks_changed = self.on_tasks_changed
        self.service.on_operation = self._on_progress
        self.metrics.watch_residency(lambda: self.service.system.residency.stats())
        self.metrics.watch_gate(GATE)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.server: grpc.Server | None = None
        self.servicer: MunetServicer | None = None
        self.http: Any = None  # rest.server.HttpServer when --http-port is given
        self.follower: Any = None  # replica.Follower when --follow is given
        self.port = 0
        self.http_port = 0

    @property
    def ref(self) -> SystemRef:
        return self.service.ref

    @property
    def operations(self) -> OperationManager:
        return self.service.operations

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> int:
        cfg = self.config
        limit = cfg.max_message_mb << 20
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.rpc_workers, thread_name_prefix="munet-rpc"),
            interceptors=[
                TokenAuth(cfg.admin_token, cfg.predict_token),
                *([ReadOnly(self.read_only_source())] if cfg.read_only else []),
            ],
            # Calls beyond this wait for no thread: RESOURCE_EXHAUSTED at once (a bounded queue).
            maximum_concurrent_rpcs=cfg.rpc_workers * 8,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.servicer = MunetServicer(self.service)
        munet_pb2_grpc.add_MunetServicer_to_server(self.servicer, self.server)
        self.server.add_generic_rpc_handlers((inference.handler(InferenceServicer(self.service)),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(
            self.server, (SERVICE_NAME, health.SERVICE_NAME), (munet_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR)
        )
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
                self.port = self.server.add_secure_port(address, creds)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.50 raises instead of returning 0
            self.port = 0
        if self.port == 0:
            raise FailedPrecondition(cannot_bind(address))
        if cfg.metrics_port:
            metrics_host = cfg.metrics_host or cfg.host
            try:
                self.metrics.serve(cfg.metrics_port, metrics_host)
            except OSError as e:
                self.server.stop(0)
                raise FailedPrecondition(
                    cannot_serve("metrics", metrics_host, cfg.metrics_port, e.strerror or str(e))
                ) from None
        if cfg.http_port is not None:
            self._start_http()
        if not cfg.admin_token and cfg.host not in LOOPBACK_HOSTS:
            log.warning(
                "listening on %s without an admin token: anyone who can reach it may add, delete and "
                "restore tasks; set --admin-token or MUNET_ADMIN_TOKEN",
                cfg.host,
            )
        self.service.start()
        if cfg.follow is not None:
            from munet_server.replica import Follower

            self.follower = Follower(self.service, cfg.follow, cfg.follow_interval)
            self.follower.start()  # the newest snapshot is in place before the first call
        self.server.start()
        self.on_tasks_changed([])
        s = self.service.system
        log.info("serving %d tasks (root %s, device %s); %s", len(s.tasks), s.root.config.model_name, s.device,
                 "; ".join(self.listening()))  # fmt: skip
        return self.port

    def listening(self) -> list[str]:
        """Every address the server listens on, and what it serves there."""
        cfg = self.config
        out = [f"gRPC {cfg.host}:{self.port} (munet.v1, inference protocol, health, reflection)"]
        if self.http is not None:
            out.append(f"HTTP {cfg.host}:{self.http_port} (inference protocol, /munet/v1, dashboard)")
        if cfg.metrics_port:
            out.append(f"metrics {cfg.metrics_host or cfg.host}:{cfg.metrics_port} (/metrics)")
        return out

    def stop(self, grace: float | None = None) -> bool:
        """Graceful: report NOT_SERVING, refuse new calls, finish in-flight ones, pause searches.
        False: a search is still running (see MunetService.stop)."""
        self.health.enter_graceful_shutdown()
        if self.follower is not None:
            self.follower.stop()
        if self.http is not None:
            self.http.stop()
        if self.server is not None:
            self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        return self.service.stop()

    def read_only_source(self) -> str:
        return f"following {self.config.follow}" if self.config.follow else "--read-only"

    def _start_http(self) -> None:
        from munet_server.rest.app import create_app  # FastAPI is imported only when HTTP is on
        from munet_server.rest.server import HttpServer

        cfg = self.config
        app = create_app(
            self.service, cfg.admin_token, cfg.predict_token, self.read_only_source() if cfg.read_only else ""
        )
        tls = (str(cfg.tls_cert), str(cfg.tls_key)) if cfg.tls_cert and cfg.tls_key else (None, None)
        try:
            self.http = HttpServer(app, cfg.host, cfg.http_port or 0, *tls)
        except OSError as e:
            assert self.server is not None
            self.server.stop(0)
            raise FailedPrecondition(cannot_serve("HTTP", cfg.host, cfg.http_port, e.strerror or str(e))) from None
        self.http.start()
        self.http_port = self.http.port

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_for_termination()

    # ---- state changes -------------------------------------------------------------------------
    def on_tasks_changed(self, deleted: list[str]) -> None:
        s = self.service.system
        for name in deleted:
            self.health.set(task_health_name(name), health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            self.metrics.forget_task(name)
        self.health.set("", SERVING)
        self.health.set(SERVICE_NAME, SERVING)
        for name in s.tasks:
            self.health.set(task_health_name(name), SERVING)
        for name in s.damaged:  # listed, refused with DATA_LOSS until restored or deleted
            self.health.set(task_health_name(name), NOT_SERVING)
        self.metrics.tasks.set(len(s.tasks))
        self.metrics.system_params.set(sum(c.num_params for c in s.pool.values()))

    def _on_progress(self, op: OperationRecord) -> None:
        m = self.metrics
        m.operations_active.set(self.service.operations.active())
        if op.terminal:
            m.operations.labels(op.state).inc()
            return
        p = op.progress
        m.evolution_generation.labels(op.task_name).set(p.get("generation", 0))
        m.evolution_best_accuracy.labels(op.task_name).set(
            max(0.0, float(p.get("best_validation_accuracy", 0.0)))
        )
