"""The evolutionary search for one task: muNet's task iteration, trained on cached features, in seconds.

Kept from muNet (docs/METHOD.md §4): seeds are every committed task's path and the root; a seed's
unmutated child (frozen path + new head) starts the population; parents come from the population
best-first with probability 0.5^offsprings (else uniformly from seeds and population); a generation
samples the data hyperparameters once; a child joins the population only if it beats its same-task
parent; the score is q * s^(p/P); the best path is committed.

Changed (docs/LEARNING.md, each measured):
1. Probe generation: every seed's head is fitted to convergence (L-BFGS) at each probed image size, on
   cached features; the size and the weight decay are chosen by k-fold cross-validation on the
   training part. This is the floor: the root's probe *is* a converged linear probe.
2. First mutated generation: muNet's own actions, structured — clone the top blocks, or insert an
   adapter before every block — from the best probe (at μ = 0.1 a contiguous suffix of clones is
   practically never drawn in a short budget).
3. Then ordinary muNet generations until the wall-clock budget runs out.
4. Candidates train in epochs on cached prefix outputs (evolve/train.py) and are compared on one
   stratified holdout (accuracy, then NLL).
5. The winner is a recipe: its components, hyperparameters and the epochs its lineage trained. A
   trained recipe replaces the probe only if it also wins on images the search never selected on:
   recipe and probe are retrained from committed weights on k-fold splits whose held-out folds come
   from the training part (the holdout picks the luckiest of many candidates; measured: +4.9 pt on
   the holdout, +0.1 pt on the test set). The chosen recipe is then refitted on every labelled image.

A checkpoint is taken after every generation, so an interrupted search resumes from there.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from munet_server.data.dataset import ImageDataset, holdout_indices
from munet_server.data.transforms import DataHParams
from munet_server.errors import Cancelled, InvalidArgument
from munet_server.evolve.budget import Budget
from munet_server.evolve.features import FeatureCache, View, train_views
from munet_server.evolve.heads import (
    CVResult,
    Evaluation,
    LinearHead,
    cross_validate,
    evaluate_logits,
    stratified_folds,
)
from munet_server.evolve.mutations import MutationConfig, Mutator
from munet_server.evolve.scoring import DEFAULT_SCALE_FACTOR, ScoreConfig, score
from munet_server.evolve.train import (
    Batches,
    CandidateTrainer,
    OutOfTime,
    TrainConfig,
    TrainResult,
    fit_probe_head,
    probe_features,
    split_path,
)
from munet_server.model.arch import Architecture
from munet_server.model.components import Component, ComponentSpec
from munet_server.model.hparams import SearchSpace
from munet_server.model.path import TaskPath

log = logging.getLogger(__name__)
PROBE_SHARE = 0.4  # of the budget, at most, for probing seeds beyond the root's first size
PROBE_CHUNK = 8  # seed probe paths built at a time (their shared prefixes are cached within one)
FEATURE_PASS = 0.7  # a forward pass over every view of the images, in epochs of training (2 views)
FINISH_MARGIN = 1.15  # finishing ran 2-3 s past a 90 s budget without it (retrainings vary in speed)


class SearchContext(Protocol):
    """What a search needs from the system it grows (MunetSystem provides it)."""

    arch: Architecture
    space: SearchSpace
    device: torch.device
    pool: dict[str, Component]
    root: Any  # .config.to_dict(): how a remote worker rebuilds the architecture
    commit_seconds: float  # what committing the result will take (the last commit's time)

    @property
    def root_path(self) -> TaskPath: ...

    def seed_paths(self, exclude: str = "") -> list[TaskPath]: ...

    def accounted_params(self, path: TaskPath, task: str) -> float: ...

    def score_config(self, scale_factor: float) -> ScoreConfig: ...


@dataclass(frozen=True)
class SearchConfig:
    budget: Budget = field(default_factory=Budget)
    scale_factor: float = DEFAULT_SCALE_FACTOR  # s of the score; lower favours reuse and smaller paths
    seed: int = 0
    mutation: MutationConfig = field(default_factory=MutationConfig)
    holdout_fraction: float = 0.0  # 0: 30 % of the images below 500, 20 % above
    folds: int = 5  # k of the probe's cross-validation
    confirm_folds: int = 2  # retrainings that confirm a trained winner on unselected images (0: none)
    cache_mb: int = 1024  # the frozen-prefix activation cache

    def train_config(self) -> TrainConfig:
        b = self.budget
        return TrainConfig(epochs=b.epochs, batch_size=b.batch_size)


@dataclass
class SearchProgress:
    phase: str
    generation: int
    generations_total: int
    candidates_done: int
    best_accuracy: float
    best_score: float
    params_added: int
    elapsed: float
    eta: float


@dataclass
class CandidateLog:
    generation: int
    parent: str  # "root", "task:<name>" or "self:<member index>"
    kind: str  # "probe" or "trained"
    validation_accuracy: float
    validation_nll: float
    score: float
    accepted: bool
    seconds: float
    params_added: int
    trainable_components: list[str]
    hparams: dict[str, Any]
    cv_accuracy: float | None = None  # probes: k-fold estimate on the training part
    epochs: int = 0


@dataclass
class Member:
    """A path of this task's population, with what the search knows about it."""

    path: TaskPath
    kind: str  # "probe" (head fitted by L-BFGS) or "trained"
    evaluation: Evaluation  # on the holdout
    score: float
    head_wd: float
    best_epoch: int = 0
    seconds: float = 0.0
    epochs_run: int = 0  # trained: epochs its `seconds` paid for
    setup_seconds: float = 0.0  # trained: of `seconds`, its set-up before the first step
    cv: Evaluation | None = None
    offsprings: int = 0
    generation: int = 0

    def key(self) -> tuple[float, float]:
        return (self.score, -self.evaluation.nll)


@dataclass
class Candidate:
    path: TaskPath
    parent: TaskPath
    parent_member: Member | None  # same-task parent: the bar to beat
    mutated: bool
    head_wd: float
    fit_head_first: bool
    seed: int
    prior_epochs: int = 0  # epochs the parent's lineage trained in this search (its recipe repeats them)


