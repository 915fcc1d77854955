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
    from server.data.dataset import ImageDataset
    from sklearn.datasets import load_digits

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


@pytest.fixture(scope="session")
def tiny_vit() -> RootConfig:
    return tiny_vit_config()


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    return digits_dataset()
