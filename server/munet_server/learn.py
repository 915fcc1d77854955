"""Learn one task: search, refit, commit. The one way a task is learned, whoever asks; and learn it
again later (ImproveTask: muNet's next task iteration, published as a new version).

The operation behind AddTask, the benchmarks and the tests all call `learn_task`, so what a benchmark
measures is exactly what the server does.

    dataset (decoded upload) -> EvolutionSearch (probes, structured and evolved candidates, refit)
                             -> MunetSystem.commit (freeze, content ids, one shard + one LMDB txn)
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

from munet_server.data.dataset import ImageDataset
from munet_server.errors import Cancelled
from munet_server.evolve.budget import Budget
from munet_server.evolve.search import EvolutionSearch, Executor, Incumbent, SearchProgress, SearchResult
from munet_server.model.components import Component, content_id, tensors_of
from munet_server.model.path import TaskPath
from munet_server.spec import AddTaskSpec
from munet_server.store.records import TaskRecord
from munet_server.system import PROBE_EXAMPLES, MunetSystem

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
    record: TaskRecord
    result: SearchResult


@_every_layer_resident
def learn_task(
    system: MunetSystem,
    spec: AddTaskSpec,
    dataset: ImageDataset,
    *,
    dataset_id: str = "",
    progress: Callable[[SearchProgress], None] | None = None,
    cancel: threading.Event | None = None,
    executor: Executor | None = None,
    resume: Checkpoint | None = None,
    on_generation: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Learned:
    """Search a path for `spec.name` on `dataset`, refit it on every image, and commit it."""
    floor, stem = system.clone_floor()
    search = EvolutionSearch(
        system,
        spec.name,
        dataset,
        spec.search_config(clone_floor=floor, clone_stem=stem),
        progress=progress,
        cancel=cancel,
        on_generation=on_generation,
        executor=executor,
    )
    if resume is not None:
        search.restore(*resume)
    result = search.run()
    if cancel is not None and cancel.is_set():
        raise Cancelled("the operation was cancelled")
    if before_commit is not None:
        before_commit()
    metrics = _metrics(system, spec, dataset, search, result)
    probe_images = dataset.images[result.holdout_idx[:PROBE_EXAMPLES]]
    record = system.commit(spec.name, dataset.class_names, result.best, metrics, dataset_id, probe_images)
    return Learned(record, result)


@dataclass
class Improved:
    record: TaskRecord | None  # the new version; None when the served version stays
    served_version: int  # the version the task serves afterwards
    result: SearchResult


@_every_layer_resident
def improve_task(
    system: MunetSystem,
    spec: AddTaskSpec,
    dataset: ImageDataset,
    *,
    progress: Callable[[SearchProgress], None] | None = None,
    cancel: threading.Event | None = None,
    executor: Executor | None = None,
    resume: Checkpoint | None = None,
    on_generation: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Improved:
    """muNet's next task iteration (ImproveTask): search again for a committed task, on its stored
    images, from every other task's path (those added since included) and its own served version's
    recipe; publish a new version only if the new path beats that recipe on the same images.
    Nothing committed changes: other tasks' outputs stay bit-identical, and so do this task's
    earlier versions."""
    current = system.entry(spec.name).record
    floor, stem = system.clone_floor()
    search = EvolutionSearch(
        system,
        spec.name,
        dataset,
        spec.search_config(clone_floor=floor, clone_stem=stem),
        progress=progress,
        cancel=cancel,
        on_generation=on_generation,
        executor=executor,
        incumbent=incumbent(system, spec.name),
    )
    if resume is not None:
        search.restore(*resume)
    result = search.run()
    if cancel is not None and cancel.is_set():
        raise Cancelled("the operation was cancelled")
    if not result.publish:
        return Improved(None, current.version, result)
    if before_commit is not None:
        before_commit()
    metrics = _metrics(system, spec, dataset, search, result)
    vs = result.versus_current
    metrics["improved_from"] = current.version
    metrics["versus_current"] = asdict(vs) if vs is not None else None
    record = system.commit_version(spec.name, result.best, metrics)
    return Improved(record, record.version, result)


def incumbent(system: MunetSystem, task: str) -> Incumbent:
    """The served version of `task` as a recipe: its head and the components the task made itself become drafts
    that start from what they were cloned from (a component committed before origins were kept
    starts from the root's layer in its slot, or fresh), the others stay shared and frozen."""
    e = system.entry(task)
    m = e.record.metrics
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
    kind = str(m.get("kind", "probe"))
    epochs = int(m.get("recipe_epochs", 0)) or (0 if kind == "probe" else Budget().epochs)
    head_wd = float(path.hparams.get("head_wd", 1e-3))
    return Incumbent(path, kind, head_wd, epochs, e.record.version)


def _derived(system: MunetSystem, c: Component) -> bool:
    """A position embedding resampled from the root's for a new image size, never trained: it is
    part of the recipe as it is."""
    return c.spec.kind == "posembed" and c.id == content_id(c.spec, tensors_of(system.arch.fresh(c.spec)))


def _metrics(
    system: MunetSystem, spec: AddTaskSpec, dataset: ImageDataset, search: EvolutionSearch, result: SearchResult
) -> dict[str, Any]:
    m, probe = result.member, result.probe
    estimate, probe_estimate, judged = m.evaluation.accuracy, probe.evaluation.accuracy, result.holdout_size
    if (conf := result.confirmation) is not None:
        # The confirmation judged both on images the search did not select on: the unbiased estimate.
        estimate = conf.trained_accuracy if conf.kept and not result.refit_failed else conf.probe_accuracy
        probe_estimate, judged = conf.probe_accuracy, conf.size
    if (vs := result.versus_current) is not None:  # ImproveTask: judged against the served version
        estimate, judged = vs.trained_accuracy, vs.size
        probe_estimate = result.probe_versus if result.probe_versus is not None else probe_estimate
    return {
        # The committed path's accuracy on images it did not train on, measured before its refit on
        # every image: the confirmation's where one ran, else the holdout's.
        "validation_accuracy": estimate,
        "validation_nll": m.evaluation.nll,
        "holdout_size": judged,
        # What the best seed's converged linear probe reaches on the same images.
        "probe_validation_accuracy": probe_estimate,
        "probe_cv_accuracy": probe.cv.accuracy if probe.cv else probe.evaluation.accuracy,
        "gain_over_probe": estimate - probe_estimate,
        "selection_holdout_accuracy": m.evaluation.accuracy,
        "confirmation": asdict(conf) if conf is not None else None,
        # The judgement the budget left no time for (a trained path then gives way to the probe).
        "out_of_time": result.out_of_time,
        # A trained winner's refit on every labelled image, on those images; a refit below its
        # recipe's estimate is not committed (the probe is, or the served version stays).
        "refit_train_accuracy": result.refit_accuracy,
        "refit_failed": result.refit_failed,
        "chance_accuracy": float(torch.bincount(dataset.labels).max()) / len(dataset),
        "kind": m.kind,
        "recipe_epochs": search.recipe_epochs(m),
        "score": m.score,
        "params_accounted": system.accounted_params(result.best, spec.name),
        "scale_factor": spec.scale_factor,
        "search_seconds": result.seconds,
        "search_steps": result.steps,
        "candidates": len(result.history),
        "generations": max((h.generation for h in result.history), default=0),
        "num_examples": len(dataset),
        "image_size": int(result.best.hparams["ds_image_size"]),
        "history": [asdict(h) for h in result.history],
    }
