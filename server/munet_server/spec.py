"""The AddTask request as a domain object, validated before anything is stored."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from munet_server.errors import InvalidArgument
from munet_server.evolve.budget import Budget
from munet_server.evolve.mutations import MutationConfig, get_policy
from munet_server.evolve.scoring import DEFAULT_SCALE_FACTOR, ScoreConfig
from munet_server.evolve.search import SearchConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_task_name(name: str) -> str:
    """Task names become metric labels and CLI arguments: keep them plain, never path-like."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"invalid task name {name!r}: use 1-64 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no '/', '..', spaces or control characters)"
        )
    return name


@dataclass(frozen=True)
class AddTaskSpec:
    name: str
    class_names: list[str]
    budget: Budget = field(default_factory=Budget)
    scale_factor: float = DEFAULT_SCALE_FACTOR
    validation_fraction: float = 0.0  # images held out to compare candidates; 0: 30 % below 500, else 20 %
    seed: int = 0
    policy: str = "munet"
    learned_mu: bool = False

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        try:
            ScoreConfig(scale_factor=self.scale_factor)  # the one range check
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if not 0.0 <= self.validation_fraction <= 0.5:
            raise InvalidArgument(
                f"validation_fraction must be in (0, 0.5] (or 0 for automatic), got {self.validation_fraction}"
            )
        if not 0 <= self.seed < 2**31:
            raise InvalidArgument(f"seed must be in [0, 2^31), got {self.seed}")
        get_policy(self.policy)

    def search_config(self, clone_floor: int = 0, clone_stem: bool = True) -> SearchConfig:
        """`clone_floor`/`clone_stem`: what the device can afford to train (MunetSystem.clone_floor)."""
        mutation = MutationConfig(
            policy=self.policy, learned_mu=self.learned_mu, clone_floor=clone_floor, clone_stem=clone_stem
        )
        return SearchConfig(
            budget=self.budget,
            scale_factor=self.scale_factor,
            seed=self.seed,
            mutation=mutation,
            holdout_fraction=self.validation_fraction,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AddTaskSpec:
        d = dict(d)
        d["budget"] = Budget(**d.get("budget", {}))
        return cls(**d)
