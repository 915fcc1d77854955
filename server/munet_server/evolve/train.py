"""Training one candidate: its trainable suffix, in epochs, on cached inputs (docs/LEARNING.md).

What stays muNet's (docs/METHOD.md §3-4): only the candidate's draft components train; SGD with
optional (Nesterov) momentum, global-norm clipping at 1.0, the `opt_*` schedules (cosine: linear
warmup from lr/100 then cosine decay; constant: 0.5 x lr; restarts: one warmup+cosine cycle per
epoch); the candidate keeps its best validated checkpoint.

What changes, each measured in docs/LEARNING.md:
- the frozen prefix runs once per image and view (`FeatureCache`), only the suffix trains;
- a budget in epochs over every training image, not a handful of clipped steps;
- a new head starts from a converged linear probe of the child's own features (LP-FT), and is not
  clipped with the body (the convex part needs no protection; clipping starved it);
- BatchNorm layers of draft components keep their running statistics (eval mode, affine trainable):
  batch statistics of 32 small images overwrote them and broke fine-tuning; a fresh adapter's
  BatchNorm is calibrated once on the task's images instead;
- the checkpoint is chosen on a fixed holdout by accuracy, then NLL (a continuous tie-break).
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from munet_server.errors import Cancelled
from munet_server.evolve.clock import Clock
from munet_server.evolve.features import FeatureCache, View, pool
from munet_server.evolve.heads import Evaluation, LinearHead, evaluate_logits, fit_head
from munet_server.model.arch import Architecture, Step
from munet_server.model.components import Component
from munet_server.model.path import TaskPath
from munet_server.priority import GATE

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # per trained candidate, over every training image (a random view each time)
    batch_size: int = 32
    grad_clip: float = 1.0  # muNet's global-norm clip, over the body's gradients
    eval_every: int = 1  # epochs between holdout evaluations (the last epoch is always evaluated)


@dataclass
class Batches:
    """The labelled examples a candidate sees: indices into the cache, labels, training views."""

    cache: FeatureCache
    labels: torch.Tensor  # (N,) over every labelled image
    num_classes: int
    train: torch.Tensor  # indices of the training images
    holdout: torch.Tensor  # indices of the validation images (empty when refitting on everything)
    views: list[View]  # training views; views[0] is the clean view, the one validated on


class OutOfTime(Exception):
    """A retraining that must finish (`must_finish`) ran out of its clock: its result would be a model
    trained for less than its recipe says."""


@dataclass
class TrainResult:
    evaluation: Evaluation | None  # on the holdout, at the kept checkpoint; None when refitting
    best_epoch: int  # epochs trained up to the kept checkpoint (what a refit repeats)
    epochs: int  # epochs run
    steps: int
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, accuracy, nll)


# ---- the path as prefix + suffix -------------------------------------------------------------------
@dataclass
class Split:
    """A path's steps cut at its first trainable one."""

    prefix: list[Step]
    prefix_ids: list[str]  # one key per prefix step: the ids of the frozen components it runs
    suffix: list[Step]
    drafts: list[Component]

    @property
    def head_only(self) -> bool:
        return len(self.suffix) == 1 and [c.spec.kind for c in self.drafts] == ["head"]


def split_path(path: TaskPath, arch: Architecture) -> Split:
    by_module = {id(c.module): c for c in path.components}
    steps = arch.steps([c.module for c in path.components])
    cut = len(steps)
    for j, (mods, _) in enumerate(steps):
        if any(not by_module[id(m)].frozen for m in mods):
            cut = j
            break
    ids = ["+".join(by_module[id(m)].id for m in mods) for mods, _ in steps[:cut]]
    return Split(steps[:cut], ids, steps[cut:], path.trainable())


# ---- learning rate (muNet's schedules) ---------------------------------------------------------------
def learning_rate(step: int, total: int, interval: int, hp: dict[str, Any]) -> float:
    lr = float(hp["opt_lr"])
    schedule = hp["opt_lr_schedule"]
    if schedule == "constant":
        return 0.5 * lr
    if schedule == "restarts":  # SGDR: one warmup + cosine cycle per epoch
        step, total = step % interval, interval
    warmup = int(float(hp["opt_lr_warmup_ratio"]) * total)
    if step < warmup:
        return lr / 100 + (lr - lr / 100) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(body: list[nn.Parameter], head: list[nn.Parameter], hp: dict[str, Any]) -> torch.optim.SGD:
    momentum = hp.get("opt_momentum")
    groups = [g for g in ({"params": body}, {"params": head}) if g["params"]]
    return torch.optim.SGD(
        groups,
        lr=float(hp["opt_lr"]),
        momentum=float(momentum or 0.0),
        nesterov=bool(hp.get("opt_nesterov")) and bool(momentum),
    )


