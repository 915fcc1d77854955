"""The hyperparameter search space (docs/METHOD.md §3) and its neighbour-step mutation.

Every searched key maps to an *ordered* list; a mutation moves one step up or down (probability 1/2
each, clamped at the ends), never a random jump. Defaults must be members of their list.

Architecture keys: `num_layers` (1..N_root), `adapter_dim`, `adapters` (positions that hold a
residual adapter; grows by insertion, shrinks only when `num_layers` drops below a position).
Optimiser keys start with `opt_`, data keys with `ds_` (data keys are shared by one generation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LR = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1)
LR_SCHEDULE = ("constant", "cosine", "restarts")
WARMUP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4)
MOMENTUM = (None, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
NESTEROV = (True, False)
ADAPTER_DIM = (8, 16, 32, 64, 128)
AREA_MIN = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ASPECT_MIN = (0.25, 0.5, 0.75, 1.0)
FLIP = (True, False)
COLOR_DELTA = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
# µ2Net's searched mutation probability (used by the learned per-action μ option).
MU = tuple(round(0.02 * i, 2) for i in range(1, 16))  # 0.02 .. 0.30

OPT_KEYS = ("opt_lr", "opt_lr_schedule", "opt_lr_warmup_ratio", "opt_momentum", "opt_nesterov")
DS_KEYS = (
    "ds_image_size",
    "ds_area_range_min",
    "ds_aspect_ratio_range_min",
    "ds_flip_left_right",
    "ds_brightness_delta",
    "ds_contrast_delta",
    "ds_saturation_delta",
    "ds_hue_delta",
)


def image_sizes(multiple: int, lo: int, hi: int) -> tuple[int, ...]:
    """Image sizes searched: multiples of 16 (muNet) that the patch size divides, within [lo, hi]."""
    step = 16
    while step % multiple:
        step += 16
    sizes = tuple(s for s in range(step, hi + 1, step) if s >= lo)
    if not sizes:
        raise ValueError(f"no image size in [{lo}, {hi}] is a multiple of {step}")
    return sizes


@dataclass(frozen=True)
class SearchSpace:
    """Ordered value lists for every mutable key; built per root (layers, patch size)."""

    num_blocks: int
    sizes: tuple[int, ...]
    lists: dict[str, Sequence[Any]] = field(default_factory=dict)

    @classmethod
    def for_root(cls, num_blocks: int, patch_multiple: int, min_size: int, max_size: int) -> SearchSpace:
        sizes = image_sizes(patch_multiple, min_size, max_size)
        lists: dict[str, Sequence[Any]] = {
            "num_layers": tuple(range(1, num_blocks + 1)),
            "adapter_dim": ADAPTER_DIM,
            "opt_lr": LR,
            "opt_lr_schedule": LR_SCHEDULE,
            "opt_lr_warmup_ratio": WARMUP,
            "opt_momentum": MOMENTUM,
            "opt_nesterov": NESTEROV,
            "ds_image_size": sizes,
            "ds_area_range_min": AREA_MIN,
            "ds_aspect_ratio_range_min": ASPECT_MIN,
            "ds_flip_left_right": FLIP,
            "ds_brightness_delta": COLOR_DELTA,
            "ds_contrast_delta": COLOR_DELTA,
            "ds_saturation_delta": COLOR_DELTA,
            "ds_hue_delta": COLOR_DELTA,
        }
        return cls(num_blocks=num_blocks, sizes=sizes, lists=lists)

    def defaults(self, image_size: int) -> dict[str, Any]:
        """muNet's defaults (VDD column), with the image size given by the root config."""
        if image_size not in self.sizes:
            raise ValueError(f"default image size {image_size} is not in the searched sizes {self.sizes}")
        hp: dict[str, Any] = {
            "num_layers": self.num_blocks,
            "adapter_dim": 32,
            "adapters": [],
            "opt_lr": 0.01,
            "opt_lr_schedule": "cosine",
            "opt_lr_warmup_ratio": 0.1,
            "opt_momentum": 0.9,
            "opt_nesterov": False,
            "ds_image_size": image_size,
            "ds_area_range_min": 0.5,  # muNet: 0.05; small centred images (our data) lose the object
            "ds_aspect_ratio_range_min": 0.75,
            "ds_flip_left_right": True,
            "ds_brightness_delta": 0.0,
            "ds_contrast_delta": 0.0,
            "ds_saturation_delta": 0.0,
            "ds_hue_delta": 0.0,
        }
        self.validate(hp)
        return hp

    def validate(self, hp: dict[str, Any]) -> None:
        for key, values in self.lists.items():
            if key in hp and hp[key] not in values:
                raise ValueError(f"hyperparameter {key}={hp[key]!r} is not one of {list(values)}")

    def step(self, key: str, value: Any, rng: random.Random) -> Any:
        """One incremental mutation: a neighbour in the ordered list, clamped at the ends."""
        values = list(self.lists[key])
        i = values.index(value)
        j = min(max(i + (1 if rng.random() < 0.5 else -1), 0), len(values) - 1)
        return values[j]


def mu_step(mu: float, rng: random.Random) -> float:
    """Neighbour step of a learned per-action mutation probability (µ2Net+)."""
    values = list(MU)
    i = min(range(len(values)), key=lambda k: abs(values[k] - mu))
    j = min(max(i + (1 if rng.random() < 0.5 else -1), 0), len(values) - 1)
    return values[j]
