"""A decoded, in-memory labelled image set, and the checks and splits done on it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from munet_server.data.images import decode_to_storage
from munet_server.errors import InvalidDataset


@dataclass
class ImageDataset:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be (N, 3, S, S) uint8, got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor) -> ImageDataset:
        return ImageDataset(
            self.images[index].contiguous(), self.labels[index].contiguous(), self.class_names
        )


def build_dataset(
    examples: Iterable[tuple[int, bytes]], class_names: list[str], storage_size: int
) -> ImageDataset:
    """(label, encoded image) pairs, as stored in LMDB, -> a decoded dataset at `storage_size`."""
    images, labels = [], []
    for i, (label, data) in enumerate(examples):
        if not 0 <= label < len(class_names):
            raise InvalidDataset(f"stored example {i} has label {label} outside 0..{len(class_names) - 1}")
        images.append(decode_to_storage(data, storage_size))
        labels.append(label)
    if not images:
        raise InvalidDataset("the dataset has no examples")
    return ImageDataset(torch.stack(images), torch.tensor(labels, dtype=torch.int64), list(class_names))


def validate_class_counts(counts: list[int], class_names: list[str], min_per_class: int) -> None:
    few = [(n, c) for n, c in zip(class_names, counts) if c < min_per_class]
    if few:
        listed = ", ".join(f"{n!r} has {c}" for n, c in few[:5])
        more = f" (and {len(few) - 5} more)" if len(few) > 5 else ""
        raise InvalidDataset(
            f"every class needs at least {min_per_class} examples (one to train, one to validate): "
            f"{listed}{more}"
        )


def holdout_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, holdout) indices: per class a seeded shuffle, `fraction` held out, and at
    least one image of every class on each side. `fraction` 0: 30 % below 500 images, else 20 %."""
    n = len(labels)
    frac = fraction or (0.3 if n < 500 else 0.2)
    if not 0.0 < frac < 1.0:
        raise InvalidDataset(f"validation fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    train, hold = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < 2:
            raise InvalidDataset(f"class {c} has {len(idx)} examples; every class needs at least 2")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(len(idx) - 1, max(1, round(len(idx) * frac)))
        hold.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(hold).sort().values