def _bn_eval(drafts: list[Component]) -> None:
    """Draft modules train, but their BatchNorm layers normalise with (and keep) running statistics."""
    for c in drafts:
        c.module.train()
        for m in c.module.modules():
            if isinstance(m, BATCHNORMS):
                m.eval()


def _run(steps: list[Step], x: torch.Tensor) -> torch.Tensor:
    with _autocast(x.device):
        for _, fn in steps:
            x = fn(x)
    return x.float()


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA devices that have it; never on a CPU (4.7x slower without native bf16, measured)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the candidate ---------------------------------------------------------------------------------
class CandidateTrainer:
    """Trains one candidate path's drafts in place; see the module docstring."""

    def __init__(
        self,
        path: TaskPath,
        arch: Architecture,
        data: Batches,
        cfg: TrainConfig,
        *,
        seed: int,
        head_wd: float,
        fit_head_first: bool = True,
        cancel: threading.Event | None = None,
        clock: Clock | None = None,
        must_finish: bool = False,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self.path = path
        self.split = split_path(path, arch)
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.head_wd = head_wd
        self.fit_head_first = fit_head_first
        self.cancel = cancel
        # A candidate stops training when the clock runs out and keeps its best checkpoint so far; a
        # retraining whose whole result is needed (a judgement's fold, a refit) raises OutOfTime.
        self.clock = clock
        self.must_finish = must_finish
        self.on_step = on_step
        self.device = data.cache.device
        self._inputs: dict[str, torch.Tensor] = {}

    # -- inputs --
    def inputs(self, view: View) -> torch.Tensor | None:
        """Cached prefix outputs for every image in this view (None: nothing is frozen)."""
        if not self.split.prefix:
            return None
        if view.key not in self._inputs:
            self._inputs[view.key] = self.data.cache.get(self.split.prefix, self.split.prefix_ids, view)
        return self._inputs[view.key]

    def batch(self, view: View, index: torch.Tensor) -> torch.Tensor:
        held = self.inputs(view)
        if held is None:
            return self.data.cache.view_input(view, index)
        return held[index.to(held.device)].float()

    def _forward(self, steps: list[Step], view: View, index: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(index), 128):
            out.append(_run(steps, self.batch(view, index[i : i + 128])))
        return torch.cat(out)

    # -- set-up before training --
    @torch.no_grad()
    def calibrate_adapters(self) -> None:
        """A new adapter's BatchNorm gets the statistics of its real input (one pass, no gradient)."""
        fresh = [
            m
            for c in self.split.drafts
            if c.spec.kind == "adapter"
            for m in c.module.modules()
            if isinstance(m, BATCHNORMS) and int(m.num_batches_tracked) == 0
        ]
        if not fresh:
            return
        for m in fresh:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the whole pass
            m.train()
        # Adapters start as the identity, so one pass calibrates them all.
        self._forward(self.split.suffix[:-1], self.data.views[0], self.data.train)
        for m in fresh:
            m.momentum = 0.1
            m.eval()

    @torch.no_grad()
    def warm_start_head(self) -> None:
        """LP-FT: fit a new head to convergence on the features the child starts with (a head inherited
        from a same-task parent is already fitted and is kept)."""
        head = self.path.components[-1]
        if head.frozen or not self.fit_head_first:
            return
        for c in self.split.drafts:
            c.module.eval()
        feats = [pool(self._forward(self.split.suffix[:-1], v, self.data.train)) for v in self.data.views]
        labels = self.data.labels[self.data.train].repeat(len(feats))
        fit = fit_head(torch.cat(feats), labels, self.data.num_classes, self.head_wd)
        fit.load_into(head.module.fc)

    def _out_of_time(self) -> bool:
        """True when the clock has run out (a candidate then stops); OutOfTime for a retraining."""
        if self.clock is None or not self.clock.expired():
            return False
        if self.must_finish:
            raise OutOfTime(f"{self.path.task}: the clock ran out before the retraining finished")
        return True

    # -- evaluation --
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        for c in self.split.drafts:
            c.module.eval()
        logits = self._forward(self.split.suffix, self.data.views[0], self.data.holdout)
        return evaluate_logits(logits.cpu(), self.data.labels[self.data.holdout])

    # -- training --
    def run(self, epochs: int | None = None) -> TrainResult:
        """Train for `epochs` (default: the config's) on the learning-rate schedule of the config's
        full epochs, so that a refit stopping at a candidate's best epoch retraces its trajectory."""
        t0 = time.monotonic()
        cfg, data = self.cfg, self.data
        epochs = cfg.epochs if epochs is None else epochs
        self.calibrate_adapters()
        self.warm_start_head()
        for view in data.views:  # a child that kept its parent's head has not cached its prefix yet
            self.inputs(view)
        head = self.path.components[-1]
        head_params = list(head.module.parameters()) if not head.frozen else []
        body = [p for c in self.split.drafts if c is not head for p in c.module.parameters() if p.requires_grad]
        opt = _optimizer(body, head_params, self.path.hparams)
        n = len(data.train)
        per_epoch = max(1, math.ceil(n / cfg.batch_size))
        total = max(epochs, cfg.epochs) * per_epoch

        gen = torch.Generator().manual_seed(self.seed)
        validate = len(data.holdout) > 0
        best: tuple[tuple[float, float], int, list[dict[str, torch.Tensor]]] | None = None
        history: list[tuple[int, float, float]] = []
        step = epoch = 0
        stopped = False
        for epoch in range(1, epochs + 1):
            _bn_eval(self.split.drafts)
            order = data.train[torch.randperm(n, generator=gen)]
            view_of = torch.randint(0, len(data.views), (n,), generator=gen)
            for b in range(per_epoch):
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled("the operation was cancelled")
                if self._out_of_time() and step > 0:
                    stopped = True
                    break
                if self.clock is not None and self.clock.background:
                    GATE.wait_for_quiet(lambda: self.clock.stopped or bool(self.cancel and self.cancel.is_set()))
                GATE.yield_to_serving(self.device)
                sel = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
                idx, vs = order[sel], view_of[sel]
                x = torch.cat([self.batch(data.views[v], idx[vs == v]) for v in vs.unique().tolist()])
                y = torch.cat([data.labels[idx[vs == v]] for v in vs.unique().tolist()]).to(self.device)
                lr = learning_rate(step, total, per_epoch, self.path.hparams)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = F.cross_entropy(_run(self.split.suffix, x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if body:
                    torch.nn.utils.clip_grad_norm_(body, cfg.grad_clip)
                opt.step()
                step += 1
                if self.on_step is not None:
                    self.on_step(step / total)
            if validate and (stopped or epoch % cfg.eval_every == 0 or epoch == epochs):
                ev = self.evaluate()
                history.append((epoch, ev.accuracy, ev.nll))
                if best is None or ev.key() > best[0]:
                    state = [copy.deepcopy(c.module.state_dict()) for c in self.split.drafts]
                    best = (ev.key(), epoch, state)
            if stopped:
                break
        for c in self.split.drafts:
            c.module.eval()
        if best is not None:
            for c, state in zip(self.split.drafts, best[2]):
                c.module.load_state_dict(state)
            acc, neg_nll = best[0]
            evaluation: Evaluation | None = Evaluation(acc, -neg_nll)
            best_epoch = best[1]
        else:
            evaluation, best_epoch = None, epoch
        return TrainResult(evaluation, best_epoch, epoch, step, time.monotonic() - t0, history)


# ---- head-only candidates --------------------------------------------------------------------------
def probe_features(
    path: TaskPath, arch: Architecture, cache: FeatureCache, views: list[View], keep: tuple[int, ...] = ()
) -> list[torch.Tensor]:
    """Pooled inputs of a head-only path's head, per view, for every image."""
    split = split_path(path, arch)
    if not split.head_only:
        raise ValueError("probe_features wants a path whose only trainable component is its head")
    return [
        cache.get(split.prefix, split.prefix_ids, v, pooled=True, keep=keep if i == 0 else ()).cpu()
        for i, v in enumerate(views)
    ]


def fit_probe_head(
    path: TaskPath,
    feats: list[torch.Tensor],
    labels: torch.Tensor,
    index: torch.Tensor,
    num_classes: int,
    wd: float,
) -> LinearHead:
    """Fit a head-only path's head on the given images (all views) and load it into the path."""
    x = torch.cat([f[index] for f in feats])
    y = labels[index].repeat(len(feats))
    fit = fit_head(x, y, num_classes, wd)
    fit.load_into(path.components[-1].module.fc)
    return fit
