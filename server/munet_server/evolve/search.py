"""muNet's search for one task, anytime: a champion always serves, challengers replace it only when
they beat it (docs/LEARNING.md).

    probes (the first one published at once when the task is new)
    generation 1: muNet's actions, structured, from the best probe
    generation 2..: muNet's draws (parents best-first with probability 0.5^offsprings, else uniformly
                    from seeds and population; a child joins only if it beats its same-task parent)
    after every generation: the best member that beats the champion on the holdout is judged against
    it on images neither was selected on (judge.py); a win is refitted on every labelled image and
    published as the next version

until the clock runs out. Kept from muNet (docs/METHOD.md §4): seeds are every committed task's path
and the root, the score is q * s^(p/P). A checkpoint is taken after every generation and after every
publication, so an interrupted search resumes from there.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from munet_server.data.dataset import ImageDataset, holdout_indices
from munet_server.data.transforms import DataHParams
from munet_server.errors import Cancelled
from munet_server.evolve.budget import Budget
from munet_server.evolve.clock import Clock
from munet_server.evolve.context import SearchContext
from munet_server.evolve.executors import Candidate, Executor, LocalExecutor, TrainContext
from munet_server.evolve.features import FeatureCache, View, train_views
from munet_server.evolve.heads import cross_validate, evaluate_logits
from munet_server.evolve.judge import Decision, Judge
from munet_server.evolve.mutations import FirstGeneration, MutationConfig, Mutator
from munet_server.evolve.offspring import Brood, evolved_generation, first_generation, head_only
from munet_server.evolve.population import CandidateLog, Kind, Member, Population
from munet_server.evolve.probes import Probe, probe_folds, probe_seeds
from munet_server.evolve.recipes import Recipe, RecipeFitter
from munet_server.evolve.scoring import DEFAULT_SCALE_FACTOR, score
from munet_server.evolve.state import from_json, path_from_state, path_to_state, to_json
from munet_server.evolve.train import Batches, OutOfTime, TrainConfig, fit_probe_head, probe_features
from munet_server.model.path import TaskPath

log = logging.getLogger(__name__)
CACHE_BYTES = 1 << 30  # the frozen-prefix activation cache


@dataclass(frozen=True)
class SearchConfig:
    budget: Budget = field(default_factory=Budget)
    scale_factor: float = DEFAULT_SCALE_FACTOR  # s of the score; lower favours reuse and smaller paths
    seed: int = 0
    mutation: MutationConfig = field(default_factory=MutationConfig)
    holdout_fraction: float = 0.0  # 0: 30 % of the images below 500, 20 % above

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.budget.epochs, batch_size=self.budget.batch_size)


@dataclass(frozen=True)
class Champion:
    """The version a task serves, as a recipe a search judges challengers against and builds on."""

    recipe: Recipe
    version: int


@dataclass
class Publication:
    """A version this search published: what it is, and the evidence that published it."""

    version: int
    member: int
    kind: Kind
    estimate: float  # accuracy on images it was not selected on: its judgement's, or a first probe's CV
    judged_on: int  # how many images that estimate counts
    probe_estimate: float  # the best probe's accuracy on the same images
    seconds: float  # into the search
    epochs: int  # what its recipe trains (0: a probe)
    decision: Decision | None = None  # None: the first version, published without a champion


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
    serving_version: int = 0
    serving_kind: str = ""
    serving_estimate: float = 0.0


@dataclass
class SearchState:
    """Everything a checkpoint holds (state.py writes and reads it by its fields)."""

    generation: int = 0  # 0: the probes are running
    steps: int = 0
    candidates_done: int = 0
    elapsed: float = 0.0
    rng: list[Any] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    history: list[CandidateLog] = field(default_factory=list)
    champion: int | None = None  # the member serving, as a recipe
    champion_version: int = 0
    publications: list[Publication] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


# (the refitted path, the member, its publication without a version) -> the version it became
Publish = Callable[[TaskPath, Member, Publication], int]


class Search:
    def __init__(
        self,
        ctx: SearchContext,
        task: str,
        dataset: ImageDataset,
        config: SearchConfig,
        *,
        publish: Publish,
        champion: Champion | None = None,
        clock: Clock | None = None,
        progress: Callable[[SearchProgress], None] | None = None,
        cancel: threading.Event | None = None,
        on_checkpoint: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.ctx, self.task, self.cfg, self.budget = ctx, task, config, config.budget
        self.labels, self.num_classes = dataset.labels, dataset.num_classes
        self.publish_fn, self.served = publish, champion
        self.clock = clock or Clock(config.budget.seconds)
        self.progress, self.cancel, self.on_checkpoint = progress, cancel, on_checkpoint
        self.executor: Executor = executor or LocalExecutor()
        self.rng = random.Random(config.seed)
        self.mutator = Mutator(ctx.arch, ctx.space, config.mutation, self.rng)
        self.policy = self.mutator.policy
        self.score_cfg = ctx.score_config(config.scale_factor)
        self.train_cfg = config.train_config()
        self.train_idx, self.holdout_idx = holdout_indices(self.labels, config.holdout_fraction, config.seed)
        self.all_idx = torch.arange(len(self.labels))
        channels_last = ctx.arch.family == "cnn" and ctx.device.type == "cpu"
        self.cache = FeatureCache(dataset.images, ctx.device, max_bytes=CACHE_BYTES, channels_last=channels_last)
        self.fitter = RecipeFitter(ctx.arch, ctx.pool, self.cache, self.labels, self.num_classes, self.views,
                                   self.train_cfg, config.seed, cancel, self.clock)  # fmt: skip
        self.judge = Judge(self.fitter, self.train_idx, self.all_idx, self.labels, config.seed, self.score)
        self.probe_folds = probe_folds(self.labels, config.seed)  # every probe's CV, seeds' and children's
        self.population = Population()
        self.state = SearchState()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchState:
        if self.state.generation == 0:
            if self.served is not None and self.state.champion is None:
                self._add_champion(self.served)
            self._report("probing")
            self._probe_generation()
            self._challenge()
            self._end_generation()
        while self._another_generation():
            brood = Brood(self.task, self.num_classes, self.state.generation, self.cfg.seed)
            limit = self.budget.candidates_per_generation
            if self.state.generation == 1:
                base = max(self.population.probes(), key=lambda m: m.cv.key() if m.cv else m.evaluation.key())
                cands = first_generation(brood, base, self.mutator, self.policy.first_generation, limit)
            else:
                cands = evolved_generation(brood, self.population, self._seeds(), self.mutator, self.rng, limit)
            if not cands:
                break
            self._report("searching")
            self._train_generation(cands)
            self._challenge()
            self._end_generation()
        self.state.steps += self.fitter.steps
        self.fitter.steps = 0
        self.state.elapsed = self.clock.elapsed()
        self.state.members = self.population.members
        self._report("ended")
        return self.state

    def _another_generation(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the operation was cancelled")
        g = self.state.generation
        if self.clock.expired() or g > self.budget.generations:
            return False
        if g == 1:
            return self.policy.first_generation != FirstGeneration.NONE or self.policy.evolve
        return self.policy.evolve

    def _end_generation(self) -> None:
        self.state.generation += 1
        self._checkpoint()

    # ---- members -------------------------------------------------------------------------------
    def views(self, hp: dict[str, Any]) -> list[View]:
        return train_views(DataHParams.from_hparams(hp), self.budget.views)

    def score(self, path: TaskPath, accuracy: float) -> float:
        return score(accuracy, self.ctx.accounted_params(path, self.task), self.score_cfg)

    def _seeds(self) -> list[TaskPath]:
        return self.ctx.seed_paths(exclude=self.task) if self.policy.cross_task_seeds else [self.ctx.root_path]

    def recipe(self, m: Member) -> Recipe:
        epochs = 0 if m.kind == Kind.PROBE else max(1, self.population.lineage_epochs(m, 3 * self.train_cfg.epochs))
        return Recipe(m.path, m.kind, m.head_wd, epochs)

    def _join(self, m: Member, parent: TaskPath, accepted: bool = True) -> Member:
        if accepted:
            self.population.add(m)
        self.state.history.append(CandidateLog(
            generation=self.state.generation, parent=m.origin, kind=m.kind.value,
            validation_accuracy=m.evaluation.accuracy, validation_nll=m.evaluation.nll, score=m.score,
            accepted=accepted, seconds=m.seconds, params_added=sum(c.num_params for c in m.path.trainable()),
            trainable_components=[c.spec.name for c in m.path.trainable()],
            hparams={k: v for k, v in m.path.hparams.items() if not k.startswith("_mu_")},
            cv_accuracy=m.cv.accuracy if m.cv else None, epochs=m.epochs_run,
        ))  # fmt: skip
        return m

    def _origin(self, parent: TaskPath) -> tuple[str, int | None]:
        if parent.task == self.task:
            m = self.population.member_of(parent)
            return (f"self:{m.id}", m.id) if m is not None else ("self", None)
        return (parent.task if parent.task == "root" else f"task:{parent.task}"), None

    # ---- probes --------------------------------------------------------------------------------
    def _probe_generation(self) -> None:
        probes = probe_seeds(
            self._seeds(), self.task, self.labels, self.num_classes, arch=self.ctx.arch, space=self.ctx.space,
            mutator=self.mutator, cache=self.cache, views=self.views, clock=self.clock, folds=self.probe_folds,
            cancel=self.cancel,
        )  # fmt: skip
        for p in probes:
            m = self._add_probe(p)
            self.state.candidates_done += 1
            if self.state.champion is None:  # a new task: its first probe serves at once
                self._publish(m, None)

    def _add_probe(self, p: Probe) -> Member:
        """A head-only path joins with its head fitted on the training part (weight decay by the CV),
        judged on the holdout like every candidate."""
        head = fit_probe_head(p.path, p.features, self.labels, self.train_idx, self.num_classes, p.cv.weight_decay)
        ev = evaluate_logits(head.logits(p.features[0][self.holdout_idx].double()), self.labels[self.holdout_idx])
        p.path.hparams["head_wd"] = p.cv.weight_decay
        origin, parent = self._origin(p.seed)
        m = Member(id=0, kind=Kind.PROBE, evaluation=ev, score=self.score(p.path, ev.accuracy), head_wd=p.cv.weight_decay,
                   origin=origin, parent=parent, seconds=p.seconds, cv=p.cv.evaluation,
                   generation=self.state.generation, path=p.path)  # fmt: skip
        return self._join(m, p.seed)

    def _add_champion(self, champion: Champion) -> None:
        """The served version's recipe joins like a candidate: trained (from where its components
        started) on the training part and judged on the holdout, so that the search builds on it and
        challengers are compared with it on the same images."""
        t0 = time.monotonic()
        r = champion.recipe
        path = self.fitter.fit(r, self.train_idx)
        ev = evaluate_logits(self.fitter.logits(path, self.holdout_idx), self.labels[self.holdout_idx])
        m = Member(id=0, kind=r.kind, evaluation=ev, score=self.score(path, ev.accuracy), head_wd=r.head_wd,
                   origin=f"version:{champion.version}", best_epoch=r.epochs, epochs_run=r.epochs,
                   seconds=time.monotonic() - t0, generation=self.state.generation, path=path)  # fmt: skip
        self._join(m, path)
        self.state.champion, self.state.champion_version = m.id, champion.version

    # ---- candidates ----------------------------------------------------------------------------
    def _train_generation(self, candidates: list[Candidate]) -> None:
        probe_like = head_only(self.ctx.arch)
        for cand in [c for c in candidates if probe_like(c)]:
            self._fit_as_probe(cand)
        candidates = [c for c in candidates if not probe_like(c)]
        if not candidates:
            return
        # A generation shares its data hyperparameters (muNet): the views come from the first child.
        batches = Batches(self.cache, self.labels, self.num_classes, self.train_idx, self.holdout_idx,
                          self.views(candidates[0].path.hparams))  # fmt: skip
        ctx = TrainContext(self.ctx.arch, batches, self.train_cfg, self.cancel, self.clock,
                           root=self.ctx.root.config.to_dict(), shared_ids=frozenset(self.ctx.pool))  # fmt: skip
        done0, finished = self.state.candidates_done, set()

        def report(i: int, fraction: float) -> None:  # candidate i is `fraction` done (any order)
            if fraction >= 1.0:
                finished.add(i)
            self.state.candidates_done = done0 + len(finished)
            self._report("searching")

        results = self.executor.train(candidates, ctx, report)
        self.state.candidates_done = done0 + len(candidates)
        for cand, result in zip(candidates, results, strict=True):
            if result is None or result.evaluation is None:
                continue
            self.state.steps += result.steps
            ev = result.evaluation
            origin, parent = self._origin(cand.parent)
            m = Member(id=0, kind=Kind.TRAINED, evaluation=ev, score=self.score(cand.path, ev.accuracy),
                       head_wd=cand.head_wd, origin=origin, parent=parent, best_epoch=result.best_epoch,
                       epochs_run=result.epochs, seconds=result.seconds, generation=self.state.generation,
                       path=cand.path)  # fmt: skip
            self._join(m, cand.parent, accepted=Population.beats_parent(m, cand.parent_member))

    def _fit_as_probe(self, cand: Candidate) -> None:
        """A child that trains nothing but its head (a path unchanged but for its hyperparameters or a
        removed layer) is fitted as a probe: SGD on a head alone only moves it off the converged fit,
        and the best of its checkpoints on the holdout flatters it."""
        t0 = time.monotonic()
        feats = probe_features(cand.path, self.ctx.arch, self.cache, self.views(cand.path.hparams))
        cv = cross_validate(feats, self.labels, self.num_classes, self.probe_folds)
        self._add_probe(Probe(cand.path, cand.parent, feats, cv, time.monotonic() - t0))
        self.state.candidates_done += 1

    # ---- champion and challengers --------------------------------------------------------------
    def _challenge(self) -> None:
        """Judge the members that promise to beat the champion, and publish one that does: the best
        such probe (cheap: head fits), then the best such trained member."""
        for m in self._challengers():
            if self.state.champion is None:
                return
            champion = self.population[self.state.champion]
            if self._judgement_seconds(m, champion) > self.clock.left():
                log.info("task %s: member %d promises to beat the champion; no time left to judge it", self.task, m.id)
                return
            self._report("judging")
            m.judged = True
            try:
                decision = self.judge.decide((m.id, self.recipe(m)), (champion.id, self.recipe(champion)), m.kind.value)
            except OutOfTime:
                log.info("task %s: the clock ran out while judging member %d; the champion stays", self.task, m.id)
                return
            self.state.decisions.append(decision)
            log.info("task %s: %s", self.task, decision.reason)
            if decision.publish:
                self._publish(m, decision)

    def _challengers(self) -> list[Member]:
        """The best unjudged probe and trained member that beat the champion on the holdout: nominated
        there, judged on the other images. One of each: every new test makes a win of its kind
        harder (judge.py). A probe's cross-validation counts the judged images, so it nominates none."""
        if self.state.champion is None:
            return []
        champion = self.population[self.state.champion]
        fresh = [m for m in self.population.ranked() if not m.judged and m is not champion and m.key() > champion.key()]
        probes = [m for m in fresh if m.kind == Kind.PROBE][:1]
        trained = [m for m in fresh if m.kind != Kind.PROBE][:1]
        return probes + trained

    def _judgement_seconds(self, m: Member, champion: Member) -> float:
        """What judging `m` and refitting it would take, by its own training's pace."""
        def retraining(x: Member) -> float:
            per_epoch = x.seconds / max(1, x.epochs_run) if x.kind == Kind.TRAINED else x.seconds
            return per_epoch * max(1, self.recipe(x).epochs)

        mine = self.judge.retrainings() * retraining(m)
        theirs = 0.0 if self.judge.known(champion.id) else self.judge.retrainings() * retraining(champion)
        return mine + theirs

    def _publish(self, m: Member, decision: Decision | None) -> None:
        """Refit the member's recipe on every labelled image and publish it as the next version. A
        trained refit that gets fewer of its own training images right than the judgement's estimate
        diverged on the larger set: the champion stays."""
        self._report("refitting")
        recipe = self.recipe(m)
        try:
            path = self.fitter.fit(recipe, self.all_idx)
        except OutOfTime:
            log.info("task %s: the clock ran out while refitting member %d; the champion stays", self.task, m.id)
            return
        if decision is not None:
            refit = float(self.fitter.correct(path, self.all_idx).float().mean())
            if refit < decision.challenger_accuracy:
                log.warning("task %s: the refit gets %.3f of its training images right, below its estimate %.3f; "
                            "the champion stays", self.task, refit, decision.challenger_accuracy)  # fmt: skip
                return
            estimate, judged_on = decision.challenger_accuracy, decision.size
            probe_estimate = self._probe_estimate()
        else:
            assert m.cv is not None
            estimate = probe_estimate = m.cv.accuracy
            judged_on = len(self.labels)
        pub = Publication(version=0, member=m.id, kind=m.kind, estimate=estimate, judged_on=judged_on,
                          probe_estimate=probe_estimate, seconds=self.clock.elapsed(), epochs=recipe.epochs,
                          decision=decision)  # fmt: skip
        self._report("publishing")
        pub.version = self.publish_fn(path, m, pub)
        self.state.publications.append(pub)
        self.state.champion, self.state.champion_version = m.id, pub.version
        log.info("task %s: version %d serves (%s, estimate %.3f on %d images)", self.task, pub.version,
                 m.kind.value, estimate, judged_on)  # fmt: skip
        self._checkpoint()

    def _probe_estimate(self) -> float:
        """The best probe's accuracy on the judged images: what a linear probe reaches there."""
        probes = self.population.probes()
        if not probes:
            return 0.0
        best = max(probes, key=lambda p: p.cv.key() if p.cv else p.evaluation.key())
        try:
            return float(self.judge.right(best.id, self.recipe(best)).float().mean())
        except OutOfTime:
            return best.cv.accuracy if best.cv else best.evaluation.accuracy

    # ---- reporting and checkpoints -------------------------------------------------------------
    def _report(self, phase: str) -> None:
        if self.progress is None:
            return
        best = self.population.best()
        last = self.state.publications[-1] if self.state.publications else None
        champion = self.population[self.state.champion] if self.state.champion is not None else None
        self.progress(SearchProgress(
            phase=phase, generation=max(0, self.state.generation - 1), generations_total=self.budget.generations,
            candidates_done=self.state.candidates_done, best_accuracy=best.evaluation.accuracy if best else 0.0,
            best_score=best.score if best else 0.0,
            params_added=sum(c.num_params for c in best.path.trainable()) if best else 0,
            elapsed=self.clock.elapsed(), eta=self.clock.left(), serving_version=self.state.champion_version,
            serving_kind=champion.kind.value if champion else "", serving_estimate=last.estimate if last else 0.0,
        ))  # fmt: skip

    def _checkpoint(self) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(*self.checkpoint())

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON-able state plus the members' draft tensors."""
        rng = self.rng.getstate()
        self.state.rng = [rng[0], list(rng[1]), rng[2]]
        self.state.elapsed = self.clock.elapsed()
        self.state.members = self.population.members
        tensors: dict[str, torch.Tensor] = {}
        paths = [path_to_state(m.path, str(m.id), self.ctx.pool, tensors) for m in self.population.members]
        tensors.update(self.judge.saved_tests())
        return {"search": to_json(self.state), "paths": paths}, tensors

    def restore(self, saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Continue a checkpointed search; a champion published since (the checkpoint after a
        publication was lost) replaces the checkpoint's."""
        state = from_json(SearchState, saved["search"])
        for m, d in zip(state.members, saved["paths"], strict=True):
            m.path = path_from_state(d, tensors, self.ctx.pool, self.ctx.arch, self.ctx.device)
        for m in state.members:  # muNet inherits layers along a path's ancestors
            m.path.parent = state.members[m.parent].path if m.parent is not None else None
        self.state = state
        self.population = Population(state.members)
        self.judge.restore_tests(tensors)
        self.clock.resume(spent=state.elapsed)
        r = state.rng
        if r:
            self.rng.setstate((r[0], tuple(r[1]), r[2]))
        if self.served is not None and self.served.version != state.champion_version:
            self._add_champion(self.served)

