"""Shared fixtures: tiny real roots, a real small task (scikit-learn's digits), stores under tmp_path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from server.model.root import RootConfig, tiny_vit_config

if TYPE_CHECKING:
    from server.data.dataset import ImageDataset

torch.set_num_threads(2)


def digits_dataset(size: int = 32, classes: int = 10, per_class: int | None = None) -> ImageDataset:
    """scikit-learn's 8x8 digits (real UCI data, ships in the wheel), upscaled to `size`, as RGB uint8."""
    from sklearn.datasets import load_digits

    from server.data.dataset import ImageDataset

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
    from server.data import offline

    raw = offline.sample_per_class(offline.animal_shapes(), per_class, seed)
    x = torch.from_numpy(raw.images)[:, None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255)
    return x.to(torch.uint8).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(raw.labels)


@pytest.fixture(scope="session")
def tiny_vit_weights(tmp_path_factory) -> str:
    """A tiny ViT pretrained for ~10 s on animal shapes: a real (if small) pretrained root.

    muNet grows from a pretrained root; a random one gives near-constant features.
    """
    from server.model.pretrain import pretrain_root

    images, labels = animal_shapes_at(32, per_class=200)
    out = tmp_path_factory.mktemp("roots") / "tiny_vit_animals.safetensors"
    return str(pretrain_root(tiny_vit_config(), images, labels, out, steps=1000))


@pytest.fixture(scope="session")
def tiny_vit(tiny_vit_weights) -> RootConfig:
    return tiny_vit_config(weights=tiny_vit_weights)


@pytest.fixture(scope="session")
def tiny_vit_random() -> RootConfig:
    return tiny_vit_config()


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    return digits_dataset()
