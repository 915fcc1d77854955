"""The evolutionary search for one task (MUNET_METHOD §4), muNet's task iteration.

1. Seeds: every committed task's path and the root, newest first. The first children copy a seed
   without mutation (only a new zero-initialised head trains: a linear probe of that seed), which
   is how knowledge transfers across tasks.
2. Then parents come from this task's population: walk it best-first, accepting each with
   probability 0.5^offsprings; if none is accepted, pick uniformly among seeds and population.
3. Each generation samples the data hyperparameters once; every child is mutated, trained for a
   fixed budget, keeps its best validation checkpoint and joins the population only if it beats
   its same-task parent's score (strict >).
4. The best path of the population is the result; the caller commits it.

A checkpoint is taken after every generation, so an interrupted search resumes from there.
Deviation from the official code: on resume, ancestor links beyond the population are dropped;
inheritance then falls back to the root for layers no population member holds.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from munet_server.data.dataset import ImageDataset
from munet_server.errors import InvalidArgument
from munet_server.evolve.mutations import MutationConfig, Mutator
from munet_server.evolve.scoring import score
from munet_server.evolve.train import TrainConfig, TrainResult, Validation, train_candidate
from munet_server.model.components import Component, ComponentSpec
from munet_server.model.path import Path

if TYPE_CHECKING:
    from munet_server.system import MunetSystem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    generations: int = 3
    candidates_per_generation: int = 2
    scale_factor: float = 1.0  # s of the score; lower values favour reuse and smaller paths
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    mutation: MutationConfig = field(default_factory=MutationConfig)
    cross_task: bool = True  # seed from other tasks' paths (baselines start from the root only)

    def __post_init__(self) -> None:
        if not 1 <= self.generations <= 1000:
            raise InvalidArgument(f"generations must be in 1..1000, got {self.generations}")
        if not 1 <= self.candidates_per_generation <= 256:
            raise InvalidArgument(
                f"candidates_per_generation must be in 1..256, got {self.candidates_per_generation}"
            )
        if not 0.0 < self.scale_factor <= 1.0:
            raise InvalidArgument(f"scale_factor must be in (0, 1], got {self.scale_factor}")

    @property
    def total_candidates(self) -> int:
        return self.generations * self.candidates_per_generation


@dataclass
class SearchProgress:
    phase: str
    generation: int
    generations_total: int
    candidates_done: int
    candidates_total: int
    best_quality: float
    best_score: float
    params_added: int
    elapsed: float
    eta: float


@dataclass
class CandidateLog:
    generation: int
    parent: str  # "root", "task:<name>" or "self:<path id>"
    mutated: bool
    quality: float
    score: float
    accepted: bool
    seconds: float
    params_added: int
    trainable_components: list[str]
    hparams: dict[str, Any]


@dataclass
class SearchResult:
    best: Path
    history: list[CandidateLog]
    seconds: float
    steps: int


@dataclass
class Candidate:
    """A child waiting to be trained, with what training needs to know about its parent."""

    path: Path
    parent: Path
    mutated: bool
    initial_score: float  # the same-task parent's score, or -inf: the bar the child must beat
    seed: int
    score_of: Callable[[float], float]


class Executor(Protocol):
    """Trains one generation's candidates; returns their results in order."""

    def train(
        self, search: EvolutionSearch, candidates: list[Candidate], generation: int
    ) -> list[TrainResult]: ...


class LocalExecutor:
    """Candidates one after another in this process, on the system's device."""

    def train(
        self, search: EvolutionSearch, candidates: list[Candidate], generation: int
    ) -> list[TrainResult]:
        done0 = generation * search.cfg.candidates_per_generation
        return [search.train_one(c, generation, done0 + i) for i, c in enumerate(candidates)]


def new_params(path: Path) -> int:
    return sum(c.num_params for c in path.trainable())


