"""Prometheus metrics (served on --metrics-port when set). Labels stay bounded: RPC method, task name
and version (a deleted task's or version's series are dropped)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("munet_rpc_requests", "RPCs handled", ["method", "code"], registry=r)
        self.rpc_latency = Histogram(
            "munet_rpc_latency_seconds", "RPC latency", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.predict_latency = Histogram(
            "munet_predict_latency_seconds",
            "Predict latency per task and served version, from every door (gRPC, HTTP, inference protocol)",
            ["task", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_stage = Histogram(
            "munet_predict_stage_seconds",
            "Where Predict's time goes: decode (RPC thread), queue (waiting for the batcher), forward",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_images = Counter(
            "munet_predict_images", "Images predicted per task and served version", ["task", "version"], registry=r
        )
        self._versions: dict[str, set[str]] = {}  # the versions each task's predict series hold
        self.predict_passes = Counter(
            "munet_predict_passes",
            "Forward passes run by the Predict batcher, by how many tasks shared the pass",
            ["tasks"],  # "1" or "2+"
            registry=r,
        )
        self.operations = Counter("munet_operations", "Operations by final state", ["state"], registry=r)
        self.operations_active = Gauge("munet_operations_active", "Queued or running operations", registry=r)
        self.evolution_generation = Gauge(
            "munet_evolution_generation", "Generations done by the running search", ["task"], registry=r
        )
        self.evolution_best_accuracy = Gauge(
            "munet_evolution_best_validation_accuracy",
            "Best validation accuracy so far",
            ["task"],
            registry=r,
        )
        self.tasks = Gauge("munet_tasks", "Committed tasks", registry=r)
        self.system_params = Gauge("munet_system_params", "Parameters of all distinct components", registry=r)

    def watch_residency(self, stats: Callable[[], Any]) -> None:
        """Report the residency (residency.ResidencyStats) of whatever system `stats` reads now."""
        self.registry.register(_ResidencyCollector(stats))

    def watch_gate(self, gate: Any) -> None:
        """How often and how long searches paused for Predict (priority.ServingGate)."""
        self.registry.register(_GateCollector(gate))

    def observe_predict(self, task: str, version: int, images: int, seconds: float) -> None:
        v = str(version)
        self._versions.setdefault(task, set()).add(v)
        self.predict_latency.labels(task, v).observe(seconds)
        self.predict_images.labels(task, v).inc(images)

    def forget_task(self, task: str, version: int | None = None) -> None:
        """Drop a deleted task's (or version's) series, so scrapes do not report it (or grow) forever."""
        seen = self._versions.get(task, set())
        for v in sorted(seen if version is None else seen & {str(version)}):
            for family in (self.predict_latency, self.predict_images):
                with contextlib.suppress(KeyError):
                    family.remove(task, v)
            seen.discard(v)
        if version is None:
            self._versions.pop(task, None)
            for family in (self.evolution_generation, self.evolution_best_accuracy):
                with contextlib.suppress(KeyError):
                    family.remove(task)

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class _ResidencyCollector(Collector):
    """Read at scrape time: the system behind the server changes on restore."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        s = self.stats()
        yield GaugeMetricFamily("munet_resident_components", "Committed layers in memory (root's not counted)",
                                value=s.resident)  # fmt: skip
        yield GaugeMetricFamily("munet_resident_bytes", "Bytes of the committed layers in memory", value=s.resident_bytes)
        yield GaugeMetricFamily("munet_evicted_components", "Committed layers on disk only", value=s.evicted)
        yield GaugeMetricFamily("munet_resident_max_bytes", "--max-resident-mb in bytes (0: no bound)", value=s.max_bytes)
        yield CounterMetricFamily("munet_layer_loads", "Layers brought back from disk", value=s.loads)
        yield CounterMetricFamily("munet_layer_evictions", "Layers sent back to disk", value=s.evictions)
        yield CounterMetricFamily("munet_layer_load_seconds", "Time spent bringing layers back", value=s.load_seconds)


class _GateCollector(Collector):
    def __init__(self, gate: Any) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily("munet_training_yields", "Training steps that paused for Predict", value=self.gate.yields)
        yield CounterMetricFamily("munet_training_yield_seconds", "Time searches paused for Predict",
                                  value=self.gate.yielded_seconds)  # fmt: skip
        yield CounterMetricFamily("munet_training_narrow_steps", "Training steps run on one CPU thread beside Predict",
                                  value=self.gate.narrow_steps)  # fmt: skip
