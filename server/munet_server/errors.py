"""Domain errors. Each carries the gRPC status it maps to, so one generic mapping translates any of them.

The core (model, evolve, store, data) raises these; only `server/rpc` turns them into statuses.
Messages are written for the person who sent the request: say what was wrong and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

import grpc


class MunetError(Exception):
    """Base class: a failure with a precise gRPC status and an actionable message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MunetError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidImage(InvalidArgument):
    """An uploaded or predicted image could not be decoded or is out of bounds."""


class InvalidDataset(InvalidArgument):
    """An upload is structurally wrong: labels out of range, too few examples per class, ..."""


class NotFound(MunetError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MunetError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(MunetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MunetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(MunetError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MunetError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Cancelled(MunetError):
    code = grpc.StatusCode.CANCELLED


class Aborted(MunetError):
    """A concurrent change (a task deleted and re-added) got in the way: the caller may retry."""

    code = grpc.StatusCode.ABORTED


class DeadlineExceeded(MunetError):
    """The caller's deadline passed before the answer was ready; its queued work is dropped."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(MunetError):
    """The server is shutting down or overloaded for a moment: the same call may succeed on retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(MunetError):
    """Stored data is missing, truncated or does not match its digest (a shard, the metadata, a snapshot)."""

    code = grpc.StatusCode.DATA_LOSS


class CorruptShard(DataLoss):
    pass


class WeightsMismatch(FailedPrecondition):
    """Root weights do not fit the model: missing or mis-shaped keys. Never load silently random."""


_FULL = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota", errno.EFBIG: "hit a file-size limit"}


def disk_full(e: BaseException, store: Path) -> ResourceExhausted | None:
    """The actionable error for a write that failed for want of space (None for any other error).
    LMDB reports a short write as a generic I/O error, so free space is checked for those."""
    reason = _FULL.get(getattr(e, "errno", None)) if isinstance(e, OSError) else None
    free = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(store).free
    lmdb_io = "lmdb" in type(e).__module__ and "Input/output error" in str(e)
    if reason is None and lmdb_io and free is not None and free < 64 << 20:
        reason = "is full"
    if reason is None:
        return None
    left = f" ({free / 2**20:.0f} MiB free)" if free is not None else ""
    return ResourceExhausted(
        f"the disk of the store {store} {reason}{left}: nothing was committed; "
        "free space (delete tasks, old snapshots) or move the store to a larger disk"
    )
