"""Snapshots (a directory or an uncompressed tar stream) and verified restores.

A snapshot is `manifest.json` + `meta.lmdb/data.mdb` + `shards/<sha256>.safetensors`, the manifest
listing every file's sha256 and size. Restore builds the new generation in a `staging-*` dir inside
the store root, verifies every byte and every cross-reference there, and only then switches
CURRENT: any refusal leaves the live store untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from munet_server.errors import (
    AlreadyExists,
    CorruptShard,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from munet_server.faults import crash_point
from munet_server.store import archive, layout
from munet_server.store.generation import LiveGeneration
from munet_server.store.metadata import MetadataStore
from munet_server.store.shards import SUFFIX, is_digest, sha256_file, validate_shard_file

log = logging.getLogger(__name__)

FORMAT = "munet-snapshot"
SCHEMA_VERSION = 1
MANIFEST = archive.MANIFEST
DATA_MDB = "meta.lmdb/data.mdb"
_MAX_MANIFEST = 64 << 20
STREAM_PREFIX = "munet-snapshot-"  # + pid: a stream's metadata copy in TMPDIR


def clean_stale_stream_dirs() -> int:
    """Remove metadata copies left in TMPDIR by streams of processes that died (kill -9)."""
    removed = 0
    for d in Path(tempfile.gettempdir()).glob(f"{STREAM_PREFIX}*-*"):
        try:
            pid = int(d.name[len(STREAM_PREFIX) :].split("-")[0])
            os.kill(pid, 0)  # still running: its stream may be in flight
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        except (ValueError, PermissionError):
            continue  # not ours, or another user's process
    return removed


# ---- writing ------------------------------------------------------------------------------------
def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # shards are immutable, so sharing the inode is safe (never edit in place)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        shutil.copyfile(src, dst)


def _copy_metadata(store: LiveGeneration, meta_dir: Path) -> tuple[list[str], int, set[str], set[str]]:
    """A compacted LMDB copy into `meta_dir`, and in the same read txn (so they agree) the task
    names, the number of components, and the (required, optional) shards it references."""
    meta_dir.mkdir(parents=True)
    with store.meta.read() as view:
        store.meta.copy_to(meta_dir, txn=view.txn)
        tasks = [t.name for t in view.list_tasks()]
        n_components = len(view.list_components())
        required, optional = store.shard_references(view)
    for digest in required | optional:
        if not is_digest(digest):
            raise DataLoss(f"the store references a malformed shard name {digest!r}; restore a snapshot")
    return tasks, n_components, required, optional


def _checked_shard(store: LiveGeneration, digest: str, copy: Path, required: bool) -> dict[str, Any] | None:
    """sha256 and size of the shard as found at `copy` (never hand out a damaged snapshot); None for
    a checkpoint shard whose operation moved on meanwhile."""
    try:
        sha, size = sha256_file(copy)
    except FileNotFoundError:
        if required:
            raise DataLoss(f"shard {digest} is referenced but missing; restore a snapshot") from None
        log.warning("snapshot: checkpoint shard %s vanished (its job moved on); skipped", digest)
        return None
    if sha != digest:
        raise CorruptShard(f"shard file {store.shards.path(digest)} is damaged; restore from a snapshot")
    return {"sha256": sha, "size": size}


def _manifest(tasks: list[str], n_components: int, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": time.time(),
        "files": dict(sorted(files.items())),
        "tasks": tasks,
        "components": n_components,
    }


def build_snapshot(store: LiveGeneration, dest: Path) -> dict[str, Any]:
    """Write a complete snapshot into the new dir `dest`; return its manifest."""
    tasks, n_components, required, optional = _copy_metadata(store, dest / "meta.lmdb")
    (dest / "shards").mkdir()
    files: dict[str, dict[str, Any]] = {}
    for digest in sorted(required | optional):
        dst = dest / "shards" / f"{digest}{SUFFIX}"
        with contextlib.suppress(FileNotFoundError):  # judged below: required, or a lost checkpoint
            _link_or_copy(store.shards.path(digest), dst)
        entry = _checked_shard(store, digest, dst, digest in required)
        if entry is not None:
            files[f"shards/{dst.name}"] = entry
    sha, size = sha256_file(dest / DATA_MDB)
    files[DATA_MDB] = {"sha256": sha, "size": size}
    manifest = _manifest(tasks, n_components, files)
    (dest / MANIFEST).write_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode())
    layout.fsync_tree(dest)
    return manifest


def snapshot_to_dir(store: LiveGeneration, dest: Path) -> dict[str, Any]:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AlreadyExists(f"{dest} already exists and is not empty; choose a new snapshot directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.urandom(6).hex()}")
    try:
        with store.exclusive():
            manifest = build_snapshot(store, tmp)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        layout.remove_tree(tmp)
        raise
    layout.fsync_dir(dest.parent)
    return manifest


@contextlib.contextmanager
def _stream_sources(store: LiveGeneration) -> Iterator[tuple[dict[str, Path], dict[str, Any]]]:
    """What a streamed snapshot reads: the metadata copy and the manifest in a temporary dir outside
    the store (TMPDIR: a store whose disk is full can still be streamed off to a backup), and the
    shard files where they are, pinned so that a task deleted meanwhile keeps its shards until the
    stream ends."""
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix=f"{STREAM_PREFIX}{os.getpid()}-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        with store.exclusive():
            tasks, n_components, required, optional = _copy_metadata(store, tmp / "meta.lmdb")
            stack.enter_context(store.pinned_shards())
        sources = {DATA_MDB: tmp / DATA_MDB, MANIFEST: tmp / MANIFEST}
        files: dict[str, dict[str, Any]] = {}
        for digest in sorted(required | optional):
            rel = f"shards/{digest}{SUFFIX}"
            entry = _checked_shard(store, digest, store.shards.path(digest), digest in required)
            if entry is not None:
                files[rel], sources[rel] = entry, store.shards.path(digest)
        sha, size = sha256_file(tmp / DATA_MDB)
        files[DATA_MDB] = {"sha256": sha, "size": size}
        manifest = _manifest(tasks, n_components, files)
        (tmp / MANIFEST).write_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode())
        yield sources, manifest


def iter_archive(store: LiveGeneration, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be a positive int, not {chunk_size!r}")
    return _iter_archive(store, chunk_size)


def _iter_archive(store: LiveGeneration, chunk_size: int) -> Iterator[bytes]:
    # A generator: the metadata copy is made on the first next() and removed (and the shards
    # unpinned) when the stream ends or is closed (a client that disconnects closes it).
    with _stream_sources(store) as (sources, manifest):
        for i, chunk in enumerate(archive.rechunk(archive.tar_blocks(sources, manifest), chunk_size)):
            yield chunk
            if i == 0:
                crash_point("during_snapshot")


def snapshot_to_archive(store: LiveGeneration, dest_file: Path) -> dict[str, Any]:
    if dest_file.exists():
        raise AlreadyExists(f"{dest_file} already exists; choose a new archive name")
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    with _stream_sources(store) as (sources, manifest), layout.atomic_file(dest_file) as f:
        for block in archive.tar_blocks(sources, manifest):
            f.write(block)
    return manifest


# ---- reading ------------------------------------------------------------------------------------
def _read_manifest(d: Path) -> dict[str, Any]:
    path = d / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise InvalidArgument(f"{d} has no {MANIFEST}: not a munet snapshot")
    if path.stat().st_size > _MAX_MANIFEST:
        raise InvalidArgument(f"{MANIFEST} is implausibly large")
    try:
        m = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise InvalidArgument(f"{MANIFEST} does not describe a {FORMAT}")
    version = m.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidArgument(f"{MANIFEST} has a bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise FailedPrecondition(
            f"the snapshot has schema_version {version}; this munet-server reads up to "
            f"{SCHEMA_VERSION}: upgrade munet-server to restore it"
        )
    files = m.get("files")
    if not isinstance(files, dict) or DATA_MDB not in files:
        raise InvalidArgument(f"{MANIFEST} lists no {DATA_MDB}")
    for rel, info in files.items():
        ok = (
            isinstance(rel, str)
            and bool(archive.FILE_RE.match(rel))
            and rel != MANIFEST
            and isinstance(info, dict)
        )
        ok = ok and is_digest(info.get("sha256")) and isinstance(info.get("size"), int) and info["size"] >= 0
        if not ok:
            raise InvalidArgument(f"{MANIFEST} has a malformed entry for {rel!r}")
    return m


def _scan_tree(d: Path) -> set[str]:
    """Relative paths of the regular files under d; anything unexpected is refused."""
    found: set[str] = set()
    for dirpath, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = p.relative_to(d).as_posix()
            if p.is_symlink():
                raise InvalidArgument(f"{rel} in the snapshot is a symlink; refusing it")
            if name in dirs:
                if rel not in archive.DIRS:
                    raise InvalidArgument(f"unexpected directory {rel} in the snapshot")
            elif not p.is_file() or not archive.FILE_RE.match(rel):
                raise InvalidArgument(f"unexpected file {rel} in the snapshot")
            else:
                found.add(rel)
    return found


def verify_snapshot_dir(d: Path, map_size: int) -> dict[str, Any]:
    """Every check a restore needs, on the copy that will become live. Returns the manifest."""
    manifest = _read_manifest(d)
    files: dict[str, dict[str, Any]] = manifest["files"]
    present = _scan_tree(d) - {MANIFEST}
    if present - set(files):
        raise InvalidArgument(
            f"the snapshot holds files its manifest does not list: {sorted(present - set(files))[:5]}"
        )
    if set(files) - present:
        raise DataLoss(f"the snapshot lacks files its manifest lists: {sorted(set(files) - present)[:5]}")
    keys: dict[str, list[str]] = {}
    for rel, info in sorted(files.items()):
        sha, size = sha256_file(d / rel)
        if size != info["size"]:
            raise DataLoss(
                f"{rel} is {size} bytes but the manifest says {info['size']}: truncated or damaged"
            )
        if sha != info["sha256"]:
            raise DataLoss(f"{rel} does not match its sha256 in the manifest: damaged or tampered with")
        if rel.startswith("shards/"):
            digest = rel[len("shards/") : -len(SUFFIX)]
            if sha != digest:
                raise DataLoss(f"{rel} does not match the digest in its name: damaged or tampered with")
            keys[digest] = validate_shard_file(d / rel)
    try:
        meta = MetadataStore(d / "meta.lmdb", map_size)
    except DataLoss as e:
        raise DataLoss(f"the snapshot's metadata database is unusable: {e.message}") from None
    try:
        with meta.read() as v:
            v.get_system()
            v.list_datasets()
            components = {c.id: c for c in v.list_components()}
            tasks, jobs = [*v.list_tasks(), *v.list_all_versions()], v.list_operations()
    except lmdb.Error as e:
        raise DataLoss(f"the snapshot's metadata database is damaged ({e})") from None
    finally:
        meta.close()
    for c in components.values():
        if c.shard and c.shard not in keys:
            raise DataLoss(f"component {c.id!r} lives in shard {c.shard}, which the snapshot lacks")
    for t in tasks:
        missing = [p for p in t.path if len(p) != 2 or p[1] not in components]
        if missing:
            raise DataLoss(
                f"task {t.name!r} (version {t.version}) references components the snapshot lacks: {missing[:3]}"
            )
        if any(s not in keys for s in t.shards):
            raise DataLoss(f"task {t.name!r} (version {t.version}) references a shard the snapshot lacks")
    for j in jobs:
        if not j.terminal and any(s not in keys for s in j.checkpoint_shards()):
            log.warning("restore: operation %s lost its checkpoint; it will fail when resumed", j.id)
    return manifest


def _copy_dir(src: Path, staging: Path) -> None:
    """Copy (never link: the source may be edited later) the expected files of a snapshot dir."""
    for rel in sorted(_scan_tree(src)):
        out = staging / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out, follow_symlinks=False)  # a swapped-in link stays a link: refused


def publish_staged(store: LiveGeneration, staging: Path) -> dict[str, Any]:
    """Verify a filled staging dir (see `staged_restore`) and switch it in; on any error nothing changed."""
    with store.exclusive():
        manifest = verify_snapshot_dir(staging, store.map_size)
        store.switch_to(staging)
    log.info("restored %d tasks into %s", len(manifest.get("tasks", [])), store.generation_dir)
    return manifest


@contextlib.contextmanager
def staged_restore(
    store: LiveGeneration, *, src_dir: Path | None = None, chunks: Iterable[bytes] | None = None, max_bytes: int = 0
) -> Iterator[Path]:
    """Phase 1 of a restore: copy a snapshot dir, or receive a tar stream, into a staging dir.

    Nothing is locked and nothing live changes meanwhile, so a slow or stalled sender holds up no
    one; phase 2, `publish_staged`, verifies and switches. The staging dir is removed on exit.
    """
    if src_dir is not None and not src_dir.is_dir():
        raise NotFound(f"snapshot directory {src_dir} does not exist")
    with store.staging_dir() as staging:
        if src_dir is not None:
            staging.mkdir()
            _copy_dir(src_dir, staging)
        else:
            assert chunks is not None
            archive.extract_archive(chunks, staging, max_bytes)
        yield staging


def restore_dir(store: LiveGeneration, src: Path) -> dict[str, Any]:
    with staged_restore(store, src_dir=src) as staging:
        return publish_staged(store, staging)


def restore_from_archive(store: LiveGeneration, chunks: Iterable[bytes], max_bytes: int) -> dict[str, Any]:
    with staged_restore(store, chunks=chunks, max_bytes=max_bytes) as staging:
        return publish_staged(store, staging)
