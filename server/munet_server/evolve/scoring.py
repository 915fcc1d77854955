"""The muNet score: validation accuracy discounted by the parameters a path costs (docs/METHOD.md §5).

    score = q * s ** (p / P)   [ * s_f ** (FLOPs / F) with the optional µ2Net+ compute factor ]

p counts each component's parameters divided by the number of tasks that use it (the task being
scored included, the root's "lock" excluded), so reusing a frozen layer that k tasks already share
costs 1/(k+1) of it, and a layer only this task uses costs all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from munet_server.model.components import Component

# The server's default s: the official "Size scale: 95" configuration. A path that adds half the root's
# parameters must be ~2.5 % (relative) more accurate than one that adds none; adapters and heads are
# nearly free. s = 1 is the paper's unpenalised "muNet" configuration (docs/LEARNING.md).
DEFAULT_SCALE_FACTOR = 0.95


@dataclass(frozen=True)
class ScoreConfig:
    scale_factor: float = 1.0  # s in (0, 1]; 1 = no size penalty (the searches pass theirs)
    root_params: int = 1  # P: root backbone + a 2-class head
    flops_scale: float = 1.0  # s_f; 1 = no compute penalty
    flops_base: float = 1.0  # F

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be in (0, 1], got {self.scale_factor}")
        if not 0.0 < self.flops_scale <= 1.0:
            raise ValueError(f"flops_scale must be in (0, 1], got {self.flops_scale}")
        if self.root_params <= 0 or self.flops_base <= 0:
            raise ValueError("root_params and flops_base must be positive")


def accounted_params(components: Iterable[Component], users: Callable[[Component], int]) -> float:
    """Sum of params / users; `users(c)` counts committed tasks using c, *excluding* the scored task."""
    return sum(c.num_params / (users(c) + 1) for c in components)


def score(quality: float, params: float, cfg: ScoreConfig, flops: float | None = None) -> float:
    s = quality * cfg.scale_factor ** (params / cfg.root_params)
    if flops is not None and cfg.flops_scale < 1.0:
        s *= cfg.flops_scale ** (flops / cfg.flops_base)
    return s