@dataclass
class Confirmation:
    """The trained winner's recipe against the probe on images the search did not select on."""

    size: int  # images judged (the training part, each by models that did not train on it)
    trained_accuracy: float
    probe_accuracy: float
    wins: int  # images the trained recipe gets right and the probe wrong
    losses: int
    kept: bool  # the trained path was committed
    seconds: float


@dataclass
class Incumbent:
    """The version a task serves, as a recipe a later search (ImproveTask) judges and builds on: its
    path with the task's own components as drafts that start where they were cloned from (so that
    no weight trained on these images is judged on them), its kind, head decay and epochs."""

    path: TaskPath
    kind: str  # "probe" or "trained"
    head_wd: float
    epochs: int  # what its recipe trains (0: a probe, whose head is fitted by L-BFGS)
    version: int


@dataclass
class SearchResult:
    best: TaskPath
    member: Member
    probe: Member  # the best converged probe: what a linear probe of the best seed reaches
    history: list[CandidateLog]
    seconds: float
    steps: int
    holdout_idx: torch.Tensor  # the images candidates were compared on
    confirmation: Confirmation | None = None  # None: no trained winner reached the confirmation
    current: Member | None = None  # ImproveTask: the served version's recipe, retrained here
    versus_current: Confirmation | None = None  # the new winner ("trained") against it ("probe")
    publish: bool = True  # False: the served version stays (the search found nothing better)
    probe_versus: float | None = None  # the probe's accuracy on the images `versus_current` judged
    out_of_time: str | None = None  # the judgement ("confirmation", "versus_current") the budget cut short
    refit_accuracy: float | None = None  # a trained winner's refit, on the images it was refitted on
    refit_failed: bool = False  # that refit fell below its recipe's estimate: the probe (or the served version) stays

    @property
    def holdout_size(self) -> int:
        return len(self.holdout_idx)


@dataclass
class TrainContext:
    """Everything an executor needs to train a generation's candidates."""

    arch: Architecture
    batches: Batches
    config: TrainConfig
    cancel: threading.Event | None
    deadline: float | None  # time.monotonic() at which training stops
    refit_scale: float = 0.0  # training stops so that a refit on all images (this x its time) still fits
    typical_seconds: float = 0.0  # a candidate's training so far in this search (0: none yet)
    # A candidate better than this on the holdout may become the finalist: the candidates after it in
    # the generation leave time to finish it, beyond the `reserved` seconds the deadline already keeps.
    bar_accuracy: float = math.inf
    reserved: float = 0.0
    root: dict[str, Any] | None = None  # RootConfig.to_dict(), for remote executors
    shared_ids: frozenset[str] = frozenset()  # committed components (shippable once, by id)


class Executor(Protocol):
    """Trains a generation's candidates; None for a candidate skipped because the time ran out."""

    def train(
        self, candidates: list[Candidate], ctx: TrainContext, report: Callable[[int, float], None]
    ) -> list[TrainResult | None]: ...


class LocalExecutor:
    """Candidates one after another in this process, sharing the search's feature cache."""

    def train(
        self, candidates: list[Candidate], ctx: TrainContext, report: Callable[[int, float], None]
    ) -> list[TrainResult | None]:
        results: list[TrainResult | None] = []
        durations: list[float] = []
        extra = 0.0  # finishing a possible finalist trained earlier in this generation
        for i, cand in enumerate(candidates):
            deadline = None if ctx.deadline is None else ctx.deadline - extra
            left = math.inf if deadline is None else deadline - time.monotonic()
            typical = sum(durations) / len(durations) if durations else ctx.typical_seconds
            if left <= 0.5 * typical or left <= 0:  # too little time to train it usefully
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
                deadline=deadline,
                refit_scale=ctx.refit_scale,
                prior_epochs=cand.prior_epochs,
                on_step=lambda f, i=i: report(i, f),
            )
            result = trainer.run()
            durations.append(result.seconds)
            results.append(result)
            if result.evaluation is not None and result.evaluation.accuracy > ctx.bar_accuracy:
                extra = max(extra, result.finish_seconds - ctx.reserved)
        return results


def new_params(path: TaskPath) -> int:
    return sum(c.num_params for c in path.trainable())


def probe_sizes(space: SearchSpace, default: int) -> tuple[int, ...]:
    """The image sizes the probe compares: the default, the largest, and one between."""
    sizes = space.sizes
    mid = sizes[min(range(len(sizes)), key=lambda i: abs(sizes[i] - (default + sizes[-1]) / 2))]
    return tuple(sorted({default, mid, sizes[-1]}))


def branch_points(keys: list[tuple[str, ...]]) -> list[tuple[int, ...]]:
    """For each prefix, the lengths at which it parts from another: where outputs are worth keeping."""
    out = []
    for a in keys:
        points = set()
        for b in keys:
            if a is b:
                continue
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            if 0 < n < len(a):
                points.add(n)
        out.append(tuple(sorted(points)))
    return out


