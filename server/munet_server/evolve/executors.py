"""Who trains a generation's candidates: this process (`LocalExecutor`) or a Ray cluster
(`ray_executor.RayExecutor`), behind one protocol. Both stop on the search's clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from munet_server.evolve.clock import Clock
from munet_server.evolve.population import Member
from munet_server.evolve.train import Batches, CandidateTrainer, TrainConfig, TrainResult
from munet_server.model.arch import Architecture
from munet_server.model.path import TaskPath


@dataclass
class Candidate:
    path: TaskPath
    parent: TaskPath
    parent_member: Member | None  # same-task parent: the bar to beat
    head_wd: float
    fit_head_first: bool  # a new head starts from a converged fit (LP-FT); an inherited one is kept
    seed: int


@dataclass
class TrainContext:
    """Everything an executor needs to train a generation's candidates."""

    arch: Architecture
    batches: Batches
    config: TrainConfig
    cancel: threading.Event | None
    clock: Clock
    root: dict[str, Any] | None = None  # RootConfig.to_dict(), for remote executors
    shared_ids: frozenset[str] = frozenset()  # committed components (shippable once, by id)


class Executor(Protocol):
    """Trains a generation's candidates; None for a candidate not started because the clock ran out."""

    def train(
        self, candidates: list[Candidate], ctx: TrainContext, report: Callable[[int, float], None]
    ) -> list[TrainResult | None]: ...


class LocalExecutor:
    """Candidates one after another in this process, sharing the search's feature cache."""

    def train(
        self, candidates: list[Candidate], ctx: TrainContext, report: Callable[[int, float], None]
    ) -> list[TrainResult | None]:
        results: list[TrainResult | None] = []
        for i, cand in enumerate(candidates):
            if ctx.clock.expired():
                results.append(None)
                continue
            trainer = CandidateTrainer(
                cand.path,
                ctx.arch,
                ctx.batches,
                ctx.config,
                seed=cand.seed,
                head_wd=cand.head_wd,
                fit_head_first=cand.fit_head_first,
                cancel=ctx.cancel,
                clock=ctx.clock,
                on_step=lambda f, i=i: report(i, f),
            )
            results.append(trainer.run())
        return results
