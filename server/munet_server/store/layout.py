"""The store directory: names, the CURRENT pointer, durable file operations, the process lock.

    <root>/CURRENT            one line: the name of the live generation dir
    <root>/LOCK               fcntl lock: one server process per store
    <root>/gen-<id>/          meta.lmdb/ (LMDB env) and shards/ (<sha256>.safetensors)
    <root>/staging-<id>/      a generation being built (restore, archive); never live
    <root>/CURRENT.tmp-<id>   a CURRENT being replaced; never read

Every switch goes temp file -> fsync -> rename -> fsync(dir), so after a kill -9 at any point
CURRENT names either the old or the new complete generation.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from munet_server.errors import DataLoss, FailedPrecondition

CURRENT = "CURRENT"
LOCK = "LOCK"
GEN_PREFIX = "gen-"
STAGING_PREFIX = "staging-"
CURRENT_TMP_PREFIX = "CURRENT.tmp-"
META_DIR = "meta.lmdb"
SHARDS_DIR = "shards"
_GEN_RE = re.compile(r"^gen-[0-9a-f]{8,64}$")


def new_name(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:16]


def is_generation_name(name: str) -> bool:
    return bool(_GEN_RE.match(name))


def fsync_dir(path: Path) -> None:
    """Make a rename/create/unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path` (before it is published by a rename)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_file(path: Path, tmp_prefix: str | None = None) -> Iterator[IO[bytes]]:
    """Write `path` through a temp file, fsync'd and renamed into place on success, removed on error.

    A reader (or a restart after kill -9) sees the old file or the complete new one, never half.
    """
    tmp = path.with_name((tmp_prefix or f".{path.name}.tmp-") + uuid.uuid4().hex[:12])
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, tmp_prefix: str | None = None) -> None:
    with atomic_file(path, tmp_prefix) as f:
        f.write(data)


def read_current(root: Path) -> str | None:
    """The live generation's dir name, or None for a store that was never initialised."""
    try:
        raw = (root / CURRENT).read_bytes()
    except FileNotFoundError:
        return None
    name = raw.decode("ascii", "replace").strip()
    if not is_generation_name(name):
        raise DataLoss(
            f"{root / CURRENT} is damaged (it holds {raw[:80]!r}); write the name of the newest "
            f"complete gen-* directory into it, or restore from a snapshot"
        )
    if not (root / name).is_dir():
        raise DataLoss(f"{root / CURRENT} names {name}, which does not exist; restore from a snapshot")
    return name


def write_current(root: Path, gen_name: str) -> None:
    write_atomic(root / CURRENT, (gen_name + "\n").encode(), tmp_prefix=CURRENT_TMP_PREFIX)


def remove_tree(path: Path) -> None:
    """Remove a dir (or a stray file of that name); tolerate it being already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def acquire_lock(root: Path) -> IO[bytes]:
    """Keep a second server process off this store: its start-up gc would delete our work.

    POSIX record locks are per process, so reopening the store inside one process is allowed.
    """
    f = open(root / LOCK, "a+b")  # noqa: SIM115 - held open for the life of the Store
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise FailedPrecondition(
            f"another process is using the store at {root}; stop it, or give this one another --store"
        ) from None
    return f


def release_lock(f: IO[bytes] | None) -> None:
    if f is not None:
        with contextlib.suppress(OSError):
            f.close()
