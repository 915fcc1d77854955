"""Learn one task: search, refit, commit. The one way a task is learned, whoever asks.

The operation behind AddTask, the benchmarks and the tests all call `learn_task`, so what a benchmark
measures is exactly what the server does.

    dataset (decoded upload) -> EvolutionSearch (probes, structured and evolved candidates, refit)
                             -> MunetSystem.commit (freeze, content ids, one shard + one LMDB txn)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from munet_server.data.dataset import ImageDataset
from munet_server.errors import Cancelled
from munet_server.evolve.search import EvolutionSearch, Executor, SearchProgress, SearchResult
from munet_server.spec import AddTaskSpec
from munet_server.store.records import TaskRecord
from munet_server.system import PROBE_EXAMPLES, MunetSystem

Checkpoint = tuple[dict[str, Any], dict[str, torch.Tensor]]


@dataclass
class Learned:
    record: TaskRecord
    result: SearchResult


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
    m, probe = result.member, result.probe
    estimate, probe_estimate, judged = m.evaluation.accuracy, probe.evaluation.accuracy, result.holdout_size
    if (conf := result.confirmation) is not None:
        # The confirmation judged both on images the search did not select on: the unbiased estimate.
        estimate = conf.trained_accuracy if conf.kept else conf.probe_accuracy
        probe_estimate, judged = conf.probe_accuracy, conf.size
    metrics: dict[str, Any] = {
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
        "chance_accuracy": float(torch.bincount(dataset.labels).max()) / len(dataset),
        "kind": m.kind,
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
    probe_images = dataset.images[result.holdout_idx[:PROBE_EXAMPLES]]
    record = system.commit(spec.name, dataset.class_names, result.best, metrics, dataset_id, probe_images)
    return Learned(record, result)
