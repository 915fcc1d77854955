"""The per-task search budget: plain data, torch-free (the server's flags parse without the engine).

The budget is wall-clock first: the search probes every seed, trains structured and evolved
candidates while time remains, and keeps time to refit the winner on every labelled image.
`generations` only caps the search when the clock would allow more.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from munet_server.errors import InvalidArgument

LIMITS: dict[str, tuple[float, float]] = {
    "seconds": (1.0, 7 * 24 * 3600.0),
    "generations": (0, 1000),
    "candidates_per_generation": (1, 256),
    "epochs": (1, 1000),
    "batch_size": (1, 4096),
    "views": (1, 64),
}


@dataclass(frozen=True)
class Budget:
    seconds: float = 90.0  # wall clock of the whole search: probes, candidates and the final refit
    generations: int = 100  # mutated generations after the probes (0: the converged probe only)
    candidates_per_generation: int = 4
    epochs: int = 10  # per trained candidate, over every training image
    batch_size: int = 32
    views: int = 2  # cached input views per image: clean, mirrored, then random-resized crops

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = LIMITS[f.name]
            kind = float if f.type in ("float", float) else int
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
            if not ok or (kind is int and not isinstance(v, int)):
                raise InvalidArgument(f"budget.{f.name}={v!r} is out of range [{lo:g}, {hi:g}]")

    def scaled(self, factor: float) -> Budget:
        """The same search with `factor` times the time (benchmarks report several budgets)."""
        return Budget(
            seconds=self.seconds * factor,
            generations=self.generations,
            candidates_per_generation=self.candidates_per_generation,
            epochs=self.epochs,
            batch_size=self.batch_size,
            views=self.views,
        )
