"""Baselines for the benchmark, built from the same components, training loop and score.

Three are search policies (see `mutations.POLICIES`) run through `EvolutionSearch` with the same
budget as muNet and no cross-task seeds: `finetune` (every component cloned), `linear_probe` (head
only), `adapters` (an adapter before every block; adapters, norm and head train). The fourth,
plain sequential fine-tuning, is different in kind: one shared body is trained task after task,
so earlier tasks' heads sit on top of a body that keeps moving — the forgetting muNet avoids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from munet_server.data.dataset import ImageDataset
from munet_server.evolve.mutations import MutationConfig
from munet_server.evolve.search import SearchConfig
from munet_server.evolve.train import TrainConfig, TrainResult, Validation, train_candidate
from munet_server.model.arch import Architecture
from munet_server.model.components import Component
from munet_server.model.path import Path


def policy_config(base: SearchConfig, policy: str) -> SearchConfig:
    """The same budget and seed as `base`, with a baseline policy and root-only parents."""
    return replace(base, mutation=replace(base.mutation, policy=policy), cross_task=False)


@dataclass
class SequentialTask:
    name: str
    train: ImageDataset
    val: ImageDataset
    num_classes: int


class SequentialFinetune:
    """One body (a trainable copy of the root) fine-tuned on each task in turn, a new head per task."""

    def __init__(self, arch: Architecture, hparams: dict[str, Any], device: torch.device) -> None:
        self.arch = arch
        self.hp = dict(hparams)
        self.device = device
        self.body = [Component(s, arch.fresh(s).to(device), frozen=False) for s in arch.root_specs()]
        self.paths: dict[str, Path] = {}

    def add_task(self, task: SequentialTask, cfg: TrainConfig, seed: int) -> TrainResult:
        spec = self.arch.layout(self.hp, task.num_classes)[-1]
        head = Component(spec, self.arch.fresh(spec).to(self.device), frozen=False)
        path = Path(task=task.name, hparams=self.hp, components=[*self.body, head])
        model = path.build(self.arch)
        result = train_candidate(
            path,
            model,
            task.train,
            Validation(task.val, cfg.validation_examples),
            cfg,
            self.device,
            seed,
            score_of=lambda q: q,
            best_score=-math.inf,
        )
        head.module.requires_grad_(False)  # this task's head is done; the body keeps training
        path.quality = result.quality
        self.paths[task.name] = path
        return result

    def model(self, task: str) -> torch.nn.Module:
        return self.paths[task].build(self.arch).eval()

    def total_params(self) -> int:
        heads = sum(p.components[-1].num_params for p in self.paths.values())
        return sum(c.num_params for c in self.body) + heads


__all__ = ["MutationConfig", "SequentialFinetune", "SequentialTask", "policy_config"]
