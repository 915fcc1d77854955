"""What a search needs from the system it grows (MunetSystem provides it)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from munet_server.evolve.scoring import ScoreConfig
from munet_server.model.arch import Architecture
from munet_server.model.components import Component
from munet_server.model.hparams import SearchSpace
from munet_server.model.path import TaskPath


class SearchContext(Protocol):
    arch: Architecture
    space: SearchSpace
    device: torch.device
    pool: dict[str, Component]
    root: Any  # .config.to_dict(): how a remote worker rebuilds the architecture

    @property
    def root_path(self) -> TaskPath: ...

    def seed_paths(self, exclude: str = "") -> list[TaskPath]: ...

    def accounted_params(self, path: TaskPath, task: str) -> float: ...

    def score_config(self, scale_factor: float) -> ScoreConfig: ...
