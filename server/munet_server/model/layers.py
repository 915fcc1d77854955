"""Small modules a path is built from, beyond the root's own blocks.

Residual adapters are muNet's "layer insertion": their output projection starts at zero, so a path
with a freshly inserted adapter computes exactly what it computed before the insertion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn


class TokenAdapter(nn.Module):
    """ViT residual adapter: LayerNorm -> Linear(d, a) -> GELU -> Linear(a, d) (zero init) -> x + y."""

    def __init__(self, dim: int, adapter_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.down = nn.Linear(dim, adapter_dim)
        self.up = nn.Linear(adapter_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        return x + self.up(F.gelu(self.down(self.norm(x))))


class ConvAdapter(nn.Module):
    """CNN residual adapter on feature maps: BN -> 1x1 conv (c->a) -> ReLU -> 1x1 conv (a->c, zero init)."""

    def __init__(self, channels: int, adapter_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, eps=1e-3)
        self.down = nn.Conv2d(channels, adapter_dim, 1)
        self.up = nn.Conv2d(adapter_dim, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return x + self.up(F.relu(self.down(self.norm(x))))


class Head(nn.Module):
    """Task classifier. vit_jax initialises the head at zero; `pool` averages CNN feature maps first."""

    def __init__(self, in_features: int, num_classes: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = x.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        return self.fc(x)


class PosEmbed(nn.Module):
    """Absolute position embedding for one patch grid; its own component since image size is searched."""

    def __init__(self, table: torch.Tensor, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.table = nn.Parameter(table.detach().clone())  # (1, prefix + gh * gw, d) or (1, gh * gw, d)

    def resampled(self, grid: tuple[int, int], num_prefix_tokens: int) -> PosEmbed:
        """A new position embedding for another grid (bilinear on the 2-D grid, prefix slots kept)."""
        with torch.no_grad():
            table = resample_abs_pos_embed(
                self.table,
                new_size=list(grid),
                old_size=list(self.grid),
                num_prefix_tokens=num_prefix_tokens,
                interpolation="bilinear",
                antialias=True,
            )
        return PosEmbed(table, grid)


class ViTStem(nn.Module):
    """Patch embedding + class/register tokens + pre-norm of a timm VisionTransformer."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.patch_embed.strict_img_size = False  # image size is a searched hyperparameter
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.norm_pre = vit.norm_pre
        self.no_embed_class = bool(vit.no_embed_class)

    def forward(self, x: torch.Tensor, pos: PosEmbed) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, d)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos.table], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos.table  # (B, prefix + N, d)
        return self.norm_pre(x)


class ViTNeck(nn.Module):
    """Final norm + pooling of a ViT: the root's `norm`, class-token or mean pooling, then `fc_norm`."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if vit.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool={vit.global_pool!r} is not supported; use 'token' or 'avg'")
        self.norm = vit.norm
        self.fc_norm = vit.fc_norm
        self.pool = vit.global_pool
        self.num_prefix_tokens = int(vit.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, d)
        x = self.norm(x)
        x = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        return self.fc_norm(x)


class CNNStem(nn.Module):
    """First convolution + norm of a timm EfficientNet/MobileNet-style network."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor, pos: PosEmbed | None = None) -> torch.Tensor:
        return self.bn(self.conv(x))
