"""How a timm root model is cut into components, and how a path of components runs.

Two families are supported:
- **vit**: any timm `VisionTransformer` (the paper's root). Slots: `embed` (patch embedding, class
  and register tokens, pre-norm), `posembed` (one per patch grid, so image size can be searched),
  `block_i`, optional `adapter_i` before `block_i`, `norm` (final norm + pooling + fc_norm), `head`.
- **cnn**: timm EfficientNet / MobileNet-style nets (`conv_stem`, `bn1`, `blocks`, `conv_head`,
  `bn2`): `embed` (stem), the blocks flattened in order, 1x1-conv adapters, `norm` (conv_head + bn2,
  present only when all blocks are kept, since it expects the last block's channels) and a pooled head.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from munet_server.model.components import ComponentSpec, count_params
from munet_server.model.layers import CNNStem, ConvAdapter, Head, PosEmbed, TokenAdapter, ViTNeck, ViTStem

# One step of a path's forward pass: the modules it runs (its identity) and the function.
Step = tuple[tuple[nn.Module, ...], Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class Architecture:
    """A decomposed root: its pretrained modules by slot name, and the rules to lay out a path."""

    family: str  # "vit" | "cnn"
    root_modules: dict[str, nn.Module]  # slot name -> pretrained module (blocks, embed, norm, posembed)
    num_blocks: int
    patch_multiple: int  # image sizes must be multiples of this (ViT patch size; 1 for CNNs)
    root_grid: tuple[int, int] | None  # ViT patch grid of the root's position embedding
    num_prefix_tokens: int
    block_in_dims: list[int]  # feature width entering block i (adapter width before block i)
    block_out_dims: list[int]
    head_in_features: int  # width entering the head when `norm` is present
    block_in_strides: list[int]  # input pixels per feature-map cell entering block i

    def clone_floor(self, device: str) -> tuple[int, bool]:
        """(first block a search may clone or adapt, whether the stem may be cloned) on a device.

        On a CPU the stem and a CNN's stride-4/8 blocks stay frozen: they take ~75 % of the forward
        time and ~1 % of the parameters (Lite0 at 112 px), and a frozen prefix is computed once per
        image instead of once per step (docs/LEARNING.md). A GPU affords them."""
        if device != "cpu":
            return 0, True
        if self.family == "cnn":
            return next((i for i, s in enumerate(self.block_in_strides) if s >= 16), 0), False
        return 0, False

    # ---- layout --------------------------------------------------------------------------------
    def layout(self, hp: dict[str, Any], num_classes: int) -> list[ComponentSpec]:
        """Ordered component specs of a path with hyperparameters `hp`."""
        n = int(hp["num_layers"])
        if not 1 <= n <= self.num_blocks:
            raise ValueError(f"num_layers={n} outside 1..{self.num_blocks}")
        specs = [ComponentSpec.make("embed", "embed")]
        if self.family == "vit":
            size = int(hp["ds_image_size"])
            grid = (size // self.patch_multiple, size // self.patch_multiple)
            specs.append(ComponentSpec.make("posembed", "posembed", grid=grid))
        adapters = {int(i) for i in hp.get("adapters", [])}
        for i in range(n):
            if i in adapters:
                dims = dict(dim=self.block_in_dims[i], adapter_dim=int(hp["adapter_dim"]))
                specs.append(ComponentSpec.make(f"adapter_{i}", "adapter", **dims))
            specs.append(ComponentSpec.make(f"block_{i}", "block"))
        has_norm = self.family == "vit" or n == self.num_blocks
        if has_norm:
            specs.append(ComponentSpec.make("norm", "norm"))
        in_features = self.head_in_features if has_norm else self.block_out_dims[n - 1]
        specs.append(
            ComponentSpec.make(
                "head", "head", in_features=in_features, num_classes=num_classes, pool=self.family == "cnn"
            )
        )
        return specs

    def root_specs(self) -> list[ComponentSpec]:
        """Specs of the root's own components (all blocks; no adapters, no head)."""
        hp = {"num_layers": self.num_blocks, "adapters": []}
        if self.family == "vit":
            assert self.root_grid is not None
            hp["ds_image_size"] = self.root_grid[0] * self.patch_multiple
        return [s for s in self.layout(hp, num_classes=2) if s.kind != "head"]

    def root_param_count(self) -> int:
        """P of the score: backbone plus a 2-class head, as the official scorer counts it."""
        backbone = sum(count_params(self.root_modules[s.name]) for s in self.root_specs())
        return backbone + self.head_in_features * 2 + 2

    # ---- modules -------------------------------------------------------------------------------
    def fresh(self, spec: ComponentSpec) -> nn.Module:
        """A new module for a slot no ancestor can provide: root copy, resampled pos-embed, or init."""
        if spec.kind in ("embed", "block", "norm"):
            return copy.deepcopy(self.root_modules[spec.name])
        if spec.kind == "posembed":
            root_pos: PosEmbed = self.root_modules["posembed"]  # type: ignore[assignment]
            grid = tuple(spec.get("grid"))
            if grid == tuple(root_pos.grid):
                return copy.deepcopy(root_pos)
            return root_pos.resampled(grid, 0 if self.no_embed_class else self.num_prefix_tokens)
        if spec.kind == "adapter":
            dim, a = int(spec.get("dim")), int(spec.get("adapter_dim"))
            return TokenAdapter(dim, a) if self.family == "vit" else ConvAdapter(dim, a)
        if spec.kind == "head":
            return Head(int(spec.get("in_features")), int(spec.get("num_classes")), bool(spec.get("pool")))
        raise ValueError(f"no constructor for {spec}")

    @property
    def no_embed_class(self) -> bool:
        stem = self.root_modules["embed"]
        return bool(getattr(stem, "no_embed_class", False))

    # ---- forward -------------------------------------------------------------------------------
    def steps(self, modules: Sequence[nn.Module]) -> list[Step]:
        """A path's forward pass as a chain of steps, each with the modules it runs (the ViT stem
        takes its position embedding), so that paths sharing modules can share the work."""
        if self.family == "vit":
            stem, pos = modules[0], modules[1]
            return [((stem, pos), lambda x: stem(x, pos)), *(((m,), m) for m in modules[2:])]
        return [((m,), m) for m in modules]

    def forward(self, modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """Run a path: modules in layout order; x is (B, 3, H, W) in [-1, 1]; returns logits."""
        for _, run in self.steps(modules):
            x = run(x)
        return x


def decompose(model: nn.Module) -> Architecture:
    """Cut a timm model into slot modules. Raises ValueError for unsupported families."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return _decompose_vit(model)
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return _decompose_cnn(model)
    raise ValueError(
        f"{type(model).__name__} is not supported as a root: use a timm VisionTransformer "
        "(e.g. vit_tiny_patch16_224, deit_*) or an EfficientNet/MobileNet-style CNN"
    )


def _decompose_vit(vit: nn.Module) -> Architecture:
    if vit.pos_embed is None:
        raise ValueError("ViT roots need an absolute position embedding (pos_embed)")
    ph, pw = vit.patch_embed.patch_size
    if ph != pw:
        raise ValueError("only square patches are supported")
    grid = tuple(int(g) for g in vit.patch_embed.grid_size)
    mods: dict[str, nn.Module] = {
        "embed": ViTStem(vit),
        "posembed": PosEmbed(vit.pos_embed.data, grid),  # type: ignore[arg-type]
        "norm": ViTNeck(vit),
    }
    for i, block in enumerate(vit.blocks):
        mods[f"block_{i}"] = block
    d = int(vit.embed_dim)
    n = len(vit.blocks)
    return Architecture(
        family="vit",
        root_modules=mods,
        num_blocks=n,
        patch_multiple=int(ph),
        root_grid=grid,  # type: ignore[arg-type]
        num_prefix_tokens=int(vit.num_prefix_tokens),
        block_in_dims=[d] * n,
        block_out_dims=[d] * n,
        head_in_features=d,
        block_in_strides=[int(ph)] * n,
    )


def _decompose_cnn(net: nn.Module) -> Architecture:
    blocks = [b for stage in net.blocks for b in stage]
    mods: dict[str, nn.Module] = {"embed": CNNStem(net.conv_stem, net.bn1)}
    for i, b in enumerate(blocks):
        mods[f"block_{i}"] = b
    mods["norm"] = nn.Sequential(net.conv_head, net.bn2)
    # Channel widths are read off one probe forward pass rather than guessed from block types.
    ins, outs, strides = [], [], []
    was_training = net.training
    net.eval()
    with torch.no_grad():
        h = mods["embed"](torch.zeros(1, 3, 64, 64))
        for b in blocks:
            ins.append(int(h.shape[1]))
            strides.append(64 // int(h.shape[-1]))
            h = b(h)
            outs.append(int(h.shape[1]))
        head_in = int(mods["norm"](h).shape[1])
    net.train(was_training)
    return Architecture(
        family="cnn",
        root_modules=mods,
        num_blocks=len(blocks),
        patch_multiple=1,
        root_grid=None,
        num_prefix_tokens=0,
        block_in_dims=ins,
        block_out_dims=outs,
        head_in_features=head_in,
        block_in_strides=strides,
    )
