"""A task's population: the paths a search has made, what it knows of each, and muNet's rules on them
(parents drawn best-first with probability 0.5^offsprings, a child kept only if it beats its
same-task parent)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from munet_server.evolve.heads import Evaluation
from munet_server.model.path import TaskPath


class Kind(str, Enum):
    PROBE = "probe"  # the path's head fitted to convergence (L-BFGS) on frozen features
    TRAINED = "trained"  # cloned layers, adapters and the head trained by SGD


@dataclass
class Member:
    """A path of this task's population. `id` is its place in the population (stable: members are
    never removed); `parent` the same-task member it was made from."""

    id: int
    kind: Kind
    evaluation: Evaluation  # on the holdout: what candidates are compared on
    score: float  # the evaluation's accuracy discounted by the parameters the path adds
    head_wd: float
    origin: str  # "root", "task:<name>", "self:<member id>" or "version:<n>"
    parent: int | None = None
    best_epoch: int = 0  # trained: the epoch its weights come from
    epochs_run: int = 0
    seconds: float = 0.0  # to train (or fit) it on the training part
    cv: Evaluation | None = None  # probes: k-fold estimate over every labelled image
    offsprings: int = 0
    generation: int = 0
    judged: bool = False  # judged against the champion once (a judgement is deterministic)
    path: TaskPath = field(default=None, repr=False, metadata={"tensors": True})  # type: ignore[assignment]

    def key(self) -> tuple[float, float]:
        return (self.score, -self.evaluation.nll)


@dataclass
class CandidateLog:
    """One line of a search's history: every member, and every child that did not beat its parent."""

    generation: int
    parent: str
    kind: str
    validation_accuracy: float
    validation_nll: float
    score: float
    accepted: bool
    seconds: float
    params_added: int
    trainable_components: list[str]
    hparams: dict[str, Any]
    cv_accuracy: float | None = None
    epochs: int = 0


@dataclass
class Population:
    members: list[Member] = field(default_factory=list)

    def add(self, member: Member) -> Member:
        member.id = len(self.members)
        self.members.append(member)
        return member

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> Member:
        return self.members[i]

    def best(self) -> Member | None:
        return max(self.members, key=Member.key) if self.members else None

    def probes(self) -> list[Member]:
        return [m for m in self.members if m.kind == Kind.PROBE]

    def ranked(self) -> list[Member]:
        return sorted(self.members, key=Member.key, reverse=True)

    def member_of(self, path: TaskPath) -> Member | None:
        return next((m for m in self.members if m.path is path), None)

    def draw_parent(self, rng: random.Random, seeds: list[TaskPath]) -> tuple[TaskPath, Member | None]:
        """muNet's draw: members best-first, each taken with probability 0.5^offsprings; if none is,
        uniformly among the seeds (other tasks' paths, the root) and the members."""
        for m in self.ranked():
            if rng.random() < 0.5**m.offsprings:
                return m.path, m
        choice = rng.randrange(len(seeds) + len(self.members))
        if choice < len(seeds):
            return seeds[choice], None
        m = self.members[choice - len(seeds)]
        return m.path, m

    @staticmethod
    def beats_parent(child: Member, parent: Member | None) -> bool:
        """A child joins only if it beats its same-task parent (any other parent: always)."""
        return parent is None or child.key() > parent.key()

    def lineage_epochs(self, m: Member, cap: int) -> int:
        """Epochs a member's weights trained for: its own best epoch and its same-task ancestors'.
        Its recipe repeats them when it is retrained from committed weights."""
        total, at = 0, m
        while at is not None:
            total += at.best_epoch
            at = self.members[at.parent] if at.parent is not None else None
        return min(total, cap)
