"""Plain, typed results of the client (no protobuf objects leak to callers)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from munet_proto.v1 import munet_pb2 as pb


@dataclass(frozen=True)
class SystemInfo:
    version: str
    root_model: str
    root_weights: str
    root_weights_sha256: str
    family: str
    root_params: int
    num_blocks: int
    device: str
    num_tasks: int
    total_params: int
    min_image_size: int
    max_image_size: int
    executor: str

    @classmethod
    def from_pb(cls, m: pb.SystemInfo) -> SystemInfo:
        return cls(**{f: getattr(m, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Progress:
    phase: str = ""
    generation: int = 0
    generations_total: int = 0
    candidates_done: int = 0
    best_validation_accuracy: float = 0.0
    best_score: float = 0.0
    params_added: int = 0
    elapsed_seconds: float = 0.0
    eta_seconds: float = 0.0
    budget_seconds: float = 0.0
    serving_version: int = 0  # the version serving now (0: none yet)
    serving_kind: str = ""  # "probe" or "trained"
    serving_accuracy: float = 0.0
    first_served_seconds: float = 0.0  # from the upload's acknowledgement to version 1 serving
    published: int = 0  # versions this operation published so far


@dataclass(frozen=True)
class Operation:
    name: str
    task: str
    state: str  # QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED
    done: bool
    progress: Progress
    error_code: str = ""
    error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    num_examples: int = 0
    kind: str = "add_task"  # or "improve_task"
    result: str = ""  # when SUCCEEDED: "published version 2", or "kept version 1: ..."
    task_version: int = 0  # the version the task serves now (0: none yet)
    origin: str = "client"  # or "idle": the server's own improvement round

    @classmethod
    def from_pb(cls, m: pb.Operation) -> Operation:
        p = m.progress
        return cls(
            name=m.name,
            task=m.task,
            state=pb.Operation.State.Name(m.state),
            done=m.done,
            progress=Progress(**{f: getattr(p, f) for f in Progress.__dataclass_fields__}),
            error_code=m.error.code,
            error=m.error.message,
            created_at=m.created_at,
            updated_at=m.updated_at,
            num_examples=m.num_examples,
            kind=m.kind,
            result=m.result,
            task_version=m.task_version,
            origin=m.origin or "client",
        )


@dataclass(frozen=True)
class Label:
    name: str
    index: int
    probability: float


@dataclass(frozen=True)
class PathComponent:
    name: str
    id: str
    kind: str
    num_params: int
    owner: str
    created_by_task: bool
    shared_with: list[str]  # the names: filled by describe_task, empty in list_tasks
    num_shared_with: int = 0  # how many other users ("root" counts as one)

    @property
    def shared(self) -> bool:
        """Reused from the root or another task rather than created by this one."""
        return not self.created_by_task


@dataclass(frozen=True)
class TaskVersion:
    """One published version of a task (AddTask made version 1; each ImproveTask that won, the next)."""

    version: int
    served: bool
    validation_accuracy: float
    params_added: int
    created_at: float
    golden_digest: str
    kind: str
    improved_from: int = 0

    @classmethod
    def from_pb(cls, m: pb.TaskVersion) -> TaskVersion:
        return cls(**{f: getattr(m, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TaskInfo:
    name: str
    state: str
    class_names: list[str]
    validation_accuracy: float
    score: float
    params_added: int
    params_accounted: float
    params_total: int
    path: list[PathComponent]
    hparams: dict[str, Any]
    created_at: float
    golden_digest: str
    scale_factor: float
    search_seconds: float
    candidates_trained: int
    num_examples: int = 0
    # How good the result is: the holdout estimate above, the converged linear probe's on the same
    # images, the gain of the chosen path over it, and what guessing the majority class reaches.
    probe_validation_accuracy: float = 0.0
    gain_over_probe: float = 0.0
    holdout_size: int = 0
    chance_accuracy: float = 0.0
    image_size: int = 0
    probe_cv_accuracy: float = 0.0
    version: int = 1  # the version described (the served one unless pinned as "task@2")
    served_version: int = 1
    versions: list[TaskVersion] = field(default_factory=list)  # describe_task only
    kind: str = ""  # what this version is: "probe" or "trained"
    improving: bool = False  # an operation is searching for a better version right now

    @property
    def near_chance(self) -> bool:
        """The estimate is within 1.5 standard errors (at 50 %) of guessing: the task is not learned."""
        if not self.holdout_size:
            return False
        return self.validation_accuracy - self.chance_accuracy < 1.5 * 0.5 / self.holdout_size**0.5

    @classmethod
    def from_pb(cls, m: pb.TaskInfo) -> TaskInfo:
        return cls(
            name=m.name,
            state=m.state,
            class_names=list(m.class_names),
            validation_accuracy=m.validation_accuracy,
            score=m.score,
            params_added=m.params_added,
            params_accounted=m.params_accounted,
            params_total=m.params_total,
            path=[
                PathComponent(
                    c.name,
                    c.id,
                    c.kind,
                    c.num_params,
                    c.owner,
                    c.created_by_task,
                    list(c.shared_with),
                    c.num_shared_with,
                )
                for c in m.path
            ],
            hparams={k: json.loads(v) for k, v in sorted(m.hparams.items())},
            created_at=m.created_at,
            golden_digest=m.golden_digest,
            scale_factor=m.scale_factor,
            search_seconds=m.search_seconds,
            candidates_trained=m.candidates_trained,
            num_examples=m.num_examples,
            probe_validation_accuracy=m.probe_validation_accuracy,
            gain_over_probe=m.gain_over_probe,
            holdout_size=m.holdout_size,
            chance_accuracy=m.chance_accuracy,
            image_size=m.image_size,
            probe_cv_accuracy=m.probe_cv_accuracy,
            version=m.version,
            served_version=m.served_version,
            versions=[TaskVersion.from_pb(v) for v in m.versions],
            kind=m.kind,
            improving=m.improving,
        )


@dataclass(frozen=True)
class SnapshotInfo:
    path: str
    manifest_sha256: str
    num_files: int
    num_bytes: int
    num_tasks: int


@dataclass(frozen=True)
class Verification:
    """A task's outputs recomputed now on its stored probe images, against the digest of its commit."""

    name: str
    identical: bool
    golden_digest: str
    digest: str
    probe_images: int


@dataclass(frozen=True)
class RestoreInfo:
    num_tasks: int
    manifest_sha256: str
    tasks: list[str]


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested, in lists) -> JSON-ready dicts, for the CLI's --json."""
    if isinstance(obj, list):
        return [to_dict(o) for o in obj]
    return asdict(obj)
