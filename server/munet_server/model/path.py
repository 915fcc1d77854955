"""Paths: one task's model as an ordered list of component references plus its hyperparameters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from munet_server.model.arch import Architecture
from munet_server.model.components import Component


@dataclass(eq=False)
class TaskPath:
    """A task's model. Components are shared by reference; frozen ones are never trained here.

    `parent` links a search's candidates to the paths they were made from (muNet inherits a layer
    from the nearest ancestor that has it); what the search knows about a path lives in the search.
    """

    task: str
    hparams: dict[str, Any]
    components: list[Component]
    parent: TaskPath | None = None

    def component(self, name: str) -> Component | None:
        for c in self.components:
            if c.spec.name == name:
                return c
        return None

    def ancestors(self) -> Iterator[TaskPath]:
        """This path, its parent, grandparent, ...: where muNet looks for components to inherit."""
        p: TaskPath | None = self
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
            want = mode and not frozen
            # A frozen component's modules are switched together (never one by one), so one already
            # in eval mode is skipped: walking every root module once per task took 80 % of
            # start-up with 1,000 tasks (5.8 of 7.3 s).
            if not frozen or module.training != want:
                module.train(want)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, classes)
        return self.arch.forward(list(self.parts), x)
