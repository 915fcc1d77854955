"""Batched, seeded preprocessing and augmentation on uint8 image tensors (docs/METHOD.md §3, ds_*).

Inputs are (B, 3, S, S) uint8 at the storage size; outputs are float32 (B, 3, s, s) in [-1, 1]
(mean = std = 0.5: what both the augreg ViTs and tf_efficientnet_lite0 were trained with).
Augmentation is Inception-style random-resized crop (area in [ds_area_range_min, 1], aspect ratio in
[ds_aspect_ratio_range_min, 1/ds_aspect_ratio_range_min]), horizontal flip, then brightness, contrast,
saturation and hue jitter of the given deltas — done for the whole batch at once with one
`grid_sample`, with every random draw taken from the caller's generator so a seed fixes the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DataHParams:
    image_size: int
    area_min: float = 1.0
    aspect_min: float = 1.0
    flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    @classmethod
    def from_hparams(cls, hp: dict[str, Any]) -> DataHParams:
        return cls(
            image_size=int(hp["ds_image_size"]),
            area_min=float(hp.get("ds_area_range_min", 1.0)),
            aspect_min=float(hp.get("ds_aspect_ratio_range_min", 1.0)),
            flip=bool(hp.get("ds_flip_left_right", False)),
            brightness=float(hp.get("ds_brightness_delta", 0.0)),
            contrast=float(hp.get("ds_contrast_delta", 0.0)),
            saturation=float(hp.get("ds_saturation_delta", 0.0)),
            hue=float(hp.get("ds_hue_delta", 0.0)),
        )


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> [-1, 1]."""
    return x.mul(2.0).sub_(1.0)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation transform: the whole stored image resized to `size`, normalised."""
    x = images.float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x.clamp_(0.0, 1.0))


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment(images: torch.Tensor, hp: DataHParams, gen: torch.Generator) -> torch.Tensor:
    """Training transform for one batch (uint8 in, normalised float out)."""
    b = images.shape[0]
    x = images.float().div_(255.0)
    size = hp.image_size
    # Random-resized crop as an affine map of normalised coordinates: crop width/height are fractions
    # of the image; flipping negates the x scale.
    area = _uniform(b, hp.area_min, 1.0, gen)
    log_r = _uniform(b, math.log(hp.aspect_min), -math.log(hp.aspect_min), gen)
    ratio = torch.exp(log_r)
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - cw)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - ch)
    flip = torch.ones(b)
    if hp.flip:
        flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    if x.shape[-1] > size * 2:  # shrink first so bilinear sampling does not alias
        x = F.interpolate(x, size=(size * 2, size * 2), mode="bilinear", align_corners=False, antialias=True)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = color_jitter(x, hp, gen)
    return normalize(x.clamp_(0.0, 1.0))


def color_jitter(x: torch.Tensor, hp: DataHParams, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    if hp.brightness > 0:
        x = x + _uniform(b, -hp.brightness, hp.brightness, gen).view(shape)
    if hp.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(b, 1 - hp.contrast, 1 + hp.contrast, gen).view(shape) + mean
    if hp.saturation > 0:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = (x - grey) * _uniform(b, 1 - hp.saturation, 1 + hp.saturation, gen).view(shape) + grey
    if hp.hue > 0:  # rotate chroma in YIQ space by up to hue * 2pi
        angle = _uniform(b, -hp.hue, hp.hue, gen) * 2 * math.pi
        x = _rotate_hue(x, angle)
    return x


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(angle), 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)
