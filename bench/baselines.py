"""What a user would do instead of muNet, done well and independently of the server's machinery.

- Linear probe: scikit-learn's multinomial logistic regression (L-BFGS, standardised features) on the
  frozen root's pooled features; C and the image size chosen by stratified 5-fold cross-validation on
  the training images; refitted on all of them.
- Fine-tuning: a standard recipe in plain PyTorch on the timm model: linear-probe initialised head
  (LP-FT), SGD with Nesterov momentum 0.9, weight decay 1e-4 and global-norm clipping at 1.0, one
  warmup epoch then cosine, 15 epochs, random-resized crops (scale 0.5-1) and flips, batch 32. The learning rate is chosen on a
  stratified 25 % holdout of the training images from a sweep, then the model is refitted on all of
  them. Variants: every layer with frozen BatchNorm statistics (right for batches this small), every
  layer with train-mode BatchNorm (the textbook default), only the top two blocks plus the final
  convolution ("freeze bottom layers", the official muNet baseline family), and every layer above the
  stem and the stride-4/8 blocks, i.e. exactly what muNet may clone on a CPU (its clone floor).

Only the root's weights are shared with the server (`load_root` maps the packaged checkpoint).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from munet_server.data.dataset import ImageDataset
from munet_server.model.arch import decompose
from munet_server.model.root import RootConfig, load_root

MEAN_STD = 0.5  # tf_efficientnet_lite0 was trained on [-1, 1] inputs


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN_STD) / MEAN_STD


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation transform: the stored image resized to `size` (antialiased), normalised."""
    x = images.float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x.clamp(0, 1) - MEAN_STD) / MEAN_STD


@dataclass
class Outcome:
    test_accuracy: float
    cpu_seconds: float
    wall_seconds: float
    params_added: int
    image_size: int
    chosen: dict = field(default_factory=dict)


class Timer:
    def __enter__(self) -> Timer:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


def backbone(root: RootConfig) -> nn.Module:
    """A fresh copy of the pretrained timm model without classifier (pooled 1280-d output)."""
    return copy.deepcopy(load_root(root).model).eval()


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor, size: int, flip: bool = False) -> np.ndarray:
    out = []
    for i in range(0, len(images), 64):
        x = resize(images[i : i + 64], size)
        out.append(model(x.flip(-1) if flip else x))
    return torch.cat(out).numpy()


def _stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tr, ho = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        k = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        ho += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.array(sorted(tr)), np.array(sorted(ho))


