"""Shared fixtures: tiny real roots, a real small task (scikit-learn's digits), stores under tmp_path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from munet_server.allocator import keep_freed_memory
from munet_server.model.root import RootConfig, tiny_vit_config

if TYPE_CHECKING:
    from munet_server.data.dataset import ImageDataset

torch.set_num_threads(2)
keep_freed_memory()  # as munet-server does at start-up (in-process engine tests run faster too)


def digits_dataset(size: int = 32, classes: int = 10, per_class: int | None = None) -> ImageDataset:
    """scikit-learn's 8x8 digits (real UCI data, ships in the wheel), upscaled to `size`, as RGB uint8."""
    from sklearn.datasets import load_digits

    from munet_server.data.dataset import ImageDataset

    d = load_digits()
    keep = d.target < classes
    x = torch.from_numpy((d.images[keep] * (255.0 / 16.0)).astype(np.float32))[:, None]
    y = torch.from_numpy(d.target[keep].astype(np.int64))
    if per_class is not None:
        idx = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(classes)])
        x, y = x[idx], y[idx]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 255)
    images = x.round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageDataset(images=images, labels=y, class_names=[str(i) for i in range(classes)])


def animal_shapes_at(size: int, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Animal silhouettes (real, from the animal-shape-mnist wheel) as (N, 3, size, size) uint8."""
    from munet_server.data import offline

    raw = offline.sample_per_class(offline.animal_shapes(), per_class, seed)
    x = torch.from_numpy(raw.images)[:, None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255)
    return x.to(torch.uint8).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(raw.labels)


@pytest.fixture(autouse=True)
def _no_leaked_servers():
    """A failing test must not leave a `munet-server` subprocess behind."""
    yield
    from tests.helpers import kill_leftover_servers

    kill_leftover_servers()


@pytest.fixture(scope="session")
def tiny_vit_weights() -> str:
    """A tiny ViT pretrained for ~10 s on animal shapes: a real (if small) pretrained root.

    muNet grows from a pretrained root; a random one gives near-constant features.
    """
    from munet_server.model.pretrain import pretrain_root

    # Seeded, so the result is the same every time: cache it across sessions on this machine.
    cache = Path(tempfile.gettempdir()) / "munet-test-roots" / "tiny_vit_animals_1000_v1.safetensors"
    if not cache.exists():
        images, labels = animal_shapes_at(32, per_class=200)
        cache.parent.mkdir(parents=True, exist_ok=True)
        part = cache.with_name(f".{cache.name}.{os.getpid()}.part")
        pretrain_root(tiny_vit_config(), images, labels, part, steps=1000)
        os.replace(part, cache)  # atomic: parallel sessions never read half a file
    return str(cache)


@pytest.fixture(scope="session")
def tiny_vit(tiny_vit_weights) -> RootConfig:
    return tiny_vit_config(weights=tiny_vit_weights)


@pytest.fixture(scope="session")
def tiny_vit_random() -> RootConfig:
    return tiny_vit_config()


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    return digits_dataset()


# ---- a real server on a loopback port --------------------------------------------------------------
SMALL_BUDGET = dict(seconds=60.0, generations=2, candidates_per_generation=2, epochs=3)


def make_app(store, root: RootConfig, executor_factory=None, **overrides):
    """A real MunetApp (gRPC server on 127.0.0.1, port 0) over a real store."""
    from munet_server.app import MunetApp
    from munet_server.config import ServerConfig
    from munet_server.spec import Budget

    overrides.setdefault("default_budget", Budget(**SMALL_BUDGET))
    overrides.setdefault("idle_improvement", False)  # tests that compare states need a quiet server
    cfg = ServerConfig(store=store, port=0, root=root, device="cpu", grace_seconds=1.0, **overrides)
    app = MunetApp(cfg, executor_factory=executor_factory)
    app.start()
    return app


def image_folder(tmp_path, classes: int = 3, per_class: int = 30, seed: int = 0, name: str = "digits"):
    """A real ImageFolder tree (PNG files) from scikit-learn's digits, plus a held-out test split."""
    from munet_server.data import offline

    raw = offline.sample_per_class(offline.digits(), per_class + 10, seed)
    keep = raw.labels < classes
    raw = offline.RawImages(raw.images[keep], raw.labels[keep], raw.class_names[:classes])
    train, test = offline.train_test_split(raw, 10 / (per_class + 10), seed)
    return offline.write_image_folder(train, tmp_path / name), test
