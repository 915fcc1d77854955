"""Learn a task: one way, whoever asks (AddTask, ImproveTask, idle improvement, the benchmarks, the
tests), so that what a benchmark measures is exactly what the server does.

    learn(system, spec, dataset, champion=None)      a new task: its first probe is published as
                                                     version 1 within seconds, then the search goes on
    learn(system, spec, dataset, champion_of(...))   a served task: the served version is the champion

Either way a challenger is published as the next version only when it beats the champion on images
neither was selected on (evolve/judge.py); nothing committed changes: other tasks' outputs stay
bit-identical, and so do this task's earlier versions.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from munet_server.data.dataset import ImageDataset
from munet_server.evolve.clock import Clock
from munet_server.evolve.executors import Executor
from munet_server.evolve.population import Kind, Member
from munet_server.evolve.recipes import Recipe
from munet_server.evolve.search import Champion, Publication, Search, SearchProgress, SearchState
from munet_server.model.components import Component, content_id, tensors_of
from munet_server.model.path import TaskPath
from munet_server.spec import AddTaskSpec
from munet_server.store.records import TaskRecord
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import GOLDEN_IMAGES, MunetSystem

Checkpoint = tuple[dict[str, Any], dict[str, torch.Tensor]]
T = TypeVar("T")


def _every_layer_resident(fn: Callable[..., T]) -> Callable[..., T]:
    """A search probes every task's path and may clone any layer: none goes to disk while it runs
    (--max-resident-mb)."""

    @functools.wraps(fn)
    def wrapper(system: MunetSystem, *args: Any, **kwargs: Any) -> T:
        with system.residency.hold_all():
            return fn(system, *args, **kwargs)

    return wrapper


@dataclass
class Learned:
    task: str
    state: SearchState  # the search: its members, history, judgements and publications
    records: list[TaskRecord] = field(default_factory=list)  # the versions it published, in order
    served_version: int = 0  # what the task serves afterwards (0: nothing, the search was cut short)

    @property
    def publications(self) -> list[Publication]:
        return self.state.publications

    @property
    def record(self) -> TaskRecord | None:
        """The last version it published (None: none)."""
        return self.records[-1] if self.records else None


@_every_layer_resident
def learn(
    system: MunetSystem,
    spec: AddTaskSpec,
    dataset: ImageDataset,
    *,
    champion: Champion | None = None,
    dataset_id: str = "",
    operation: str = "",
    clock: Clock | None = None,
    progress: Callable[[SearchProgress], None] | None = None,
    cancel: threading.Event | None = None,
    executor: Executor | None = None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None,
    on_publish: Callable[[TaskRecord], None] | None = None,
) -> Learned:
    """Search for `spec.name` on `dataset` until the clock (default: the spec's budget) runs out,
    publishing every challenger that beats the champion. `champion`: the served version, or None
    for a new task."""
    floor, stem = system.clone_floor()
    learned = Learned(spec.name, SearchState(), served_version=champion.version if champion else 0)

    def publish(path: TaskPath, member: Member, pub: Publication) -> int:
        metrics = _metrics(system, spec, dataset, search, member, pub, operation).to_dict()
        if learned.records or champion is not None:
            record = system.commit_version(spec.name, path, metrics)
        else:
            golden = dataset.images[search.holdout_idx[:GOLDEN_IMAGES]]
            record = system.commit(spec.name, dataset.class_names, path, metrics, dataset_id, golden)
        learned.records.append(record)
        learned.served_version = record.version
        if on_publish is not None:
            on_publish(record)
        return record.version

    search = Search(
        system,
        spec.name,
        dataset,
        spec.search_config(clone_floor=floor, clone_stem=stem),
        publish=publish,
        champion=champion,
        clock=clock,
        progress=progress,
        cancel=cancel,
        on_checkpoint=on_checkpoint,
        executor=executor,
    )
    if resume is not None:
        search.restore(*resume)
    learned.state = search.run()
    return learned


def champion_of(system: MunetSystem, task: str) -> Champion:
    """The served version of `task` as a recipe: its head and the components the task made itself
    become drafts that start from what they were cloned from (a component committed before origins
    were kept starts from the root's layer in its slot, or fresh), the others stay shared and frozen."""
    e = system.entry(task)
    m = TaskMetrics.of(e.record)
    root = {c.spec.name: c for c in system.root_path.components}
    comps = []
    for c in e.path.components:
        # A head is always the task's own to retrain, even when its content matches another task's
        # (two tasks learned on the same images share one stored head).
        if (c.owner != task and c.spec.kind != "head") or _derived(system, c):
            comps.append(c)
            continue
        start = system.pool.get(c.origin) if c.origin else root.get(c.spec.name)
        if start is not None and start.spec != c.spec:
            start = None
        module = copy.deepcopy(start.module) if start is not None else system.arch.fresh(c.spec)
        module.to(system.device).requires_grad_(True)
        comps.append(Component(c.spec, module, frozen=False, origin=start.id if start is not None else ""))
    path = TaskPath(task=task, hparams=copy.deepcopy(e.path.hparams), components=comps)
    kind = Kind(m.kind) if m.kind in Kind._value2member_map_ else Kind.PROBE
    epochs = 0 if kind == Kind.PROBE else max(1, m.recipe_epochs)
    head_wd = float(path.hparams.get("head_wd", 1e-3))
    return Champion(Recipe(path, kind, head_wd, epochs), e.record.version)


def _derived(system: MunetSystem, c: Component) -> bool:
    """A position embedding resampled from the root's for a new image size, never trained: it is
    part of the recipe as it is."""
    return c.spec.kind == "posembed" and c.id == content_id(c.spec, tensors_of(system.arch.fresh(c.spec)))


def _metrics(
    system: MunetSystem, spec: AddTaskSpec, dataset: ImageDataset, search: Search, member: Member,
    pub: Publication, operation: str,
) -> TaskMetrics:  # fmt: skip
    state = search.state
    best_probe = max(search.population.probes(), key=lambda p: p.cv.key() if p.cv else p.evaluation.key())
    return TaskMetrics(
        kind=member.kind.value,
        validation_accuracy=pub.estimate,
        holdout_size=pub.judged_on,
        probe_validation_accuracy=pub.probe_estimate,
        gain_over_probe=pub.estimate - pub.probe_estimate,
        probe_cv_accuracy=best_probe.cv.accuracy if best_probe.cv else best_probe.evaluation.accuracy,
        score=search.score(member.path, pub.estimate),
        scale_factor=spec.scale_factor,
        recipe_epochs=pub.epochs,
        image_size=int(member.path.hparams["ds_image_size"]),
        chance_accuracy=float(torch.bincount(dataset.labels).max()) / len(dataset),
        num_examples=len(dataset),
        search_seconds=pub.seconds,
        candidates=state.candidates_done,
        generations=max(0, state.generation - 1),
        improved_from=state.champion_version if pub.decision is not None else 0,
        decision=asdict(pub.decision) if pub.decision is not None else None,
        operation=operation,
        history=[asdict(h) for h in state.history],
    )
