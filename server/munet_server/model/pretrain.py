"""Make a pretrained root where no hub is reachable: supervised training of a timm model, saved as safetensors.

muNet assumes a pretrained root; a randomly initialised one gives near-constant features, so a new
task's first (head-only) candidates learn nothing. For tests and offline ViT roots this trains the
whole timm model briefly on real packaged data (e.g. animal shapes) and writes a state dict that
`RootConfig(weights=PATH)` loads strictly, like any downloaded checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from munet_server.data.transforms import DataHParams, augment
from munet_server.model.root import RootConfig


def pretrain_root(
    config: RootConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    out: Path,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> Path:
    """images: (N, 3, S, S) uint8; trains at `config.image_size`; returns the safetensors path."""
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1
    model = timm.create_model(
        config.model_name, pretrained=False, num_classes=num_classes, **config.model_kwargs
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    hp = DataHParams(image_size=config.image_size, area_min=0.5, aspect_min=0.75, flip=True)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(augment(images[idx], hp, gen)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out))
    return out
