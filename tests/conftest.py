"""Shared fixtures: tiny real roots, a real small task (scikit-learn's digits). Helpers that are not
fixtures live in tests/helpers.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from munet_server.allocator import keep_freed_memory
from munet_server.model.root import RootConfig, tiny_vit_config
from tests.helpers import animal_shapes_at, digits_dataset

if TYPE_CHECKING:
    from munet_server.data.dataset import ImageDataset

torch.set_num_threads(2)
keep_freed_memory()  # as munet-server does at start-up (in-process engine tests run faster too)


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