class EvolutionSearch:
    def __init__(
        self,
        system: MunetSystem,
        task: str,
        num_classes: int,
        train: ImageDataset,
        val: ImageDataset,
        config: SearchConfig,
        *,
        progress: Callable[[SearchProgress], None] | None = None,
        cancel: threading.Event | None = None,
        on_generation: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.system = system
        self.task = task
        self.num_classes = num_classes
        self.train_ds = train
        self.val = Validation(val, config.train.validation_examples)
        self.cfg = config
        self.progress = progress
        self.cancel = cancel
        self.on_generation = on_generation
        self.executor: Executor = executor or LocalExecutor()
        self.rng = random.Random(config.seed)
        self.mutator = Mutator(system.arch, system.space, config.mutation, self.rng)
        self.score_cfg = system.score_config(config.scale_factor)
        self.population: list[Path] = []
        self.history: list[CandidateLog] = []
        self.generation = 0
        self.seeds_used = 0
        self.steps = 0
        self._t0 = time.monotonic()
        self._elapsed_before = 0.0

    # ---- scoring -------------------------------------------------------------------------------
    def _score_fn(self, path: Path) -> Callable[[float], float]:
        p = self.system.accounted_params(path, self.task)
        return lambda q: score(q, p, self.score_cfg)

    def best(self) -> Path | None:
        return max(self.population, key=lambda p: p.score) if self.population else None

    # ---- parent selection ----------------------------------------------------------------------
    def _seeds(self) -> list[Path]:
        if self.cfg.cross_task and self.cfg.mutation.policy == "munet":
            return self.system.seed_paths(exclude=self.task)
        assert self.system.root_path is not None
        return [self.system.root_path]

    def _pick_parent(self, seeds: list[Path]) -> tuple[Path, bool]:
        if self.cfg.mutation.policy == "munet" and self.seeds_used < len(seeds):
            self.seeds_used += 1
            return seeds[self.seeds_used - 1], False  # unmutated seed child: a linear probe
        for p in sorted(self.population, key=lambda p: p.score, reverse=True):
            if self.rng.random() < 0.5**p.offsprings:
                return p, True
        return self.rng.choice(seeds + self.population), True

    # ---- main loop -----------------------------------------------------------------------------
    def run(self) -> SearchResult:
        seeds = self._seeds()
        per_gen = self.cfg.candidates_per_generation
        while self.generation < self.cfg.generations:
            g = self.generation
            base = self.best() or self.system.root_path
            assert base is not None
            ds = self.mutator.sample_data_hparams(base.hparams)
            # As in muNet, a generation's children are all created from the population as it stood
            # at the start of the generation, then trained independently (in parallel on Ray).
            candidates = [self._make_candidate(seeds, ds, g) for _ in range(per_gen)]
            results = self.executor.train(self, candidates, g)
            for k, (cand, result) in enumerate(zip(candidates, results, strict=True)):
                self._record(cand, result)
                self._report("searching", g, g * per_gen + k + 1)
            self.generation += 1
            if self.on_generation is not None:
                self.on_generation(*self.checkpoint())
        best = self.best()
        if best is None:  # every child lost to its parent: impossible for seeds (they start at -inf)
            raise RuntimeError("the search produced no path")
        return SearchResult(best=best, history=self.history, seconds=self.elapsed(), steps=self.steps)

    def _make_candidate(self, seeds: list[Path], ds: dict[str, Any], g: int) -> Candidate:
        parent, mutate = self._pick_parent(seeds)
        if mutate:
            hp = self.mutator.mutate_hparams(parent.hparams, ds)
        else:
            hp = self.mutator.fix_architecture({**parent.hparams, **ds})
        child = self.mutator.make_child(parent, self.task, self.num_classes, hp, mutate)
        child.generation = g
        same_task = parent.task == self.task
        if same_task:
            parent.offsprings += 1
        return Candidate(
            path=child,
            parent=parent,
            mutated=mutate,
            initial_score=parent.score if same_task else -math.inf,
            seed=(self.cfg.seed * 1_000_003 + g) & 0x7FFFFFFF,  # one data stream per generation
            score_of=self._score_fn(child),
        )

    def _record(self, cand: Candidate, result: TrainResult) -> None:
        child, parent = cand.path, cand.parent
        child.quality, child.score = result.quality, result.score
        if result.improved:
            self.population.append(child)
        self.steps += result.steps
        self.history.append(
            CandidateLog(
                generation=child.generation,
                parent=f"self:{parent.id}" if parent.task == self.task else f"task:{parent.task}",
                mutated=cand.mutated,
                quality=result.quality,
                score=result.score,
                accepted=result.improved,
                seconds=result.seconds,
                params_added=new_params(child),
                trainable_components=[c.spec.name for c in child.trainable()],
                hparams={k: v for k, v in child.hparams.items() if not k.startswith("_mu_")},
            )
        )

    def train_one(self, cand: Candidate, generation: int, done: int) -> TrainResult:
        """Train one candidate in this process (the local executor's unit of work)."""
        model = cand.path.build(self.system.arch).to(self.system.device)

        def on_step(step: int, total: int) -> None:
            if step % 10 == 0:
                self._report("searching", generation, done, fraction=step / total)

        return train_candidate(
            cand.path,
            model,
            self.train_ds,
            self.val,
            self.cfg.train,
            self.system.device,
            cand.seed,
            cand.score_of,
            cand.initial_score,
            cancel=self.cancel,
            on_step=on_step,
        )

    def elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._t0

    def _report(self, phase: str, generation: int, done: int, fraction: float = 0.0) -> None:
        if self.progress is None:
            return
        total = self.cfg.total_candidates
        elapsed = self.elapsed()
        progress = done + fraction
        eta = elapsed / progress * (total - progress) if progress > 0 else 0.0
        best = self.best()
        self.progress(
            SearchProgress(
                phase=phase,
                generation=generation + 1,
                generations_total=self.cfg.generations,
                candidates_done=done,
                candidates_total=total,
                best_quality=best.quality if best else 0.0,
                best_score=best.score if best else 0.0,
                params_added=new_params(best) if best else 0,
                elapsed=elapsed,
                eta=eta,
            )
        )

    # ---- checkpoint / resume -------------------------------------------------------------------
    def checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON-able state plus the draft tensors of the population (keys "<path>/<slot>/<tensor>")."""
        tensors: dict[str, torch.Tensor] = {}
        paths = []
        for p in self.population:
            comps = []
            for c in p.components:
                if c.frozen:
                    comps.append({"spec": c.spec.to_dict(), "id": c.id})
                else:
                    prefix = f"{p.id}/{c.spec.name}/"
                    for k, v in c.module.state_dict().items():
                        tensors[prefix + k] = v.detach().cpu().contiguous()
                    comps.append({"spec": c.spec.to_dict(), "draft": prefix, "origin": c.origin})
            paths.append(
                {
                    "id": p.id,
                    "hparams": p.hparams,
                    "quality": p.quality,
                    "score": p.score,
                    "offsprings": p.offsprings,
                    "generation": p.generation,
                    "components": comps,
                }
            )
        rng = self.rng.getstate()
        state = {
            "generation": self.generation,
            "seeds_used": self.seeds_used,
            "steps": self.steps,
            "elapsed": self.elapsed(),
            "rng": [rng[0], list(rng[1]), rng[2]],
            "population": paths,
            "history": [asdict(h) for h in self.history],
        }
        return state, tensors

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pool = self.system.pool
        self.population = []
        for pd in state["population"]:
            comps = []
            for cd in pd["components"]:
                spec = ComponentSpec.from_dict(cd["spec"])
                if "id" in cd:
                    if cd["id"] not in pool:
                        raise InvalidArgument(
                            f"checkpoint references component {cd['id']} that no longer exists"
                        )
                    comps.append(pool[cd["id"]])
                else:
                    module = self.system.arch.fresh(spec)
                    prefix = cd["draft"]
                    module.load_state_dict(
                        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                    )
                    comps.append(
                        Component(
                            spec, module.to(self.system.device), frozen=False, origin=cd.get("origin", "")
                        )
                    )
            p = Path(task=self.task, hparams=pd["hparams"], components=comps)
            p.quality, p.score = pd["quality"], pd["score"]
            p.offsprings, p.generation = pd["offsprings"], pd["generation"]
            self.population.append(p)
        self.generation = int(state["generation"])
        self.seeds_used = int(state["seeds_used"])
        self.steps = int(state["steps"])
        self._elapsed_before = float(state["elapsed"])
        r = state["rng"]
        self.rng.setstate((r[0], tuple(r[1]), r[2]))
        self.history = [CandidateLog(**h) for h in state["history"]]
