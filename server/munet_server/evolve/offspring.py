"""The children a generation trains: muNet's actions, structured, from the best probe (the first
generation), then muNet's own draws (every later one)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from munet_server.evolve.executors import Candidate
from munet_server.evolve.mutations import FirstGeneration, Mutator
from munet_server.evolve.population import Member, Population
from munet_server.evolve.train import split_path
from munet_server.model.arch import Architecture
from munet_server.model.path import TaskPath

FINETUNE_LRS = (0.01, 0.003, 0.03, 0.001)  # a fine-tuning baseline's own learning-rate sweep


@dataclass(frozen=True)
class Brood:
    """What every child of a generation shares."""

    task: str
    num_classes: int
    generation: int
    seed: int  # one data order per generation

    def candidate(self, child: TaskPath, parent: TaskPath, member: Member | None) -> Candidate:
        same_task = member is not None and parent.task == self.task
        if same_task:
            member.offsprings += 1
        parent_head = parent.component("head")
        fresh_head = not same_task or parent_head is None or parent_head.spec != child.components[-1].spec
        head_wd = float(child.hparams.get("head_wd", member.head_wd if member else 1e-3))
        child.hparams["head_wd"] = head_wd
        return Candidate(
            path=child,
            parent=parent,
            parent_member=member if same_task else None,
            head_wd=head_wd,
            fit_head_first=fresh_head,
            seed=(self.seed * 1_000_003 + self.generation) & 0x7FFFFFFF,
        )


def first_generation(brood: Brood, base: Member, mutator: Mutator, kind: FirstGeneration, limit: int) -> list[Candidate]:
    """muNet's actions from the best probe, as plans: clone the top blocks, insert an adapter before
    every block, clone the last block, fine-tune the final norm alone (at μ = 0.1 a contiguous suffix
    of clones is practically never drawn in a short budget). A baseline policy sweeps its own
    learning rates instead."""
    arch, n = mutator.arch, mutator.arch.num_blocks
    floor = min(mutator.cfg.clone_floor, n - 1)
    plans: list[tuple[dict[str, Any], tuple[str, ...]]] = []  # (hparam changes, extra clones)
    if kind == FirstGeneration.STRUCTURED:
        top = [f"block_{i}" for i in range(n - 1, floor - 1, -1)]
        half = max(2, (n - floor) // 4)
        plans = [({}, tuple(top[:half])), ({"adapters": list(range(floor, n))}, ()), ({}, tuple(top[:1])), ({}, ())]
    elif kind in (FirstGeneration.FINETUNE, FirstGeneration.ADAPTERS):
        plans = [({"opt_lr": lr}, ()) for lr in FINETUNE_LRS]
    cands = []
    for changes, clones in plans[:limit]:
        hp = mutator.fix_architecture({**copy.deepcopy(base.path.hparams), **changes})
        child = mutator.make_child(base.path, brood.task, brood.num_classes, hp, True, clone=clones)
        cands.append(brood.candidate(child, base.path, base))
    return shallow_first(cands, arch)


def evolved_generation(
    brood: Brood, population: Population, seeds: list[TaskPath], mutator: Mutator, rng: random.Random, limit: int
) -> list[Candidate]:
    """muNet's generation: data hyperparameters sampled once from the best member's, then each child
    from a drawn parent, its hyperparameters and layers mutated; a child identical to a sibling is
    redrawn."""
    best = population.best()
    assert best is not None
    ds = mutator.sample_data_hparams(best.path.hparams)
    cands: list[Candidate] = []
    seen: set[str] = set()
    for _ in range(limit * 5):
        if len(cands) == limit:
            break
        parent, member = population.draw_parent(rng, seeds)
        hp = mutator.mutate_hparams(parent.hparams, ds)
        hp.setdefault("head_wd", best.head_wd)
        child = mutator.make_child(parent, brood.task, brood.num_classes, hp, True)
        sig = _signature(parent, child)
        if not child.trainable() or sig in seen:
            continue
        seen.add(sig)
        cands.append(brood.candidate(child, parent, member))
    return shallow_first(cands, mutator.arch)


def shallow_first(cands: list[Candidate], arch: Architecture) -> list[Candidate]:
    """Shallow cuts first: a deeper prefix then continues from a cached shallower one."""
    return sorted(cands, key=lambda c: len(split_path(c.path, arch).prefix))


def head_only(arch: Architecture) -> Callable[[Candidate], bool]:
    return lambda c: split_path(c.path, arch).head_only


def _signature(parent: TaskPath, child: TaskPath) -> str:
    """Two siblings with this in common would train identically (same data order, same start)."""
    parts = [f"{c.spec.name}:{'draft' if not c.frozen else c.id}" for c in child.components]
    return f"{id(parent)}|{'|'.join(parts)}|{json.dumps(child.hparams, sort_keys=True, default=str)}"