class EvolutionSearch:
    def __init__(
        self,
        ctx: SearchContext,
        task: str,
        dataset: ImageDataset,
        config: SearchConfig,
        *,
        progress: Callable[[SearchProgress], None] | None = None,
        cancel: threading.Event | None = None,
        on_generation: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None,
        executor: Executor | None = None,
        incumbent: Incumbent | None = None,
    ) -> None:
        self.ctx = ctx
        self.incumbent = incumbent
        self.current: Member | None = None  # the incumbent's member, once trained here
        self.task = task
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.labels = dataset.labels
        self.cfg = config
        self.budget = config.budget
        self.train_cfg = config.train_config()
        self.progress = progress
        self.cancel = cancel
        self.on_generation = on_generation
        self.executor: Executor = executor or LocalExecutor()
        self.rng = random.Random(config.seed)
        self.mutator = Mutator(ctx.arch, ctx.space, config.mutation, self.rng)
        self.policy = self.mutator.policy
        self.score_cfg = ctx.score_config(config.scale_factor)
        self.train_idx, self.holdout_idx = holdout_indices(self.labels, config.holdout_fraction, config.seed)
        self.all_idx = torch.arange(len(self.labels))
        self.cache = FeatureCache(
            dataset.images,
            ctx.device,
            max_bytes=config.cache_mb << 20,
            channels_last=ctx.arch.family == "cnn" and ctx.device.type == "cpu",
        )
        self.population: list[Member] = []
        self.probes: list[Member] = []
        self.history: list[CandidateLog] = []
        self.generation = 0  # 0: the probe generation
        self.steps = 0
        self.candidates_done = 0
        self._t0 = time.monotonic()
        self._elapsed_before = 0.0
        self._head_fit_seconds = 0.0  # the slowest probe head fit on the training part (L-BFGS)
        self._clear: dict[int, bool] = {}  # id(member) -> clearly better than the best probe
        self._judged: dict[int, torch.Tensor] = {}  # id(member) -> right or wrong on each confirmation image
        self._refit_seconds: dict[int, float] = {}  # id(member) -> its refit on every image, by its folds' times

    # ---- time ----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._t0

    def _finish_scale(self) -> float:
        """What finishing costs in units of one candidate's training, by the images each retraining
        sees: k confirmation folds, each on every labelled image but its 1/k of the training part,
        and the refit on every labelled image (counting each fold as the whole training part
        over-estimated mnist40's by 1.2x)."""
        k, n_all, n_train = self.cfg.confirm_folds, len(self.all_idx), max(1, len(self.train_idx))
        folds = k * n_all - n_train if k else 0
        return (folds + n_all) / n_train

    def _refit_reserve(self) -> float:
        """Seconds to keep for confirming and refitting the current best (_finish_seconds). Leaving
        the set-up and the head fits out let 2 of 25 benchmark searches run 100 and 114 s on 90 s."""
        current = 0.0  # ImproveTask: the served version's recipe is judged on the same folds
        if self.current is not None and id(self.current) not in self._judged:
            folds = self.cfg.confirm_folds or 2
            current = FINISH_MARGIN * self._recipe_seconds(self.current) * folds * len(self.all_idx) / max(1, len(self.train_idx))
        best = self._finalist()
        if best is None:
            return current
        return current + FINISH_MARGIN * self._finish_seconds(best, max(1, self._lineage_epochs(best)))

    def _finish_seconds(self, m: Member, epochs: int) -> float:
        """Confirming and refitting a recipe of `epochs` epochs of the member's path: each retraining
        repeats its set-up (measured: the adapters' calibration, the LP-FT head fit over every view,
        a new prefix's cache) and the epochs; each confirmation fold also refits the probe's head.
        The set-up is counted once per retraining: multiplied by the lineage's epochs with the rest
        (as before), it over-estimated finishing 2.8-3.6x at 360 s (bench/RESULTS.md)."""
        head_fits = self.cfg.confirm_folds * self._head_fit_seconds
        return self._finish_scale() * self._retrain_seconds(m, epochs) + head_fits

    def _retrain_seconds(self, m: Member, epochs: int) -> float:
        """One retraining of the member's path for `epochs` epochs on the training part: its set-up
        and its epochs at the pace it trained."""
        per_epoch = self._epoch_seconds(m)
        # A child that kept its parent's head skipped the head fit that every retraining does.
        setup = max(m.setup_seconds, per_epoch * FEATURE_PASS + self._head_fit_seconds)
        return setup + per_epoch * epochs

    def _recipe_seconds(self, m: Member) -> float:
        """One retraining of the member's recipe on the training part, before any fold has measured it:
        the served version's as its fit here took, a probe's as its head fit, a candidate's by its pace."""
        if m is self.current:
            return m.seconds
        if m.kind == "probe":
            return self._head_fit_seconds
        return self._retrain_seconds(m, max(1, self._lineage_epochs(m)))

    def _deadline(self, reserve: float | None = None) -> float:
        """time.monotonic() at which candidate training must stop (`reserve`: _refit_reserve())."""
        return self._budget_end() - (self._refit_reserve() if reserve is None else reserve)

    def _budget_end(self) -> float:
        """time.monotonic() at which the budget ends, less the commit's time."""
        commit = FINISH_MARGIN * min(self.ctx.commit_seconds, 0.05 * self.budget.seconds)
        return time.monotonic() + self.budget.seconds - self.elapsed() - commit

    def _epoch_seconds(self, m: Member) -> float:
        """A trained member's seconds per epoch of its own training (its set-up left out)."""
        return max(0.0, m.seconds - m.setup_seconds) / max(1, m.epochs_run or self.train_cfg.epochs)

    def _typical_seconds(self) -> float:
        """A trained candidate's time in this search so far (its set-up included; 0: none yet)."""
        times = [h.seconds for h in self.history if h.kind == "trained"]
        return sum(times) / len(times) if times else 0.0

    # ---- population ----------------------------------------------------------------------------
    def best(self) -> Member | None:
        return max(self.population, key=Member.key) if self.population else None

    def _finalist(self) -> Member | None:
        """The best trained path that is clearly better than the best probe on the holdout: the one
        the search would confirm if it stopped now (None: it would keep the probe, and needs no
        time to confirm anything). Judged once per member."""
        if not self.probes:
            return None
        probe = max(self.probes, key=Member.key)
        for m in sorted(self.population, key=Member.key, reverse=True):
            if m.kind != "trained" or m.evaluation.accuracy <= probe.evaluation.accuracy:
                continue  # clearly better means more holdout images right than the probe
            if id(m) not in self._clear:
                self._clear[id(m)] = self._clearly_better(m, probe)
            if self._clear[id(m)]:
                return m
        return None

    def _score(self, path: TaskPath, accuracy: float) -> float:
        return score(accuracy, self.ctx.accounted_params(path, self.task), self.score_cfg)

    def _seeds(self) -> list[TaskPath]:
        if self.policy.cross_task_seeds:
            return self.ctx.seed_paths(exclude=self.task)
        return [self.ctx.root_path]

    # ---- main loop -----------------------------------------------------------------------------
    def run(self) -> SearchResult:
        if self.generation == 0:
            self._report("probing")
            self._probe_generation()
            if self.incumbent is not None:
                self._add_incumbent(self.incumbent)
            self._end_generation()
        while self._another_generation():
            g = self.generation
            candidates = self._first_generation() if g == 1 else self._evolved_generation()
            if not candidates:
                break
            self._report("searching")
            self._train_generation(candidates)
            self._end_generation()
        best = self.best()
        assert best is not None  # the probes always join the population
        probe = max(self.probes, key=Member.key)
        confirmation = None
        finalist = self._finalist() if best.kind == "trained" else None
        if best.kind == "trained" and finalist is None:
            log.info("task %s: no trained path is clearly better than the probe; keeping the probe", self.task)
            best = probe
        elif finalist is not None:
            best = finalist
        out_of_time: str | None = None
        if finalist is not None and self.cfg.confirm_folds > 0:
            self._report("confirming")
            try:
                confirmation = self._confirm(best, probe, ends_by=self._budget_end())
            except OutOfTime:
                # A trained path is committed only when confirmed; one found too late to confirm
                # within the budget gives way to the probe rather than overrun it.
                log.warning("task %s: no time left to confirm the trained path; keeping the probe", self.task)
                out_of_time, best = "confirmation", probe
            else:
                log.info(
                    "task %s: on %d images the search did not select on, trained %.3f vs probe %.3f: keeping the %s",
                    self.task, confirmation.size, confirmation.trained_accuracy, confirmation.probe_accuracy,
                    "trained path" if confirmation.kept else "probe",
                )  # fmt: skip
                if not confirmation.kept:
                    best = probe
        versus, publish, probe_versus = None, True, None
        if self.current is not None:  # ImproveTask: the served version's recipe is the bar
            if best is self.current:
                publish = False
            else:
                self._report("confirming")
                try:
                    versus = self._confirm(best, self.current, ends_by=self._budget_end())
                except OutOfTime:
                    log.warning("task %s: no time left to judge the new path; keeping the served version", self.task)
                    out_of_time, publish = "versus_current", False
                else:
                    publish = versus.kept
                    probe_versus = float(self._judge(probe).float().mean())  # before the refit changes it
                    log.info("task %s: new path %.3f vs the served version's recipe %.3f on %d images: %s",
                             self.task, versus.trained_accuracy, versus.probe_accuracy, versus.size,
                             "publishing a new version" if publish else "keeping the served version")  # fmt: skip
        refit_accuracy, refit_failed = None, False
        if publish:
            self._report("refitting")
            self._refit(best)
            judged = versus if versus is not None else confirmation  # what chose it
            if best.kind == "trained" and judged is not None:
                # A model gets at least the images it trained on as right as images it never saw;
                # a refit that does not (measured: a recipe judged 92.5 % on its folds scored 76 %
                # on the test set) diverged on the larger set: keep what was known to work.
                refit_accuracy = float(self._correct(best, self.all_idx).float().mean())
                if refit_accuracy < judged.trained_accuracy:
                    log.warning(
                        "task %s: the refit gets %.3f of its own training images right, below the %.3f "
                        "its recipe reached on unseen images; keeping the %s",
                        self.task, refit_accuracy, judged.trained_accuracy,
                        "served version" if self.current is not None else "probe",
                    )  # fmt: skip
                    refit_failed = True
                    if self.current is not None:
                        publish = False
                    else:
                        best = probe
                        self._refit(probe)
        return SearchResult(
            best=best.path,
            member=best,
            probe=probe,
            history=self.history,
            seconds=self.elapsed(),
            steps=self.steps,
            holdout_idx=self.holdout_idx,
            confirmation=confirmation,
            current=self.current,
            versus_current=versus,
            publish=publish,
            probe_versus=probe_versus,
            out_of_time=out_of_time,
            refit_accuracy=refit_accuracy,
            refit_failed=refit_failed,
        )

    def _another_generation(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the operation was cancelled")
        if self.generation > self.budget.generations:
            return False
        if self.generation == 1 and not self.policy.first_generation and not self.policy.evolve:
            return False
        if self.generation > 1 and not self.policy.evolve:
            return False
        # A candidate started with less than half its usual time left would overrun: its set-up
        # (a new prefix's cache, the head's warm start) does not stop at the deadline.
        return self._deadline() - time.monotonic() > 0.5 * self._typical_seconds()

    def _end_generation(self) -> None:
        self.generation += 1
        if self.on_generation is not None:
            self.on_generation(*self.checkpoint())

    # ---- generation 0: converged probes of every seed ------------------------------------------
    def _views(self, hp: dict[str, Any]) -> list[View]:
        return train_views(DataHParams.from_hparams(hp), self.budget.views)

    def _probe_generation(self) -> None:
        """Image size and weight decay by k-fold CV over every labelled image (more images, a
        steadier choice than the training part alone); the holdout estimate that candidates are
        compared with is then taken like theirs: fit on the training part, scored on the holdout.

        The root is probed first, at every size; the other seeds (newest first) at the root's best
        size. Beyond the root's first size, probes run only while they have used less than
        PROBE_SHARE of the budget: with many committed tasks or a large upload, muNet's seed phase
        would otherwise eat the whole search."""
        seeds = self._seeds()
        others = seeds[:-1]  # muNet's order: newest tasks first, the root last
        y = self.labels
        folds = self._probe_folds()
        default = int(self.ctx.root_path.hparams["ds_image_size"])
        sizes = sorted(probe_sizes(self.ctx.space, default), reverse=True)  # ImageNet features like large
        found: dict[int, tuple[Any, ...]] = {}  # seed index -> (cv, size, path, features, seconds)
        last = 0.0  # the last probe's seconds
        # The root at every probed size (the image size is chosen here), then the other seeds at that
        # size while the probes have used less than PROBE_SHARE of the budget.
        plan = [(size, [len(others)]) for size in sizes]

        def children(size: int, which: list[int]) -> Iterator[tuple[int, TaskPath, tuple[int, ...]]]:
            """Each seed's probe path at `size`, with the prefix depths worth keeping cached; built a
            few at a time, so that probes the share stops cost nothing (with a thousand committed
            tasks, building them all first took seconds)."""
            for at in range(0, len(which), PROBE_CHUNK):
                chunk, paths = which[at : at + PROBE_CHUNK], []
                for i in chunk:
                    seed = seeds[i]
                    hp = self.mutator.fix_architecture({**copy.deepcopy(seed.hparams), "ds_image_size": size})
                    paths.append(self.mutator.make_child(seed, self.task, self.num_classes, hp, mutate=False))
                keys = [tuple(split_path(p, self.ctx.arch).prefix_ids) for p in paths]
                yield from zip(chunk, paths, branch_points(keys))

        for size, which in [*plan, (None, list(range(len(others))))]:
            if size is None:
                size = found[len(others)][1]
            for i, path, keep in children(size, which):
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled("the operation was cancelled")
                # Past PROBE_SHARE of the budget only the root's first (largest) size still runs:
                # one converged probe is the least a search returns, however large the upload.
                # A probe is not started if it would end past the share (the last one's time as its
                # estimate: sizes run largest first, so later ones are no slower).
                root_has_one = len(others) in found
                if (i != len(others) or root_has_one) and self.elapsed() + last > PROBE_SHARE * self.budget.seconds:
                    break
                t0 = time.monotonic()
                feats = probe_features(path, self.ctx.arch, self.cache, self._views(path.hparams), keep)
                cv = cross_validate(feats, y, self.num_classes, folds)
                last = time.monotonic() - t0
                if i not in found or cv.evaluation.key() > found[i][0].evaluation.key():
                    found[i] = (cv, size, path, feats, last)
                self.candidates_done += 1
        seeds = [seeds[i] for i in sorted(found)]
        found = {j: found[i] for j, i in enumerate(sorted(found))}
        for i, seed in enumerate(seeds):
            cv, size, path, feats, seconds = found[i]
            self._add_probe(path, seed, feats, cv, seconds)

    def _probe_folds(self) -> list[torch.Tensor]:
        y = self.labels
        k = max(2, min(self.cfg.folds if len(y) < 1000 else 3, int(torch.bincount(y).min())))
        return stratified_folds(y, k, self.cfg.seed)

    def _add_probe(self, path: TaskPath, parent: TaskPath, feats: list[torch.Tensor], cv: CVResult, seconds: float) -> Member:
        """A head-only path joins the population with its head fitted by L-BFGS on the training part
        (weight decay by `cv`), judged on the holdout like every candidate."""
        t0 = time.monotonic()
        head = fit_probe_head(path, feats, self.labels, self.train_idx, self.num_classes, cv.weight_decay)
        self._head_fit_seconds = max(self._head_fit_seconds, time.monotonic() - t0)
        ev = _evaluate_head(head, feats[0][self.holdout_idx], self.labels[self.holdout_idx])
        path.hparams["head_wd"] = cv.weight_decay
        m = Member(
            path=path,
            kind="probe",
            evaluation=ev,
            score=self._score(path, ev.accuracy),
            head_wd=cv.weight_decay,
            cv=cv.evaluation,
            seconds=seconds,
            generation=self.generation,
        )
        self.population.append(m)
        self.probes.append(m)
        self._log(m, parent=parent, accepted=True, mutated=False)
        return m

    def _probe_children(self, candidates: list[Candidate]) -> list[Candidate]:
        """Fit the children that train nothing but their head (a seed or probe path unchanged but for
        its hyperparameters or a removed layer) as probes, and return the others. SGD on a head alone
        only moves it off the converged fit, and the best of its checkpoints on the holdout flatters
        it: measured (mnist40, seed 0), such a child won the holdout 96.7 % against its probe's 95.0 %
        and its recipe, retrained on the folds, scored 72.9 % against 94.3 %; it took the confirmation
        from the trained paths."""
        rest, folds = [], None
        for cand in candidates:
            if not split_path(cand.path, self.ctx.arch).head_only:
                rest.append(cand)
                continue
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("the operation was cancelled")
            t0 = time.monotonic()
            folds = folds or self._probe_folds()
            feats = probe_features(cand.path, self.ctx.arch, self.cache, self._views(cand.path.hparams))
            cv = cross_validate(feats, self.labels, self.num_classes, folds)
            self._add_probe(cand.path, cand.parent, feats, cv, time.monotonic() - t0)
            self.candidates_done += 1
        return rest

    # ---- generation 1: muNet's actions, structured ---------------------------------------------
    def _first_generation(self) -> list[Candidate]:
        base = max(self.probes, key=lambda m: m.cv.key() if m.cv else m.evaluation.key())
        arch, n = self.ctx.arch, self.ctx.arch.num_blocks
        floor = min(self.mutator.cfg.clone_floor, n - 1)
        plans: list[tuple[dict[str, Any], tuple[str, ...]]] = []  # (hparam changes, extra clones)
        kind = self.policy.first_generation
        if kind == "structured":
            top = [f"block_{i}" for i in range(n - 1, floor - 1, -1)]
            half = max(2, (n - floor) // 4)
            plans = [
                ({}, tuple(top[:half])),  # clone the top blocks
                ({"adapters": list(range(floor, n))}, ()),  # an adapter before every block
                ({}, tuple(top[:1])),  # clone the last block
                ({}, ()),  # the final norm alone (always cloned when mutating) and the head
            ]
        elif kind in ("finetune", "adapters"):
            lrs = [0.01, 0.003, 0.03, 0.001]  # the baseline's own learning-rate sweep
            plans = [({"opt_lr": lr}, ()) for lr in lrs]
        plans = plans[: self.budget.candidates_per_generation]
        cands = []
        for changes, clones in plans:
            hp = {**copy.deepcopy(base.path.hparams), **changes}
            hp = self.mutator.fix_architecture(hp)
            child = self.mutator.make_child(base.path, self.task, self.num_classes, hp, True, clone=clones)
            cands.append(self._candidate(child, base.path, base, mutated=True))
        # Shallow cuts first: a deeper prefix then continues from a cached shallower one.
        cands.sort(key=lambda c: len(split_path(c.path, arch).prefix))
        return cands

    # ---- later generations: muNet ---------------------------------------------------------------
    def _pick_parent(self) -> tuple[TaskPath, Member | None]:
        for m in sorted(self.population, key=Member.key, reverse=True):
            if self.rng.random() < 0.5**m.offsprings:
                return m.path, m
        seeds = self._seeds()
        choice = self.rng.randrange(len(seeds) + len(self.population))
        if choice < len(seeds):
            return seeds[choice], None
        m = self.population[choice - len(seeds)]
        return m.path, m

    def _evolved_generation(self) -> list[Candidate]:
        best = self.best()
        assert best is not None
        ds = self.mutator.sample_data_hparams(best.path.hparams)
        cands: list[Candidate] = []
        seen: set[str] = set()
        left = self._deadline() - time.monotonic()
        for _ in range(self.budget.candidates_per_generation * 5):  # redraw children identical to a sibling
            if len(cands) == self.budget.candidates_per_generation:
                break
            parent, member = self._pick_parent()
            # An unfinishable best member with no offspring is drawn every time, so its generation
            # comes out empty and the search ends early. Passing over it instead was measured worse
            # (-0.8 pt, 4 of 10 confirmations out of time: late children became finalists).
            if member is not None and not self._finishable(member, left):
                continue
            hp = self.mutator.mutate_hparams(parent.hparams, ds)
            hp.setdefault("head_wd", best.head_wd)
            child = self.mutator.make_child(parent, self.task, self.num_classes, hp, True)
            sig = _signature(parent, child)
            if not child.trainable() or sig in seen:
                continue
            seen.add(sig)
            cands.append(self._candidate(child, parent, member, mutated=True))
        cands.sort(key=lambda c: len(split_path(c.path, self.ctx.arch).prefix))
        return cands

    def _finishable(self, parent: Member, left: float) -> bool:
        """Whether a child of this same-task parent could train one epoch in the `left` seconds and
        still be confirmed and refitted: its recipe repeats the parent lineage's epochs. A child that
        cannot stops after a step or two (the trainer's deadline) yet joins the lineage as a whole
        epoch: seen on photos (seed 0, 90 s, with a smaller reserve), 60 generations of such fragments
        from 33 to 76 s, the recipe grown to 24 epochs that its confirmation could not finish."""
        prior = self._lineage_epochs(parent) if parent.kind == "trained" else 0
        if not prior:
            return True
        return FINISH_MARGIN * self._finish_seconds(parent, prior + 1) < left

    def _candidate(self, child: TaskPath, parent: TaskPath, member: Member | None, mutated: bool) -> Candidate:
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
            mutated=mutated,
            head_wd=head_wd,
            fit_head_first=fresh_head,
            seed=(self.cfg.seed * 1_000_003 + self.generation) & 0x7FFFFFFF,  # one data order per generation
            prior_epochs=self._lineage_epochs(member) if same_task else 0,
        )

    def _batches(self, train: torch.Tensor, holdout: torch.Tensor, hp: dict[str, Any]) -> Batches:
        return Batches(self.cache, self.labels, self.num_classes, train, holdout, self._views(hp))

    def _train_generation(self, candidates: list[Candidate]) -> None:
        candidates = self._probe_children(candidates)
        if not candidates:
            return
        # A generation shares its data hyperparameters (muNet): the views come from the first child.
        reserve = self._refit_reserve()
        ctx = TrainContext(
            arch=self.ctx.arch,
            batches=self._batches(self.train_idx, self.holdout_idx, candidates[0].path.hparams),
            config=self.train_cfg,
            cancel=self.cancel,
            deadline=self._deadline(reserve),
            refit_scale=self._finish_scale() * FINISH_MARGIN,
            typical_seconds=self._typical_seconds(),
            bar_accuracy=max(m.evaluation.accuracy for m in self.probes) if self.probes else -math.inf,
            reserved=reserve,
            root=self.ctx.root.config.to_dict(),
            shared_ids=frozenset(self.ctx.pool),
        )
        done0 = self.candidates_done
        finished: set[int] = set()

        def report(i: int, fraction: float) -> None:  # candidate i is `fraction` done (any order)
            if fraction >= 1.0:
                finished.add(i)
            self.candidates_done = done0 + len(finished)
            self._report("searching", fraction)

        results = self.executor.train(candidates, ctx, report)
        self.candidates_done = done0 + len(candidates)
        for cand, result in zip(candidates, results, strict=True):
            if result is None or result.evaluation is None:
                continue
            self.steps += result.steps
            ev = result.evaluation
            m = Member(
                path=cand.path,
                kind="trained",
                evaluation=ev,
                score=self._score(cand.path, ev.accuracy),
                head_wd=cand.head_wd,
                best_epoch=result.best_epoch,
                seconds=result.seconds,
                epochs_run=result.epochs,
                setup_seconds=result.setup_seconds,
                generation=self.generation,
            )
            bar = cand.parent_member
            accepted = bar is None or m.key() > bar.key()
            if accepted:
                self.population.append(m)
            self._log(m, parent=cand.parent, accepted=accepted, mutated=True, epochs=result.epochs)

    # ---- the final choice ----------------------------------------------------------------------
    @torch.no_grad()
    def _correct(self, m: Member, idx: torch.Tensor) -> torch.Tensor:
        """Which of the images `idx` the member's path classifies right (clean view)."""
        return self._logits(m, idx).argmax(1) == self.labels[idx]

    @torch.no_grad()
    def _logits(self, m: Member, idx: torch.Tensor) -> torch.Tensor:
        """The member's logits on the images `idx` (clean view), on the CPU."""
        split = split_path(m.path, self.ctx.arch)
        for c in split.drafts:
            c.module.eval()
        x = self.cache.get(split.prefix, split.prefix_ids, self._views(m.path.hparams)[0]) if split.prefix else None
        out = []
        for i in range(0, len(idx), 128):
            part = idx[i : i + 128]
            h = x[part.to(x.device)].float() if x is not None else self.cache.view_input(self._views(m.path.hparams)[0], part)
            for _, fn in split.suffix:
                h = fn(h)
            out.append(h.float().cpu())
        return torch.cat(out)

    def _clearly_better(self, trained: Member, probe: Member) -> bool:
        """A trained path replaces the converged probe only on clear evidence: on the holdout, the
        images it gets right and the probe gets wrong outnumber the reverse by at least one standard
        deviation of that count (McNemar), and by at least one image. The winner of many candidates
        on a few dozen images is otherwise as likely lucky as better (measured: a 30-image holdout
        that ties them picked a path 21 points worse on the test set)."""
        a, b = self._correct(trained, self.holdout_idx), self._correct(probe, self.holdout_idx)
        wins, losses = int((a & ~b).sum()), int((~a & b).sum())
        return wins - losses >= max(1.0, math.sqrt(wins + losses))

    def _confirm(self, trained: Member, probe: Member, ends_by: float | None = None) -> Confirmation:
        """Judge the trained winner's recipe against the probe on the training part, k-fold: each fold
        is classified by both retrained on every other labelled image (the holdout included), so no
        image is judged by a model that trained on it or by the comparison that chose the winner. The
        trained path is kept if its score (accuracy discounted by its parameters) is higher there
        (requiring it to be clearly better there too, as on the holdout, was measured: it kept 2
        trained paths of 25, -0.9 pt; bench/RESULTS.md).

        `ends_by`: the judgement and the winner's refit end by then, or OutOfTime is raised. Judged
        on measured times, not the reserve's estimate: no fold runs past `ends_by`, and a fold is
        not started when the last fold's time says that it and the refit would not fit."""
        t0 = time.monotonic()
        ca = self._judge(trained, ends_by, refit_after=True)
        cb = self._judge(probe, ends_by, then=self._refit_seconds.get(id(trained), 0.0))
        acc_t, acc_p = float(ca.float().mean()), float(cb.float().mean())
        return Confirmation(
            size=len(ca),
            trained_accuracy=acc_t,
            probe_accuracy=acc_p,
            wins=int((ca & ~cb).sum()),
            losses=int((~ca & cb).sum()),
            kept=self._score(trained.path, acc_t) > self._score(probe.path, acc_p),
            seconds=time.monotonic() - t0,
        )

    def _judge(
        self, m: Member, ends_by: float | None = None, then: float = 0.0, refit_after: bool = False
    ) -> torch.Tensor:
        """Right or wrong on each training-part image, fold by fold, by the member's recipe retrained
        on every other labelled image. Deterministic, so kept per member: a winner judged against
        the probe and then against the served version (ImproveTask) is retrained once. With
        `ends_by`, it ends `then` seconds before it (and before its own refit on every image, measured
        by its folds, when `refit_after`), or raises OutOfTime."""
        if id(m) not in self._judged:
            folds = self.cfg.confirm_folds or 2
            parts = stratified_folds(self.labels[self.train_idx], folds, self.cfg.seed + 1)
            out, last = [], 0.0
            for part in parts:
                fold = self.train_idx[part]
                index = self.all_idx[~torch.isin(self.all_idx, fold)]
                if ends_by is not None:
                    # The first fold by the recipe's known pace: an ImproveTask that started the
                    # served version's 41 s retraining with 28 s left ran to the budget's end
                    # (once 2.5 s past it) to learn that the second fold would not fit.
                    expect = last or self._recipe_seconds(m) * len(index) / max(1, len(self.train_idx))
                    refit = expect * len(self.all_idx) / len(index) if refit_after else 0.0
                    if time.monotonic() + expect + refit + then > ends_by:
                        raise OutOfTime(f"{self.task}: no time left to judge the recipe")
                t0 = time.monotonic()
                self._fit(m, index, None if ends_by is None else ends_by - then)
                last = time.monotonic() - t0
                out.append(self._correct(m, fold))
            self._judged[id(m)] = torch.cat(out)
            self._refit_seconds[id(m)] = last * len(self.all_idx) / max(1, len(index))
        return self._judged[id(m)]

    # ---- ImproveTask: the served version --------------------------------------------------------
    def _add_incumbent(self, inc: Incumbent) -> None:
        """The served version's recipe joins the population like a candidate: trained (from where its
        components started) on the training part and judged on the holdout, so that the search can
        build on it and the final choice can be judged against it on the same images."""
        t0 = time.monotonic()
        m = Member(
            path=inc.path,
            kind=inc.kind,
            evaluation=Evaluation(0.0, math.inf),
            score=0.0,
            head_wd=inc.head_wd,
            best_epoch=inc.epochs,
            epochs_run=inc.epochs,
        )
        self.current = m  # before the fit: its recipe's epochs are the member's own (_lineage_epochs)
        self._fit(m, self.train_idx)
        m.evaluation = self._evaluate(m, self.holdout_idx)
        m.score = self._score(inc.path, m.evaluation.accuracy)
        m.seconds = time.monotonic() - t0
        self.population.append(m)
        self._log(m, parent=inc.path, accepted=True, mutated=False, epochs=inc.epochs)

    @torch.no_grad()
    def _evaluate(self, m: Member, idx: torch.Tensor) -> Evaluation:
        return evaluate_logits(self._logits(m, idx), self.labels[idx])

    # ---- refit ---------------------------------------------------------------------------------
    def _refit(self, m: Member) -> None:
        """Retrain the winner's trainable parts on every labelled image (train + holdout) with the
        hyperparameters and epochs the holdout chose."""
        self._fit(m, self.all_idx)

    def _fit(self, m: Member, index: torch.Tensor, stop_at: float | None = None) -> None:
        """Train the member's recipe on the images `index`, in place, from weights no training on this
        task's images has touched: each draft as the committed component it was cloned from (or as
        freshly initialised: adapters are the identity), a new head fitted by L-BFGS first (LP-FT),
        then the epochs its whole lineage trained, with its hyperparameters."""
        path = m.path
        if m.kind == "probe":
            feats = probe_features(path, self.ctx.arch, self.cache, self._views(path.hparams))
            fit_probe_head(path, feats, self.labels, index, self.num_classes, m.head_wd)
            return
        pool, arch = self.ctx.pool, self.ctx.arch
        for c in path.trainable():
            src = pool.get(c.origin) if c.origin else None
            start = src.module if src is not None and src.spec == c.spec else arch.fresh(c.spec)
            c.module.load_state_dict(copy.deepcopy(start.state_dict()))
        trainer = CandidateTrainer(
            path,
            arch,
            self._batches(index, index[:0], path.hparams),
            self.train_cfg,
            seed=self.cfg.seed,
            head_wd=m.head_wd,
            fit_head_first=True,
            cancel=self.cancel,
            stop_at=stop_at,
        )
        result = trainer.run(epochs=max(1, self._lineage_epochs(m)))
        self.steps += result.steps

    def recipe_epochs(self, m: Member) -> int:
        """The epochs the member's recipe trains (0 for a probe): kept with the committed task, so
        that a later ImproveTask can retrain it."""
        return 0 if m.kind == "probe" else max(1, self._lineage_epochs(m))

    def _lineage_epochs(self, m: Member) -> int:
        """Epochs the member's weights trained for: its own best epoch and its same-task ancestors'."""
        members = {id(p.path): p for p in (*self.population, *([self.current] if self.current else []))}
        total = sum(members[id(a)].best_epoch for a in m.path.ancestors() if id(a) in members)
        return min(total, 3 * self.train_cfg.epochs)

    # ---- reporting -----------------------------------------------------------------------------
    def _log(self, m: Member, parent: TaskPath, accepted: bool, mutated: bool, epochs: int = 0) -> None:
        if m is self.current and self.incumbent is not None:
            origin = f"version:{self.incumbent.version}"
        elif parent.task == self.task:
            origin = f"self:{next((i for i, p in enumerate(self.population) if p.path is parent), -1)}"
        else:
            origin = parent.task if parent.task == "root" else f"task:{parent.task}"
        self.history.append(
            CandidateLog(
                generation=self.generation,
                parent=origin,
                kind=m.kind,
                validation_accuracy=m.evaluation.accuracy,
                validation_nll=m.evaluation.nll,
                score=m.score,
                accepted=accepted,
                seconds=m.seconds,
                params_added=new_params(m.path),
                trainable_components=[c.spec.name for c in m.path.trainable()],
                hparams={k: v for k, v in m.path.hparams.items() if not k.startswith("_mu_")},
                cv_accuracy=m.cv.accuracy if m.cv else None,
                epochs=epochs,
            )
        )

    def _report(self, phase: str, fraction: float = 0.0) -> None:
        if self.progress is None:
            return
        elapsed = self.elapsed()
        best = self.best()
        self.progress(
            SearchProgress(
                phase=phase,
                generation=max(0, self.generation - 1),  # mutated generations finished
                generations_total=self.budget.generations,
                candidates_done=self.candidates_done,
                best_accuracy=best.evaluation.accuracy if best else 0.0,
                best_score=best.score if best else 0.0,
                params_added=new_params(best.path) if best else 0,
                elapsed=elapsed,
                eta=max(0.0, self.budget.seconds - elapsed) if phase != "refitting" else self._refit_reserve(),
            )
        )

    # ---- checkpoint / resume -------------------------------------------------------------------
    def checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON-able state plus the population's draft tensors (keys "<member>/<slot>/<tensor>")."""
        tensors: dict[str, torch.Tensor] = {}
        members = []
        for i, m in enumerate(self.population):
            comps = []
            for c in m.path.components:
                if c.frozen and c.id in self.ctx.pool:
                    comps.append({"spec": c.spec.to_dict(), "id": c.id})
                    continue
                prefix = f"{i}/{c.spec.name}/"
                for k, v in c.module.state_dict().items():
                    tensors[prefix + k] = v.detach().cpu().contiguous()
                comps.append(
                    {"spec": c.spec.to_dict(), "draft": prefix, "frozen": c.frozen, "id": c.id, "origin": c.origin}
                )
            members.append(
                {
                    "hparams": m.path.hparams,
                    "components": comps,
                    "kind": m.kind,
                    "evaluation": asdict(m.evaluation),
                    "cv": asdict(m.cv) if m.cv else None,
                    "score": m.score,
                    "head_wd": m.head_wd,
                    "best_epoch": m.best_epoch,
                    "seconds": m.seconds,
                    "epochs_run": m.epochs_run,
                    "setup_seconds": m.setup_seconds,
                    "offsprings": m.offsprings,
                    "generation": m.generation,
                    "probe": any(m is p for p in self.probes),
                    "current": m is self.current,
                }
            )
        rng = self.rng.getstate()
        state = {
            "generation": self.generation,
            "steps": self.steps,
            "candidates_done": self.candidates_done,
            "elapsed": self.elapsed(),
            "head_fit_seconds": self._head_fit_seconds,
            "rng": [rng[0], list(rng[1]), rng[2]],
            "population": members,
            "history": [asdict(h) for h in self.history],
        }
        return state, tensors

    def restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pool = self.ctx.pool
        arch = self.ctx.arch
        self.population, self.probes = [], []
        for md in state["population"]:
            comps = []
            for cd in md["components"]:
                spec = ComponentSpec.from_dict(cd["spec"])
                if "draft" not in cd:
                    if cd["id"] not in pool:
                        raise InvalidArgument(f"checkpoint references component {cd['id']} that no longer exists")
                    comps.append(pool[cd["id"]])
                    continue
                module = arch.fresh(spec)
                prefix = cd["draft"]
                module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
                comps.append(
                    Component(
                        spec,
                        module.to(self.ctx.device),
                        frozen=bool(cd["frozen"]),
                        id=cd["id"],
                        origin=cd.get("origin", ""),
                    )
                )
            path = TaskPath(task=self.task, hparams=md["hparams"], components=comps)
            m = Member(
                path=path,
                kind=md["kind"],
                evaluation=Evaluation(**md["evaluation"]),
                score=float(md["score"]),
                head_wd=float(md["head_wd"]),
                best_epoch=int(md["best_epoch"]),
                seconds=float(md["seconds"]),
                epochs_run=int(md.get("epochs_run", 0)),
                setup_seconds=float(md.get("setup_seconds", 0.0)),
                cv=Evaluation(**md["cv"]) if md["cv"] else None,
                offsprings=int(md["offsprings"]),
                generation=int(md["generation"]),
            )
            self.population.append(m)
            if md["probe"]:
                self.probes.append(m)
            if md.get("current"):
                self.current = m
        self.generation = int(state["generation"])
        self.steps = int(state["steps"])
        self.candidates_done = int(state["candidates_done"])
        self._elapsed_before = float(state["elapsed"])
        self._head_fit_seconds = float(state.get("head_fit_seconds", 0.0))
        self._t0 = time.monotonic()
        r = state["rng"]
        self.rng.setstate((r[0], tuple(r[1]), r[2]))
        self.history = [CandidateLog(**h) for h in state["history"]]


def _signature(parent: TaskPath, child: TaskPath) -> str:
    """Two siblings with this in common would train identically (same data order, same start)."""
    parts = [f"{c.spec.name}:{'draft' if not c.frozen else c.id}" for c in child.components]
    return f"{id(parent)}|{'|'.join(parts)}|{json.dumps(child.hparams, sort_keys=True, default=str)}"


def _evaluate_head(head: LinearHead, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
    return evaluate_logits(head.logits(x.double()), y)
