"""Paths: one task's model as an ordered list of component references plus its hyperparameters."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from munet_server.model.arch import Architecture
from munet_server.model.components import Component

_path_ids = itertools.count(1)


@dataclass(eq=False)
class Path:
    """A task's model. Components are shared by reference; frozen ones are never trained here."""

    task: str
    hparams: dict[str, Any]
    components: list[Component]
    parent: Path | None = None
    quality: float = -math.inf  # best validation accuracy seen while training
    score: float = -math.inf
    offsprings: int = 0  # same-task children created from this path (0.5^offsprings rule)
    generation: int = -1
    id: int = field(default_factory=lambda: next(_path_ids))
    metrics: dict[str, Any] = field(default_factory=dict)

    def component(self, name: str) -> Component | None:
        for c in self.components:
            if c.spec.name == name:
                return c
        return None

    def ancestors(self) -> Iterator[Path]:
        """This path, its parent, grandparent, ...: where muNet looks for components to inherit."""
        p: Path | None = self
        while p is not None:
            yield p
            p = p.parent

    def trainable(self) -> list[Component]:
        return [c for c in self.components if not c.frozen]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for c in self.trainable() for p in c.module.parameters()]

    def num_params(self) -> int:
        return sum(c.num_params for c in self.components)

    def build(self, arch: Architecture) -> PathModel:
        return PathModel(arch, self.components)


class PathModel(nn.Module):
    """The nn.Module of a path. Holds references to the components' modules, never copies.

    `train()` only switches the path's own (draft) components: frozen shared components stay in eval
    mode, so a candidate training in the background cannot touch BatchNorm statistics or dropout of
    modules that Predict is using at the same moment.
    """

    def __init__(self, arch: Architecture, components: list[Component]) -> None:
        super().__init__()
        self.arch = arch
        self.parts = nn.ModuleList([c.module for c in components])
        self._frozen = [c.frozen for c in components]
        self.train(False)

    def train(self, mode: bool = True) -> PathModel:
        self.training = mode
        for module, frozen in zip(self.parts, self._frozen):
            module.train(mode and not frozen)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, classes)
        return self.arch.forward(list(self.parts), x)
