"""A member's recipe, retrained: its path with every draft reset to weights no training on this task's
images has touched (the committed layer it was cloned from, or fresh), then fitted on chosen images
the way the member was (a probe's head by L-BFGS; a trained path's head by L-BFGS, then the epochs
its lineage trained). What a judgement and a publication retrain; always a copy, so the population
keeps its members as they were trained."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from munet_server.evolve.clock import Clock
from munet_server.evolve.features import FeatureCache, View
from munet_server.evolve.population import Kind
from munet_server.evolve.train import (
    Batches,
    CandidateTrainer,
    TrainConfig,
    fit_probe_head,
    probe_features,
    split_path,
)
from munet_server.model.arch import Architecture
from munet_server.model.components import Component
from munet_server.model.path import TaskPath


@dataclass(frozen=True)
class Recipe:
    path: TaskPath
    kind: Kind
    head_wd: float
    epochs: int  # what a trained recipe trains (0 for a probe)


def with_draft_copies(path: TaskPath) -> TaskPath:
    """The same path with its drafts copied (frozen components stay shared)."""
    comps = [c if c.frozen else c.clone() for c in path.components]
    return TaskPath(task=path.task, hparams=copy.deepcopy(path.hparams), components=comps, parent=path.parent)


class RecipeFitter:
    def __init__(
        self,
        arch: Architecture,
        pool: dict[str, Component],
        cache: FeatureCache,
        labels: torch.Tensor,
        num_classes: int,
        views: Callable[[dict[str, Any]], list[View]],
        train_cfg: TrainConfig,
        seed: int,
        cancel: threading.Event | None,
        clock: Clock,
    ) -> None:
        self.arch, self.pool, self.cache = arch, pool, cache
        self.labels, self.num_classes, self.views = labels, num_classes, views
        self.train_cfg, self.seed, self.cancel, self.clock = train_cfg, seed, cancel, clock
        self.steps = 0

    def fit(self, recipe: Recipe, index: torch.Tensor) -> TaskPath:
        """A copy of the recipe's path fitted on the images `index` (OutOfTime if the clock runs out)."""
        path = with_draft_copies(recipe.path)
        if recipe.kind == Kind.PROBE:
            feats = probe_features(path, self.arch, self.cache, self.views(path.hparams))
            fit_probe_head(path, feats, self.labels, index, self.num_classes, recipe.head_wd)
            return path
        for c in path.trainable():
            src = self.pool.get(c.origin) if c.origin else None
            start = src.module if src is not None and src.spec == c.spec else self.arch.fresh(c.spec)
            c.module.load_state_dict(copy.deepcopy(start.state_dict()))
        data = Batches(self.cache, self.labels, self.num_classes, index, index[:0], self.views(path.hparams))
        trainer = CandidateTrainer(
            path, self.arch, data, self.train_cfg, seed=self.seed, head_wd=recipe.head_wd, fit_head_first=True,
            cancel=self.cancel, clock=self.clock, must_finish=True,
        )  # fmt: skip
        self.steps += trainer.run(epochs=max(1, recipe.epochs)).steps
        return path

    @torch.no_grad()
    def logits(self, path: TaskPath, idx: torch.Tensor) -> torch.Tensor:
        """The path's logits on the images `idx` (clean view), on the CPU."""
        split = split_path(path, self.arch)
        for c in split.drafts:
            c.module.eval()
        view = self.views(path.hparams)[0]
        x = self.cache.get(split.prefix, split.prefix_ids, view) if split.prefix else None
        out = []
        for i in range(0, len(idx), 128):
            part = idx[i : i + 128]
            h = x[part.to(x.device)].float() if x is not None else self.cache.view_input(view, part)
            for _, fn in split.suffix:
                h = fn(h)
            out.append(h.float().cpu())
        return torch.cat(out)

    def correct(self, path: TaskPath, idx: torch.Tensor) -> torch.Tensor:
        """Which of the images `idx` the path classifies right."""
        return self.logits(path, idx).argmax(1) == self.labels[idx]
