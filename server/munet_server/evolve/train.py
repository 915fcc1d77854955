"""Training one candidate path (MUNET_METHOD §3-4).

Only the candidate's draft components train; frozen components are shared, in eval mode, with no
gradients. Optimiser: global-norm clipping at 1.0, then SGD with optional (Nesterov) momentum; lr
schedules `cosine` (linear warmup from lr/100, cosine decay to 0), `constant` (0.5 x lr, "so the
average lr is the same") and `restarts` (one warmup+cosine cycle per validation interval). After
every validation the score is computed and the trainable tensors are snapshotted if it improved;
the candidate ends on its best snapshot (early stopping by checkpoint selection).
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

from munet_server.data.dataset import ImageDataset
from munet_server.data.transforms import DataHParams, augment, preprocess
from munet_server.errors import Cancelled
from munet_server.model.path import Path, PathModel


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    validations: int = 2  # validations per candidate (muNet: 30 on VDD, 5 on Chars)
    steps_per_validation: int = 20  # cap on batches between validations (muNet: 200 / 100)
    validation_examples: int = 256  # validation subset, fixed for the whole search
    grad_clip: float = 1.0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("batch_size", "validations", "steps_per_validation", "validation_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def steps_between_validations(self, n_train: int) -> int:
        return max(1, min(math.ceil(n_train / self.batch_size), self.steps_per_validation))


@dataclass
class TrainResult:
    quality: float  # best validation accuracy
    score: float  # best score
    improved: bool  # beat the initial best score (the same-task parent's)
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)  # validation accuracy after each interval


def learning_rate(step: int, total: int, interval: int, hp: dict[str, Any]) -> float:
    lr = float(hp["opt_lr"])
    schedule = hp["opt_lr_schedule"]
    if schedule == "constant":
        return 0.5 * lr
    if schedule == "restarts":  # SGDR: one warmup + cosine cycle per validation interval
        step, total = step % interval, interval
    warmup = int(float(hp["opt_lr_warmup_ratio"]) * total)
    if step < warmup:
        return lr / 100 + (lr - lr / 100) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params: list[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.SGD:
    momentum = hp.get("opt_momentum")
    return torch.optim.SGD(
        params,
        lr=float(hp["opt_lr"]),
        momentum=float(momentum or 0.0),
        nesterov=bool(hp.get("opt_nesterov")) and bool(momentum),
    )


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: PathModel, images: torch.Tensor, labels: torch.Tensor, device: torch.device, bs: int
) -> float:
    """Accuracy on preprocessed float images (B, 3, s, s)."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), bs):
        with _autocast(device):
            logits = model(images[i : i + bs].to(device, non_blocking=True))
        correct += int((logits.argmax(-1).cpu() == labels[i : i + bs]).sum())
    return correct / max(1, len(labels))


class Validation:
    """The fixed validation subset, preprocessed once per image size (shared by a generation)."""

    def __init__(self, val: ImageDataset, max_examples: int) -> None:
        n = min(len(val), max_examples)
        self.images = val.images[:n]
        self.labels = val.labels[:n]
        self._cache: dict[int, torch.Tensor] = {}

    def at(self, size: int) -> torch.Tensor:
        if size not in self._cache:
            self._cache = {size: preprocess(self.images, size)}  # keep one size: bounded memory
        return self._cache[size]


def train_candidate(
    path: Path,
    model: PathModel,
    train: ImageDataset,
    val: Validation,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    score_of: Callable[[float], float],
    best_score: float,
    cancel: threading.Event | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `path`'s draft components in place; they end on the best validation snapshot."""
    t0 = time.monotonic()
    hp = path.hparams
    dhp = DataHParams.from_hparams(hp)
    params = path.trainable_parameters()
    interval = cfg.steps_between_validations(len(train))
    total = cfg.validations * interval
    val_images = val.at(dhp.image_size)
    # The same seed for every candidate of a generation: an identical data stream, as in muNet.
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(params, hp) if params else None
    best_state: list[dict[str, torch.Tensor]] | None = None
    initial = best_score
    history: list[float] = []
    best_q = -math.inf
    step = 0
    for _ in range(cfg.validations):
        model.train()
        for _ in range(interval):
            if cancel is not None and cancel.is_set():
                raise Cancelled("the operation was cancelled")
            idx = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
            x = augment(train.images[idx], dhp, gen).to(device, non_blocking=True)
            y = train.labels[idx].to(device, non_blocking=True)
            if opt is not None:
                lr = learning_rate(step, total, interval, hp)
                for g in opt.param_groups:
                    g["lr"] = lr
                with _autocast(device):
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
        q = evaluate(model, val_images, val.labels, device, cfg.eval_batch_size)
        history.append(q)
        best_q = max(best_q, q)
        s = score_of(q)
        if s > best_score:
            best_score = s
            best_state = [copy.deepcopy(c.module.state_dict()) for c in path.trainable()]
    if best_state is not None:
        for c, state in zip(path.trainable(), best_state):
            c.module.load_state_dict(state)
    model.eval()
    return TrainResult(
        quality=best_q,
        score=best_score,
        improved=best_state is not None and best_score > initial,
        steps=step,
        seconds=time.monotonic() - t0,
        history=history,
    )
