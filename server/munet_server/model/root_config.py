"""Which root a store grows from: torch-free, so that the server's flags parse without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BUILTIN_LITE0 = "builtin:efficientnet-lite0"


@dataclass(frozen=True)
class RootConfig:
    """Which timm model is the root, where its weights come from, and the image sizes searched."""

    model_name: str = "tf_efficientnet_lite0"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. img_size, patch_size, depth
    weights: str = BUILTIN_LITE0
    image_size: int = 64  # default ds_image_size of new paths; small so CPUs stay responsive
    min_image_size: int = 32
    max_image_size: int = 112  # also the size uploads are stored at; raise it on a GPU

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "weights": self.weights,
            "image_size": self.image_size,
            "min_image_size": self.min_image_size,
            "max_image_size": self.max_image_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RootConfig:
        keys = ("model_name", "model_kwargs", "weights", "image_size", "min_image_size", "max_image_size")
        return cls(**{k: d[k] for k in keys if k in d})


def tiny_vit_config(weights: str = "random", **overrides: Any) -> RootConfig:
    """A 2-block, 64-wide ViT on 32 px images: cheap enough for tests on two CPU cores."""
    kw = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    kw.update(overrides)
    return RootConfig(
        model_name="vit_tiny_patch16_224",
        model_kwargs=kw,
        weights=weights,
        image_size=32,
        min_image_size=16,
        max_image_size=64,
    )