# ---- linear probe ----------------------------------------------------------------------------------
def _lr(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def linear_probe(
    train: ImageDataset, test: ImageDataset, root: RootConfig, sizes: tuple[int, ...], seed: int
) -> Outcome:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    with Timer() as t:
        model = backbone(root)
        y = train.labels.numpy()
        k = int(min(5, np.bincount(y).min()))
        folds = StratifiedKFold(k, shuffle=True, random_state=seed)
        best = (-1.0, 0, 0.0)
        cache = {}
        for size in sizes:
            x = features(model, train.images, size)
            cache[size] = x
            for c in (0.01, 0.1, 1.0, 10.0):
                score = float(cross_val_score(_lr(c), x, y, cv=folds).mean())
                if score > best[0]:
                    best = (score, size, c)
        _, size, c = best
        clf = _lr(c).fit(cache[size], y)
        acc = float(clf.score(features(model, test.images, size), test.labels.numpy()))
    n_classes = train.num_classes
    return Outcome(acc, t.cpu, t.wall, 1280 * n_classes + n_classes, size, {"C": c, "cv": best[0]})


def probe_head(model: nn.Module, train: ImageDataset, size: int, seed: int) -> tuple[nn.Linear, float]:
    """The LP of LP-FT: a CV-tuned logistic regression, as an nn.Linear on the raw features."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x, y = features(model, train.images, size), train.labels.numpy()
    k = int(min(5, np.bincount(y).min()))
    if k >= 2:
        folds = StratifiedKFold(k, shuffle=True, random_state=seed)
        c = max((0.01, 0.1, 1.0, 10.0), key=lambda c: cross_val_score(_lr(c), x, y, cv=folds).mean())
    else:
        c = 1.0
    pipe = _lr(c).fit(x, y)
    scaler, lr = pipe[0], pipe[1]
    w = lr.coef_ / scaler.scale_
    b = lr.intercept_ - w @ scaler.mean_
    if w.shape[0] == 1:  # binary: sklearn keeps one row; softmax over (0, z) is the same model
        w, b = np.concatenate([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    head = nn.Linear(x.shape[1], train.num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float())
        head.bias.copy_(torch.from_numpy(b).float())
    return head, c


# ---- fine-tuning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    name: str
    trainable: str = "all"  # "all" | "top" (the last two blocks, conv_head and bn2) | "floor" (above the CPU clone floor)
    bn: str = "frozen"  # "frozen" (eval-mode statistics) | "train"
    lrs: tuple[float, ...] = (0.003, 0.01)  # 0.03 lost on every task tried (photos holdout 0.21 vs 0.57)
    epochs: int = 15
    batch_size: int = 32
    weight_decay: float = 1e-4
    clip: float = 1.0  # global gradient-norm clip (timm's --clip-grad; muNet's optimiser has it too)


RECIPES = {
    "finetune": Recipe("finetune"),
    "finetune_bn_train": Recipe("finetune_bn_train", bn="train", lrs=(0.01,)),
    "finetune_top": Recipe("finetune_top", trainable="top"),
    "finetune_floor": Recipe("finetune_floor", trainable="floor"),
}


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _trainable(model: Classifier, recipe: Recipe) -> list[nn.Parameter]:
    body = model.body
    body.requires_grad_(recipe.trainable == "all")
    if recipe.trainable != "all" and not hasattr(body, "conv_head"):
        raise ValueError(f"{recipe.name} freezes a CNN's bottom blocks; this root is not a CNN")
    if recipe.trainable == "top":
        for m in (*list(body.blocks[-1]), *list(body.blocks[-2])[-1:], body.conv_head, body.bn2):
            m.requires_grad_(True)
    if recipe.trainable == "floor":  # the server's own rule for what a CPU search may train
        blocks = [b for stage in body.blocks for b in stage]
        floor, _ = decompose(body).clone_floor("cpu")
        for m in (*blocks[floor:], body.conv_head, body.bn2):
            m.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _set_mode(model: Classifier, recipe: Recipe) -> None:
    model.train()
    if recipe.bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def _train(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, size: int, recipe: Recipe, lr: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    aug = v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    params = _trainable(model, recipe)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    n = len(labels)
    per_epoch = math.ceil(n / recipe.batch_size)
    total, warmup = recipe.epochs * per_epoch, per_epoch
    step = 0
    for _ in range(recipe.epochs):
        _set_mode(model, recipe)
        order = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = order[b * recipe.batch_size : (b + 1) * recipe.batch_size]
            if recipe.bn == "train" and len(idx) < 2:
                continue
            x = torch.stack([aug(img) for img in images[idx]])
            x = _normalise(x)
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Without it the first augmented batches sent gradient norms of 50-115 through the net
            # (an LP head leans on low-variance features) and fine-tuning fell to chance (measured).
            torch.nn.utils.clip_grad_norm_(params, recipe.clip)
            opt.step()
            step += 1
    model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[float, float]:
    model.eval()
    logits = torch.cat([model(resize(images[i : i + 64], size)) for i in range(0, len(images), 64)])
    return float((logits.argmax(1) == labels).float().mean()), float(F.cross_entropy(logits, labels))


def finetune(
    train: ImageDataset, test: ImageDataset, root: RootConfig, size: int, recipe: Recipe, seed: int
) -> Outcome:
    """LP-FT with the recipe's learning rate chosen on a holdout of the training images, then a refit."""
    with Timer() as t:
        base = backbone(root)
        y = train.labels.numpy()
        tr, ho = _stratified_holdout(y, 0.25, seed)
        sub = ImageDataset(train.images[tr], train.labels[tr], train.class_names)
        results = {}
        if len(recipe.lrs) > 1:
            head, _ = probe_head(base, sub, size, seed)
            for lr in recipe.lrs:
                model = Classifier(copy.deepcopy(base), copy.deepcopy(head))
                _train(model, sub.images, sub.labels, size, recipe, lr, seed)
                acc, nll = _accuracy(model, train.images[ho], train.labels[ho], size)
                results[lr] = (acc, -nll)
            lr = max(recipe.lrs, key=lambda r: results[r])
        else:
            lr = recipe.lrs[0]
        head, c = probe_head(base, train, size, seed)
        model = Classifier(copy.deepcopy(base), head)
        _train(model, train.images, train.labels, size, recipe, lr, seed)
        acc, _ = _accuracy(model, test.images, test.labels, size)
        added = sum(p.numel() for p in _trainable(model, recipe))
    chosen = {"lr": lr, "C": c, "holdout": {str(k): v[0] for k, v in results.items()}}
    return Outcome(acc, t.cpu, t.wall, added, size, chosen)
