"""The per-task search budget: plain data, torch-free (the server's flags parse without the engine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from munet_server.errors import InvalidArgument

if TYPE_CHECKING:
    from munet_server.evolve.mutations import MutationConfig
    from munet_server.evolve.search import SearchConfig
    from munet_server.evolve.train import TrainConfig


@dataclass(frozen=True)
class Budget:
    """The per-task search budget; small defaults so a CPU finishes a task in minutes."""

    generations: int = 3
    candidates_per_generation: int = 2
    steps_per_validation: int = 20
    validations: int = 2
    validation_examples: int = 256
    batch_size: int = 32

    def __post_init__(self) -> None:
        limits = {
            "generations": (1, 1000),
            "candidates_per_generation": (1, 256),
            "steps_per_validation": (1, 100_000),
            "validations": (1, 1000),
            "validation_examples": (1, 1_000_000),
            "batch_size": (1, 4096),
        }
        for key, (lo, hi) in limits.items():
            v = getattr(self, key)
            if not isinstance(v, int) or not lo <= v <= hi:
                raise InvalidArgument(f"budget.{key}={v!r} is out of range [{lo}, {hi}]")

    def train_config(self) -> TrainConfig:
        from munet_server.evolve.train import TrainConfig

        return TrainConfig(
            batch_size=self.batch_size,
            validations=self.validations,
            steps_per_validation=self.steps_per_validation,
            validation_examples=self.validation_examples,
        )

    def search_config(
        self, scale_factor: float = 1.0, seed: int = 0, mutation: MutationConfig | None = None
    ) -> SearchConfig:
        from munet_server.evolve.mutations import MutationConfig
        from munet_server.evolve.search import SearchConfig

        return SearchConfig(
            generations=self.generations,
            candidates_per_generation=self.candidates_per_generation,
            scale_factor=scale_factor,
            seed=seed,
            train=self.train_config(),
            mutation=mutation or MutationConfig(),
        )
