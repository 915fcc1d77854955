"""Components: the building blocks a task's path references.

A component is one module (stem, position embedding, a transformer/CNN block, an adapter, the final
norm, a head) plus an immutable spec saying where in a path it fits. Once committed it gets an id
derived from its content (spec + tensors), its parameter count is fixed, and it is frozen forever:
tasks that want to change it train a *copy* (muNet's layer cloning).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

KINDS = ("embed", "posembed", "block", "adapter", "norm", "head")


@dataclass(frozen=True)
class ComponentSpec:
    """Where a component fits: its slot name in a path ("block_3"), kind, and shape-defining attrs.

    Two components are interchangeable in a path iff their specs are equal; muNet's ancestor walk
    ("first ancestor component with that name and the same shape") is a spec equality test.
    """

    name: str
    kind: str
    attrs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; expected one of {KINDS}")

    @classmethod
    def make(cls, name: str, kind: str, **attrs: Any) -> ComponentSpec:
        norm = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
        return cls(name, kind, tuple(sorted(norm.items())))

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)

    @property
    def index(self) -> int:
        """Layer position of a block or adapter; -1 for other kinds."""
        return int(self.name.rsplit("_", 1)[1]) if self.kind in ("block", "adapter") else -1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "attrs": {k: v for k, v in self.attrs}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComponentSpec:
        return cls.make(d["name"], d["kind"], **d.get("attrs", {}))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tensors_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm statistics included), detached, contiguous, on the CPU."""
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def content_id(spec: ComponentSpec, tensors: dict[str, torch.Tensor]) -> str:
    """Content address of a frozen component: the same spec and bytes always give the same id."""
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=list).encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return "c" + h.hexdigest()[:23]


@dataclass(eq=False)
class Component:
    """One module of the system. `frozen` components are shared by reference and never trained.

    Draft components (frozen=False) belong to one candidate during a search; they get their id at
    commit time, from their content.
    """

    spec: ComponentSpec
    module: nn.Module
    frozen: bool
    id: str = ""
    owner: str = ""  # task that created it, or "root"
    origin: str = ""  # id it was cloned from ("" for fresh components)
    num_params: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.num_params < 0:
            self.num_params = count_params(self.module)
        if self.frozen:
            self.module.requires_grad_(False)
            self.module.eval()

    def clone(self) -> Component:
        """muNet layer cloning: a trainable deep copy; the original is untouched."""
        module = copy.deepcopy(self.module)
        module.requires_grad_(True)
        return Component(self.spec, module, frozen=False, origin=self.id or self.origin)

    def freeze(self, owner: str) -> Component:
        """Freeze in place and assign the content id. Called once, when a task is committed."""
        self.module.requires_grad_(False)
        self.module.eval()
        self.frozen = True
        self.owner = self.owner or owner
        if not self.id:
            self.id = content_id(self.spec, tensors_of(self.module))
        return self
