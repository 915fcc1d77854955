"""Plain metadata records, stored as JSON in LMDB. No protobuf, no nn.Module: only data.

Loading is tolerant in one direction only: keys this version does not know are dropped with a
warning (a newer server may add fields), but a record written under a newer `schema_version` is
refused, because silently dropping what it means could corrupt the store on the next write.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, ClassVar, TypeVar

from munet_server.errors import DataLoss, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RETIRED_KEYS = {"next_seq", "parent_info"}  # written by 0.1, never read: dropped without a warning
class OperationState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class OperationKind(str, Enum):
    ADD_TASK = "add_task"
    IMPROVE_TASK = "improve_task"


class Origin(str, Enum):
    """Who asked for an operation: a client, or the server's own idle improvement."""

    CLIENT = "client"
    IDLE = "idle"


OPERATION_STATES = tuple(s.value for s in OperationState)
TERMINAL_STATES = (OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED)

R = TypeVar("R", bound="_Record")

# Field annotations (strings, thanks to `from __future__ import annotations`) -> checks on load.
_SIMPLE: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "dict[str, Any]": (dict,),
}
_LISTS: dict[str, tuple[type, ...]] = {"list[str]": (str,), "list[int]": (int,), "list[list[str]]": (list,)}


def _type_ok(annotation: str, value: Any) -> bool:
    if annotation in _SIMPLE:
        ok = isinstance(value, _SIMPLE[annotation])
        # bool is an int in Python; a stored `true` where a count belongs is damage, not data.
        return ok and not (annotation in ("int", "float") and isinstance(value, bool))
    if annotation in _LISTS:
        if not isinstance(value, list) or not all(isinstance(v, _LISTS[annotation]) for v in value):
            return False
        if annotation == "list[list[str]]":
            return all(all(isinstance(s, str) for s in v) for v in value)
        return True
    return True  # unknown annotation: nothing to check


@functools.cache
def _annotations(cls: type) -> dict[str, str]:
    """Field name -> annotation, once per record type (a start-up reads thousands of records)."""
    return {f.name: str(f.type) for f in fields(cls)}


class _Record:
    """JSON (de)serialisation shared by every record type."""

    record_type: ClassVar[str] = "record"

    def to_json(self) -> bytes:
        # sort_keys: the same record always gives the same bytes (stable snapshots, easy diffs).
        try:
            text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))  # type: ignore[call-overload]
        except (TypeError, ValueError) as e:  # e.g. a numpy scalar or a tensor in metrics
            raise InvalidArgument(f"{self.record_type} record is not JSON-serialisable: {e}") from None
        return text.encode()

    @classmethod
    def from_json(cls: type[R], data: bytes) -> R:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise DataLoss(
                f"a stored {cls.record_type} record is not valid JSON ({e}); restore a snapshot"
            ) from None
        if not isinstance(obj, dict):
            raise DataLoss(f"a stored {cls.record_type} record is not a JSON object; restore a snapshot")
        version = obj.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DataLoss(f"a stored {cls.record_type} record has a bad schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"a stored {cls.record_type} record has schema_version {version}, but this munet-server "
                f"supports up to {SCHEMA_VERSION}; upgrade munet-server to open this store"
            )
        known = _annotations(cls)
        unknown = sorted(set(obj) - known.keys() - RETIRED_KEYS)
        if unknown:
            log.warning("dropping unknown keys %s from a stored %s record", unknown, cls.record_type)
        kwargs = {k: v for k, v in obj.items() if k in known}
        for name, value in kwargs.items():
            if not _type_ok(known[name], value):
                raise DataLoss(
                    f"a stored {cls.record_type} record has a bad {name!r} ({type(value).__name__}, "
                    f"expected {known[name]}); restore a snapshot"
                )
            if known[name] == "float":
                kwargs[name] = float(value)
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise DataLoss(
                f"a stored {cls.record_type} record is incomplete ({e}); restore a snapshot"
            ) from None


@dataclass(frozen=True)
class SystemRecord(_Record):
    record_type: ClassVar[str] = "system"
    root: dict[str, Any]  # opaque to the store: model name, kwargs, weights source/sha256, ...
    created_at: float
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class ComponentRecord(_Record):
    record_type: ClassVar[str] = "component"
    id: str
    kind: str
    spec: dict[str, Any]
    num_params: int
    shard: str  # digest of the shard holding its tensors; "" = they live in the root weights
    key_prefix: str  # its tensor keys inside the shard start with this
    owner: str  # task name, or "root"
    created_at: float
    origin: str = ""  # the component it was cloned from ("" when fresh, or committed before 0.3)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class TaskRecord(_Record):
    record_type: ClassVar[str] = "task"
    name: str
    class_names: list[str]
    path: list[list[str]]  # ordered [component_name, component_id] pairs
    hparams: dict[str, Any]
    metrics: dict[str, Any]
    shards: list[str]
    golden_digest: str
    probe: dict[str, Any]
    dataset_id: str
    created_at: float
    state: str = "READY"
    version: int = 1  # which published version of the task this record is
    next_version: int = 2  # the number the task's next version gets (numbers are never reused)
    schema_version: int = SCHEMA_VERSION

    def component_ids(self) -> list[str]:
        return [pair[1] for pair in self.path if len(pair) == 2]


@dataclass(frozen=True)
class DatasetRecord(_Record):
    record_type: ClassVar[str] = "dataset"
    id: str
    task_name: str
    class_names: list[str]
    num_examples: int
    class_counts: list[int]
    sha256: str  # over the stored examples, in order
    created_at: float
    complete: bool
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class OperationRecord(_Record):
    record_type: ClassVar[str] = "job"
    id: str
    kind: str  # an OperationKind's value
    task_name: str
    state: str  # an OperationState's value
    spec: dict[str, Any]
    progress: dict[str, Any]
    error: dict[str, Any]  # {"code": str, "message": str} or {}
    checkpoint: dict[str, Any]  # opaque; may list shard digests under "shards"
    created_at: float
    updated_at: float
    schema_version: int = SCHEMA_VERSION

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def checkpoint_shards(self) -> list[str]:
        """Shard digests this operation's checkpoint keeps alive (malformed entries are ignored)."""
        shards = self.checkpoint.get("shards", [])
        return [s for s in shards if isinstance(s, str)] if isinstance(shards, list) else []
