"""A trained path's recipe: the training runs of its lineage, and their replay on other images.

A muNet child starts from its parent's trained drafts and trains its own epochs with its own
hyperparameters, so a trained path is the end of a chain of runs, one per same-task ancestor, each
with its own layout, learning-rate schedule and head. Confirmation folds, the refit on every image
and a later ImproveTask retrain a path from weights no training on this task's images touched;
they replay that chain stage by stage. Retraining the lineage's epochs as one run with the child's
hyperparameters did not reproduce the child (bench/RESULTS.md: mnist40's 90 s winner, better than
the probe on the holdout, scored 72.9 % against its 94.3 % on the folds).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from munet_server.evolve.train import Batches, CandidateTrainer, TrainConfig, fit_probe_head, probe_features
from munet_server.model.arch import Architecture
from munet_server.model.components import Component, ComponentSpec
from munet_server.model.path import TaskPath


class RecipeUnavailable(Exception):
    """A stage names a frozen component that no longer exists: the recipe cannot be replayed."""


@dataclass(frozen=True)
class Slot:
    """One component of a stage's path: frozen (its id) or a draft (where it was cloned from)."""

    spec: ComponentSpec
    id: str = ""  # frozen: the component's id
    origin: str = ""  # draft: the committed component it was cloned from ("": freshly initialised)
    draft: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "id": self.id, "origin": self.origin, "draft": self.draft}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Slot:
        return cls(ComponentSpec.from_dict(d["spec"]), str(d["id"]), str(d["origin"]), bool(d["draft"]))


@dataclass(frozen=True)
class Stage:
    """One training run of the lineage: a candidate's layout, hyperparameters and the epochs it kept."""

    slots: tuple[Slot, ...]
    hparams: dict[str, Any]
    epochs: int
    head_wd: float
    fresh_head: bool  # its head was fitted by L-BFGS first (LP-FT); else kept from the stage before
    seed: int  # its data order: replayed on the same images, the stage trains the same weights
    schedule: int  # the epochs its learning-rate schedule spans (TrainConfig.epochs of its search)

    @classmethod
    def of(cls, path: TaskPath, epochs: int, head_wd: float, fresh_head: bool, seed: int, schedule: int) -> Stage:
        slots = tuple(
            Slot(c.spec, origin=c.origin, draft=True) if not c.frozen else Slot(c.spec, id=c.id)
            for c in path.components
        )
        hp = copy.deepcopy(path.hparams)
        return cls(slots, hp, int(epochs), float(head_wd), bool(fresh_head), int(seed), int(schedule))

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.slots if s.spec.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "slots": [s.to_dict() for s in self.slots],
            "hparams": self.hparams,
            "epochs": self.epochs,
            "head_wd": self.head_wd,
            "fresh_head": self.fresh_head,
            "seed": self.seed,
            "schedule": self.schedule,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stage:
        return cls(
            tuple(Slot.from_dict(s) for s in d["slots"]),
            dict(d["hparams"]),
            int(d["epochs"]),
            float(d["head_wd"]),
            bool(d["fresh_head"]),
            int(d["seed"]),
            int(d["schedule"]),
        )


Recipe = tuple[Stage, ...]


def recipe_epochs(recipe: Recipe) -> int:
    return sum(s.epochs for s in recipe)


def replayable(recipe: Recipe, pool: Mapping[str, Component]) -> bool:
    """Whether every frozen component the recipe's earlier stages ran is still there (the last
    stage runs on the path itself)."""
    return all(
        s.draft or s.id in pool or s.spec.kind == "posembed" for stage in recipe[:-1] for s in stage.slots
    )


def replay(
    recipe: Recipe,
    path: TaskPath,
    arch: Architecture,
    pool: Mapping[str, Component],
    batches: Callable[[dict[str, Any]], Batches],
    cfg: TrainConfig,
    *,
    device: torch.device,
    cancel: threading.Event | None = None,
    stop_at: float | None = None,
) -> int:
    """Train `path`'s drafts in place by the recipe whose last stage is `path`: every stage from
    where muNet's cloning would have started it (the same-named draft of the nearest earlier stage
    that holds the slot at that shape, else the committed component it was cloned from, else a
    fresh one), for its epochs with its hyperparameters. Returns the steps taken."""
    trained: list[dict[str, dict[str, torch.Tensor]]] = []  # per stage: draft name -> trained state
    steps = 0
    for i, stage in enumerate(recipe):
        last = i == len(recipe) - 1
        run_path = path if last else _stage_path(stage, path.task, arch, pool, device)
        for c in run_path.trainable():
            c.module.load_state_dict(_start(recipe, trained, i, c, arch, pool))
        data = batches(stage.hparams)
        if stage.epochs == 0:  # a probe: its head fitted by L-BFGS on the frozen features
            feats = probe_features(run_path, arch, data.cache, data.views)
            fit_probe_head(run_path, feats, data.labels, data.train, data.num_classes, stage.head_wd)
        else:
            trainer = CandidateTrainer(
                run_path,
                arch,
                data,
                replace(cfg, epochs=stage.schedule),
                seed=stage.seed,
                head_wd=stage.head_wd,
                fit_head_first=i == 0 or stage.fresh_head,
                cancel=cancel,
                stop_at=stop_at,
            )
            steps += trainer.run(epochs=stage.epochs).steps
        if not last:
            trained.append({c.spec.name: copy.deepcopy(c.module.state_dict()) for c in run_path.trainable()})
    return steps


def _start(
    recipe: Recipe,
    trained: list[dict[str, dict[str, torch.Tensor]]],
    i: int,
    c: Component,
    arch: Architecture,
    pool: Mapping[str, Component],
) -> dict[str, torch.Tensor]:
    """The weights stage i's draft `c` started from (as Mutator.make_child inherits)."""
    for j in range(i - 1, -1, -1):
        s = recipe[j].slot(c.spec.name)
        if s is not None and s.spec == c.spec:
            if s.draft:
                return copy.deepcopy(trained[j][c.spec.name])
            break  # cloned from that stage's frozen component: its origin
    src = pool.get(c.origin) if c.origin else None
    start = src.module if src is not None and src.spec == c.spec else arch.fresh(c.spec)
    return copy.deepcopy(start.state_dict())


def _stage_path(
    stage: Stage, task: str, arch: Architecture, pool: Mapping[str, Component], device: torch.device
) -> TaskPath:
    comps = []
    for s in stage.slots:
        if s.draft:
            module = arch.fresh(s.spec).to(device).requires_grad_(True)  # a root layer's copy is frozen
            comps.append(Component(s.spec, module, frozen=False, origin=s.origin))
        elif s.id in pool:
            comps.append(pool[s.id])
        elif s.spec.kind == "posembed":  # resampled from the root's for an image size, never stored
            module = arch.fresh(s.spec).to(device).requires_grad_(False).eval()
            comps.append(Component(s.spec, module, frozen=True, id=s.id))
        else:
            raise RecipeUnavailable(f"{task}: a stage of its recipe uses component {s.id}, which no longer exists")
    return TaskPath(task=task, hparams=copy.deepcopy(stage.hparams), components=comps)
