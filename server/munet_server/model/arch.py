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
from typing import Any, ClassVar

import torch
from torch import nn

from munet_server.model.components import ComponentSpec, count_params
from munet_server.model.layers import CNNStem, ConvAdapter, Head, PosEmbed, TokenAdapter, ViTNeck, ViTStem

# One step of a path's forward pass: the modules it runs (its identity) and the function.
Step = tuple[tuple[nn.Module, ...], Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class Architecture:
    """A decomposed root: its pretrained modules by slot name, and the rules to lay out a path.

    One subclass per family of roots (`ViTArchitecture`, `CNNArchitecture`); `decompose` picks it."""

    family: ClassVar[str] = ""
    root_modules: dict[str, nn.Module]  # slot name -> pretrained module (blocks, embed, norm, posembed)
    num_blocks: int
    patch_multiple: int  # image sizes must be multiples of this (ViT patch size; 1 for CNNs)
    block_in_dims: list[int]  # feature width entering block i (adapter width before block i)
    block_out_dims: list[int]
    head_in_features: int  # width entering the head when `norm` is present
    block_in_strides: list[int]  # input pixels per feature-map cell entering block i

    # ---- what differs between families ---------------------------------------------------------
    def stem_specs(self, hp: dict[str, Any]) -> list[ComponentSpec]:
        return [ComponentSpec.make("embed", "embed")]

    def has_norm(self, num_layers: int) -> bool:
        return True

    def pools_in_head(self) -> bool:
        return False

    def adapter(self, dim: int, adapter_dim: int) -> nn.Module:
        raise NotImplementedError

    def clone_floor(self, device: str) -> tuple[int, bool]:
        """(first block a search may clone or adapt, whether the stem may be cloned) on a device.
        A GPU affords everything; see the subclasses for a CPU."""
        return (0, True) if device != "cpu" else (0, False)

    def steps(self, modules: Sequence[nn.Module]) -> list[Step]:
        """A path's forward pass as a chain of steps, each with the modules it runs, so that paths
        sharing modules can share the work."""
        return [((m,), m) for m in modules]

    def root_hparams(self) -> dict[str, Any]:
        return {"num_layers": self.num_blocks, "adapters": []}

    # ---- layout --------------------------------------------------------------------------------
    def layout(self, hp: dict[str, Any], num_classes: int) -> list[ComponentSpec]:
        """Ordered component specs of a path with hyperparameters `hp`."""
        n = int(hp["num_layers"])
        if not 1 <= n <= self.num_blocks:
            raise ValueError(f"num_layers={n} outside 1..{self.num_blocks}")
        specs = self.stem_specs(hp)
        adapters = {int(i) for i in hp.get("adapters", [])}
        for i in range(n):
            if i in adapters:
                dims = dict(dim=self.block_in_dims[i], adapter_dim=int(hp["adapter_dim"]))
                specs.append(ComponentSpec.make(f"adapter_{i}", "adapter", **dims))
            specs.append(ComponentSpec.make(f"block_{i}", "block"))
        norm = self.has_norm(n)
        if norm:
            specs.append(ComponentSpec.make("norm", "norm"))
        in_features = self.head_in_features if norm else self.block_out_dims[n - 1]
        specs.append(
            ComponentSpec.make(
                "head", "head", in_features=in_features, num_classes=num_classes, pool=self.pools_in_head()
            )
        )
        return specs

    def root_specs(self) -> list[ComponentSpec]:
        """Specs of the root's own components (all blocks; no adapters, no head)."""
        return [s for s in self.layout(self.root_hparams(), num_classes=2) if s.kind != "head"]

    def root_param_count(self) -> int:
        """P of the score: backbone plus a 2-class head, as the official scorer counts it."""
        backbone = sum(count_params(self.root_modules[s.name]) for s in self.root_specs())
        return backbone + self.head_in_features * 2 + 2

    # ---- modules -------------------------------------------------------------------------------
    def fresh(self, spec: ComponentSpec) -> nn.Module:
        """A new module for a slot no ancestor can provide: a root copy, or a new adapter or head."""
        if spec.kind in ("embed", "block", "norm"):
            return copy.deepcopy(self.root_modules[spec.name])
        if spec.kind == "adapter":
            return self.adapter(int(spec.get("dim")), int(spec.get("adapter_dim")))
        if spec.kind == "head":
            return Head(int(spec.get("in_features")), int(spec.get("num_classes")), bool(spec.get("pool")))
        raise ValueError(f"no constructor for {spec}")

    def forward(self, modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """Run a path: modules in layout order; x is (B, 3, H, W) in [-1, 1]; returns logits."""
        for _, run in self.steps(modules):
            x = run(x)
        return x


@dataclass
class ViTArchitecture(Architecture):
    """Any timm VisionTransformer (the paper's root): `embed`, a `posembed` per patch grid (so image
    size can be searched), `block_i`, `adapter_i` before `block_i`, `norm`, `head`."""

    family: ClassVar[str] = "vit"
    root_grid: tuple[int, int] = (0, 0)  # patch grid of the root's position embedding
    num_prefix_tokens: int = 1

    def stem_specs(self, hp: dict[str, Any]) -> list[ComponentSpec]:
        size = int(hp["ds_image_size"])
        grid = (size // self.patch_multiple, size // self.patch_multiple)
        return [ComponentSpec.make("embed", "embed"), ComponentSpec.make("posembed", "posembed", grid=grid)]

    def adapter(self, dim: int, adapter_dim: int) -> nn.Module:
        return TokenAdapter(dim, adapter_dim)

    def root_hparams(self) -> dict[str, Any]:
        return {**super().root_hparams(), "ds_image_size": self.root_grid[0] * self.patch_multiple}

    def fresh(self, spec: ComponentSpec) -> nn.Module:
        if spec.kind == "posembed":
            root_pos: PosEmbed = self.root_modules["posembed"]  # type: ignore[assignment]
            grid = tuple(spec.get("grid"))
            if grid == tuple(root_pos.grid):
                return copy.deepcopy(root_pos)
            stem = self.root_modules["embed"]
            prefix = 0 if getattr(stem, "no_embed_class", False) else self.num_prefix_tokens
            return root_pos.resampled(grid, prefix)
        return super().fresh(spec)

    def steps(self, modules: Sequence[nn.Module]) -> list[Step]:
        """The stem step takes its position embedding: (embed, posembed) run as one step."""
        stem, pos = modules[0], modules[1]
        return [((stem, pos), lambda x: stem(x, pos)), *(((m,), m) for m in modules[2:])]


@dataclass
class CNNArchitecture(Architecture):
    """timm EfficientNet / MobileNet-style nets: `embed` (stem), the blocks flattened in order, 1x1-conv
    adapters, `norm` (conv_head + bn2, only when every block is kept: it expects the last block's
    channels) and a pooled head."""

    family: ClassVar[str] = "cnn"

    def has_norm(self, num_layers: int) -> bool:
        return num_layers == self.num_blocks

    def pools_in_head(self) -> bool:
        return True

    def adapter(self, dim: int, adapter_dim: int) -> nn.Module:
        return ConvAdapter(dim, adapter_dim)

    def clone_floor(self, device: str) -> tuple[int, bool]:
        """On a CPU the stem and the stride-4/8 blocks stay frozen: a few % of the parameters, most of
        the forward time (Lite0 at 112 px), and a frozen prefix is computed once per image instead of
        once per step (docs/LEARNING.md)."""
        if device != "cpu":
            return 0, True
        return next((i for i, s in enumerate(self.block_in_strides) if s >= 16), 0), False


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
    return ViTArchitecture(
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
    return CNNArchitecture(
        root_modules=mods,
        num_blocks=len(blocks),
        patch_multiple=1,
        block_in_dims=ins,
        block_out_dims=outs,
        head_in_features=head_in,
        block_in_strides=strides,
    )
