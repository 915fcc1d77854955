"""What a published version knows of itself, typed: stored as the task record's `metrics` (JSON) and
read back through `TaskMetrics.of(record)`, so readers never guess keys or defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from munet_server.store.records import TaskRecord


@dataclass
class TaskMetrics:
    kind: str = "probe"  # "probe" (a converged head on shared layers) or "trained"
    # Accuracy on images this version was not selected on: its judgement's folds, or (the first
    # version, a probe) its cross-validation over every labelled image.
    validation_accuracy: float = 0.0
    holdout_size: int = 0  # images that estimate counts
    probe_validation_accuracy: float = 0.0  # the best converged probe on the same images
    gain_over_probe: float = 0.0
    probe_cv_accuracy: float = 0.0
    score: float = 0.0
    scale_factor: float = 0.95
    recipe_epochs: int = 0  # what its recipe trains when retrained (0: a probe)
    image_size: int = 0
    chance_accuracy: float = 0.0  # the majority class's share
    num_examples: int = 0
    search_seconds: float = 0.0  # into its operation when it was published
    candidates: int = 0  # candidates tried by then
    generations: int = 0
    improved_from: int = 0  # the version it beat (0: the first)
    decision: dict[str, Any] | None = None  # the judgement that published it (judge.Decision)
    operation: str = ""  # the operation that published it
    history: list[dict[str, Any]] = field(default_factory=list)  # every candidate of that operation so far
    # Set by the commit:
    params_added: int = 0
    params_total: int = 0
    new_components: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, record: TaskRecord) -> TaskMetrics:
        return cls.from_dict(record.metrics)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskMetrics:
        """Keys of older versions that no field holds are left out; missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and (v is not None or k == "decision")})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
