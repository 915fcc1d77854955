"""The probe generation: every seed's head fitted to convergence (L-BFGS) on its frozen features, the
image size and weight decay chosen by k-fold cross-validation over every labelled image.

The root comes first, at every probed size (largest first: ImageNet features like large images), so
the first probe is ready in seconds; then the root without its top PROBE_DEPTHS blocks at its best size
(earlier, less ImageNet-specific features: the probes idle rounds published were these); then the other
seeds (newest tasks first) at that size, while the probes have used less than PROBE_SHARE of the
budget: with many committed tasks or a large upload, muNet's seed phase would otherwise eat the whole
search."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from munet_server.errors import Cancelled
from munet_server.evolve.clock import Clock
from munet_server.evolve.features import FeatureCache, View
from munet_server.evolve.heads import CVResult, cross_validate, stratified_folds
from munet_server.evolve.mutations import Mutator
from munet_server.evolve.train import probe_features, split_path
from munet_server.model.arch import Architecture
from munet_server.model.hparams import SearchSpace
from munet_server.model.path import TaskPath

PROBE_SHARE = 0.4  # of the budget, at most, for probes beyond the root's first size
PROBE_DEPTHS = 2  # shallower root probes: num_layers one and two below the root's
PROBE_CHUNK = 8  # seed probe paths built at a time (their shared prefixes are cached within one)
CV_FOLDS = 5  # k of the probes' cross-validation (3 from 1,000 images)


@dataclass
class Probe:
    path: TaskPath
    seed: TaskPath  # the path it was made from
    features: list[torch.Tensor]  # pooled head inputs per view, every image
    cv: CVResult
    seconds: float


def probe_sizes(space: SearchSpace, default: int) -> tuple[int, ...]:
    """The image sizes the probe compares: the default, the largest, and one between."""
    sizes = space.sizes
    mid = sizes[min(range(len(sizes)), key=lambda i: abs(sizes[i] - (default + sizes[-1]) / 2))]
    return tuple(sorted({default, mid, sizes[-1]}))


def probe_folds(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    k = max(2, min(CV_FOLDS if len(labels) < 1000 else 3, int(torch.bincount(labels).min())))
    return stratified_folds(labels, k, seed)


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


def probe_seeds(
    seeds: list[TaskPath],
    task: str,
    labels: torch.Tensor,
    num_classes: int,
    *,
    arch: Architecture,
    space: SearchSpace,
    mutator: Mutator,
    cache: FeatureCache,
    views: Callable[[dict[str, Any]], list[View]],
    clock: Clock,
    folds: list[torch.Tensor],
    cancel: threading.Event | None = None,
) -> Iterator[Probe]:
    """Yield each probe as it is fitted: the root's at every size, then each other seed's at the
    root's best size. `seeds`: muNet's order, newest tasks first and the root last."""
    root, others = seeds[-1], seeds[:-1]
    default = int(root.hparams["ds_image_size"])
    best: tuple[float, float] | None = None
    best_size = default
    last = 0.0  # the last probe's seconds: a probe is not started if it would end past the share

    def paths(size: int, which: list[TaskPath], **hp_set: Any) -> Iterator[tuple[TaskPath, TaskPath, tuple[int, ...]]]:
        for at in range(0, len(which), PROBE_CHUNK):  # a few at a time: probes the share stops cost nothing
            chunk = which[at : at + PROBE_CHUNK]
            made = []
            for s in chunk:
                hp = mutator.fix_architecture({**copy.deepcopy(s.hparams), "ds_image_size": size, **hp_set})
                made.append(mutator.make_child(s, task, num_classes, hp, mutate=False))
            keys = [tuple(split_path(p, arch).prefix_ids) for p in made]
            yield from zip(chunk, made, branch_points(keys))

    def share_spent() -> bool:  # the next probe, as long as the last, would end past the share
        return clock.expired() or clock.elapsed() + last > PROBE_SHARE * clock.seconds

    def fit(path: TaskPath, keep: tuple[int, ...]) -> tuple[list[torch.Tensor], CVResult, float]:
        if cancel is not None and cancel.is_set():
            raise Cancelled("the operation was cancelled")
        t0 = time.monotonic()
        feats = probe_features(path, arch, cache, views(path.hparams), keep)
        return feats, cross_validate(feats, labels, num_classes, folds), time.monotonic() - t0

    for i, size in enumerate(sorted(probe_sizes(space, default), reverse=True)):
        if i > 0 and share_spent():
            break
        for s, path, keep in paths(size, [root]):
            feats, cv, last = fit(path, keep)
            if best is None or cv.evaluation.key() > best:
                best, best_size = cv.evaluation.key(), size
            yield Probe(path, s, feats, cv, last)
    depth = int(root.hparams["num_layers"])
    for layers in range(depth - 1, max(0, depth - 1 - PROBE_DEPTHS), -1):
        if share_spent():
            break
        for s, path, keep in paths(best_size, [root], num_layers=layers):
            feats, cv, last = fit(path, keep)
            yield Probe(path, s, feats, cv, last)
    for s, path, keep in paths(best_size, others):
        if share_spent():
            break
        feats, cv, last = fit(path, keep)
        yield Probe(path, s, feats, cv, last)
