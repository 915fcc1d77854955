"""The Store: one live generation (LMDB metadata + content-addressed shards) behind CURRENT.

`commit_task` is the only writer of tasks: tensors go to one new shard first, then one LMDB
transaction publishes components and task together, so a crash in between leaves at most an
unreferenced shard for `gc`. Snapshots and restores are `munet_server.store.snapshot`'s, called with a store.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from munet_server.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from munet_server.faults import crash_point
from munet_server.store import layout, snapshot
from munet_server.store.layout import GEN_PREFIX, META_DIR, SHARDS_DIR, STAGING_PREFIX
from munet_server.store.metadata import DATA_FILE, MetadataStore, MetaView, MetaWriter
from munet_server.store.records import ComponentRecord, TaskRecord
from munet_server.store.shards import SUFFIX, ShardStore, is_digest

log = logging.getLogger(__name__)

TASK_TENSOR_PREFIX = "__task__/"  # task-level tensors (e.g. probe inputs) inside the task's shard
Tensors = dict[str, torch.Tensor]


def _after_shard_written(digest: str) -> None:
    """Fault-injection point (tests monkeypatch it): a task's shard is durable, nothing published."""
    crash_point("after_shard_written")


def _before_current_switch(gen_name: str) -> None:
    """Fault-injection point (tests monkeypatch it): a restored generation is complete, not live."""
    crash_point("before_current_switch")


class Store:
    def __init__(
        self, root: Path, map_size: int = 1 << 36, gc_on_open: bool = True, compact_min_bytes: int = 256 << 20
    ) -> None:
        """`compact_min_bytes`: at open, a metadata file at least this large and more than twice
        what its records occupy (uploads and tasks deleted) is compacted (see `_compact_if_sparse`)."""
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise FailedPrecondition(f"the store path {self.root} exists but is not a directory") from None
        self.map_size = map_size
        self.cache_size = 4  # decoded shards kept in memory (the root shard is read once per open)
        self._lock = threading.RLock()  # commit / delete / gc / snapshot / restore never interleave
        self._cache: OrderedDict[str, Tensors] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._pins = 0  # snapshot streams reading shard files in place (see pinned_shards)
        self._deferred: set[str] = set()
        self._active_staging: set[str] = set()  # staging dirs in use: gc must leave them alone
        self._proc_lock = layout.acquire_lock(self.root)
        try:
            self._open_generation(layout.read_current(self.root) or self._init_first_generation())
            if gc_on_open:
                self.gc()
                self._compact_if_sparse(compact_min_bytes)
        except BaseException:
            layout.release_lock(self._proc_lock)
            raise

    # ---- generations ---------------------------------------------------------------------------
    def _init_first_generation(self) -> str:
        holding = [
            p.name
            for p in self.root.iterdir()
            if layout.is_generation_name(p.name)
            and ((p / META_DIR / "data.mdb").exists() or any((p / SHARDS_DIR).glob(f"*{SUFFIX}")))
        ]
        if holding:  # CURRENT was lost, not never written: do not start an empty store over data
            raise DataLoss(
                f"{self.root / layout.CURRENT} is missing but {sorted(holding)} hold data; write the "
                "name of the right generation into CURRENT, or restore from a snapshot"
            )
        staging = self.root / layout.new_name(STAGING_PREFIX)
        (staging / META_DIR).mkdir(parents=True)
        (staging / SHARDS_DIR).mkdir()
        name = self._publish_generation(staging)
        log.info("created a new store at %s", self.root)
        return name

    def _publish_generation(self, staging: Path) -> str:
        """staging -> gen-<id> -> CURRENT. Before CURRENT is replaced, gc treats it as garbage."""
        layout.fsync_tree(staging)
        name = layout.new_name(GEN_PREFIX)
        os.rename(staging, self.root / name)
        layout.fsync_dir(self.root)
        try:
            _before_current_switch(name)
            layout.write_current(self.root, name)
        except BaseException:
            layout.remove_tree(self.root / name)
            raise
        return name

    def _open_generation(self, name: str) -> None:
        gen = self.root / name
        shards = ShardStore(gen / SHARDS_DIR)
        data = gen / META_DIR / DATA_FILE
        fix = "restore the store from a snapshot (munet restore), or move the store aside and start afresh"
        if (not data.exists() or data.stat().st_size == 0) and shards.digests():
            # Shards are only ever written after the metadata exists: this is damage, not a new store.
            # Opening would create an empty database and start-up gc would delete every task's shard.
            state = "missing" if not data.exists() else "empty"
            raise DataLoss(f"the metadata database {data} is {state} but {gen / SHARDS_DIR} holds data; {fix}")
        meta = MetadataStore(gen / META_DIR, self.map_size)
        try:
            with meta.read() as v:
                has_system = v.get_system() is not None
            foreign = (
                [] if has_system else [d for d in shards.digests() if shards.metadata(d).get("owner") != "root"]
            )
        except BaseException:
            meta.close()
            raise
        if foreign:  # only the root's shard may precede the first record
            meta.close()
            raise DataLoss(
                f"the metadata database {data} holds no system record but {len(foreign)} task or "
                f"checkpoint shards exist in {gen / SHARDS_DIR}; {fix}"
            )
        self.generation_dir, self.meta, self.shards = gen, meta, shards
        with self._cache_lock:
            self._cache.clear()

    def close(self) -> None:
        self.meta.close()
        with self._cache_lock:
            self._cache.clear()
        layout.release_lock(self._proc_lock)
        self._proc_lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _compact_if_sparse(self, min_bytes: int) -> None:
        """Give free pages back to the disk: the live generation is rebuilt from a compacted
        snapshot of itself (shards hard-linked, every byte verified) and switched in atomically.
        Only at open, before anything else writes; a crash midway leaves a staging dir for gc."""
        data = self.generation_dir / META_DIR / DATA_FILE
        size, used = data.stat().st_size, self.meta.used_bytes()
        if size < min_bytes or size < 2 * used:
            return
        with self.staging_dir() as staging:
            snapshot.build_snapshot(self, staging)
            snapshot.publish_staged(self, staging)
        log.info("metadata compacted: %.0f MiB -> %.0f MiB", size / 2**20,
                 (self.generation_dir / META_DIR / DATA_FILE).stat().st_size / 2**20)  # fmt: skip

    # ---- concurrency, for store/snapshot.py -------------------------------------------------
    def exclusive(self) -> threading.RLock:
        """Held, nothing else writes: commit, delete, gc, snapshot and the restore switch never interleave."""
        return self._lock

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A fresh `staging-*` path in the store root (same filesystem, so shards hard-link and the
        switch is a rename). gc leaves it alone while in use; it is removed on exit unless switched in."""
        staging = self.root / layout.new_name(STAGING_PREFIX)
        self._active_staging.add(staging.name)
        try:
            yield staging
        finally:
            layout.remove_tree(staging)  # gone already when it became the live generation
            self._active_staging.discard(staging.name)

    def switch_to(self, staging: Path) -> None:
        """Make a verified staging dir the live generation; then drop the old one."""
        with self._lock:
            old = self.generation_dir
            name = self._publish_generation(staging)
            self.meta.close()
            self._open_generation(name)
            layout.remove_tree(old)
            layout.fsync_dir(self.root)

    # ---- tasks ---------------------------------------------------------------------------------
    def commit_task(
        self,
        task: TaskRecord,
        new_components: list[tuple[ComponentRecord, Tensors]],
        extra_tensors: Tensors | None = None,
    ) -> TaskRecord:
        """Publish a task and its new components atomically; returns the task as stored.

        Tensors go into ONE shard (component tensors under `key_prefix`, `extra_tensors` under
        TASK_TENSOR_PREFIX, read back with `load_task_tensors`); then ONE LMDB transaction.
        """
        tensors = _shard_tensors(task, new_components, extra_tensors)
        with self._lock:
            if self.meta.get_task(task.name) is not None:  # fail before writing anything
                raise _task_exists(task.name)
            digest = self.shards.put(tensors, {"task": task.name}) if tensors or new_components else ""
            _after_shard_written(digest)
            comps = [replace(rec, shard=digest) for rec, _ in new_components]
            stored = replace(task, shards=[digest] if digest else [])
            with self.meta.write() as w:
                if w.get_task(task.name) is not None:
                    raise _task_exists(task.name)
                stored = replace(stored, version=1, next_version=2)
                _put_components(w, stored, comps)
                w.put_version(stored)
                w.put_task(stored)
            return stored

    def commit_version(
        self,
        task: TaskRecord,
        new_components: list[tuple[ComponentRecord, Tensors]],
        extra_tensors: Tensors | None = None,
    ) -> TaskRecord:
        """Publish a new version of an existing task and make it current, atomically, like
        `commit_task`; its number is the task's `next_version`. Earlier versions stay stored."""
        tensors = _shard_tensors(task, new_components, extra_tensors)
        with self._lock:
            if self.meta.get_task(task.name) is None:  # fail before writing anything
                raise NotFound(f"task {task.name!r} does not exist")
            digest = self.shards.put(tensors, {"task": task.name}) if tensors or new_components else ""
            _after_shard_written(digest)
            comps = [replace(rec, shard=digest) for rec, _ in new_components]
            with self.meta.write() as w:
                current = w.get_task(task.name)
                if current is None:
                    raise NotFound(f"task {task.name!r} was deleted meanwhile")
                if not w.list_versions(task.name):  # committed before versions existed
                    w.put_version(current)
                version = current.next_version
                stored = replace(
                    task, shards=[digest] if digest else [], version=version, next_version=version + 1
                )
                _put_components(w, stored, comps)
                w.put_version(stored)
                w.put_task(stored)
            return stored

    def versions(self, name: str) -> list[TaskRecord]:
        """The task's published versions, oldest first."""
        with self.meta.read() as v:
            return _versions_of(v, name)

    def set_current_version(self, name: str, version: int) -> TaskRecord:
        """Make a stored version the one a task serves (a rollback, or forward again)."""
        with self._lock, self.meta.write() as w:
            current = w.get_task(name)
            if current is None:
                raise NotFound(f"task {name!r} does not exist")
            rec = _version(w, current, version)
            stored = replace(rec, next_version=current.next_version)
            w.put_task(stored)
            return stored

    def delete_version(self, name: str, version: int) -> list[str]:
        """Remove a version that is not current; its components that no other record (any version
        of any task) uses are freed, and their shard files go. Returns the freed component ids."""
        with self._lock:
            with self.meta.write() as w:
                current = w.get_task(name)
                if current is None:
                    raise NotFound(f"task {name!r} does not exist")
                rec = _version(w, current, version)
                if version == current.version:
                    raise FailedPrecondition(
                        f"version {version} is the one task {name!r} serves; make another version current "
                        "first (SetTaskVersion), or delete the task"
                    )
                w.delete_version(name, version)
                freed, shards = _free_unused(w, rec.component_ids())
                shards |= set(rec.shards)
            self._release_shards(shards)
            return freed

    def delete_task(self, name: str) -> list[str]:
        """Remove a task with every version, its dataset and the components nothing else uses;
        returns their ids. Their shard files go at once (not at the next start-up), once no record
        references them."""
        with self._lock:
            with self.meta.write() as w:
                task = w.get_task(name)
                if task is None:
                    raise NotFound(f"task {name!r} does not exist")
                versions = _versions_of(w, name)
                for v in versions:
                    w.delete_version(name, v.version)
                w.delete_task(name)
                ids = [cid for rec in (task, *versions) for cid in rec.component_ids()]
                freed, shards = _free_unused(w, ids)
                shards |= {s for rec in (task, *versions) for s in rec.shards}
                ds = task.dataset_id
                if ds and "/" not in ds and all(t.dataset_id != ds for t in w.list_tasks()):
                    w.delete_dataset(ds)
            self._release_shards(shards)
            return freed

    def _release_shards(self, shards: set[str]) -> None:
        for digest in sorted(d for d in shards if is_digest(d)):
            with self._cache_lock:
                self._cache.pop(digest, None)
            self.release_shard(digest)  # kept if another record still references it

    # ---- tensors -------------------------------------------------------------------------------
    def _load_shard(self, digest: str) -> Tensors:
        with self._cache_lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return self._cache[digest]
        tensors = self.shards.get(digest)  # outside the lock: verifying a big shard takes a while
        with self._cache_lock:
            self._cache[digest] = tensors
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return tensors

    def load_component_tensors(self, rec: ComponentRecord) -> Tensors:
        """The component's tensors, prefix stripped. Shared with a cache: copy before mutating."""
        if not rec.shard:
            raise FailedPrecondition(f"component {rec.id!r} keeps its tensors in the root weights")
        n = len(rec.key_prefix)
        return {k[n:]: v for k, v in self._load_shard(rec.shard).items() if k.startswith(rec.key_prefix)}

    def load_task_tensors(self, task: TaskRecord) -> Tensors:
        """The `extra_tensors` given to `commit_task` for this task."""
        n = len(TASK_TENSOR_PREFIX)
        out: Tensors = {}
        for digest in task.shards:
            out.update(
                {k[n:]: v for k, v in self._load_shard(digest).items() if k.startswith(TASK_TENSOR_PREFIX)}
            )
        return out

    # ---- garbage -------------------------------------------------------------------------------
    @staticmethod
    def shard_references(view: MetaView) -> tuple[set[str], set[str]]:
        """(required, optional): shards of components and tasks, and of live operations' checkpoints
        (a snapshot may lose a checkpoint whose operation moved on; gc must keep both)."""
        required = view.held_shards()  # plain JSON: thousands of records at start-up
        optional = {s for j in view.list_operations() if not j.terminal for s in j.checkpoint_shards()}
        return required, optional - required

    @classmethod
    def referenced_shards(cls, view: MetaView) -> set[str]:
        """Shards that must survive gc."""
        required, optional = cls.shard_references(view)
        return {s for s in required | optional if is_digest(s)}

    @contextlib.contextmanager
    def pinned_shards(self) -> Iterator[None]:
        """While held, released shards stay on disk (a snapshot stream is reading them); they go
        when the last pin ends."""
        with self._lock:
            self._pins += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins -= 1
                deferred, self._deferred = (self._deferred, set()) if self._pins == 0 else (set(), self._deferred)
            for digest in sorted(deferred):
                self.release_shard(digest)

    def release_shard(self, digest: str) -> bool:
        """Remove a shard now if no record references it (safe alternative to shards.remove)."""
        with self._lock:
            if self._pins:
                self._deferred.add(digest)
                return False
            with self.meta.read() as v:
                if digest in self.referenced_shards(v):
                    return False
            self.shards.remove(digest)
            return True

    def gc(self, min_age_s: float = 0.0) -> dict[str, int]:
        """Delete leftovers of interrupted work. Meant for start-up (it runs on open); at run time
        pass `min_age_s` so a shard written but not yet published by another writer is spared."""
        with self._lock:
            if layout.read_current(self.root) != self.generation_dir.name:
                raise FailedPrecondition(
                    f"the store at {self.root} was switched by another handle; reopen it"
                )
            counts = {"temp_files": self.shards.clean_temp(), "staging_dirs": 0, "old_generations": 0}
            counts["stream_dirs"] = snapshot.clean_stale_stream_dirs()
            for p in self.root.iterdir():
                if p.name.startswith(layout.CURRENT_TMP_PREFIX):
                    p.unlink(missing_ok=True)
                    counts["temp_files"] += 1
                elif p.name.startswith(STAGING_PREFIX) and p.name.split(".")[0] not in self._active_staging:
                    layout.remove_tree(p)
                    counts["staging_dirs"] += 1
                elif layout.is_generation_name(p.name) and p.name != self.generation_dir.name:
                    layout.remove_tree(p)
                    counts["old_generations"] += 1
            with self.meta.read() as v:
                refs = self.referenced_shards(v)
            removed, now = 0, time.time()
            for digest in self.shards.digests() - refs:
                path = self.shards.path(digest)
                try:
                    if min_age_s > 0 and now - path.stat().st_mtime < min_age_s:
                        continue
                except FileNotFoundError:
                    continue
                self.shards.remove(digest)
                removed += 1
            counts.update(shards_removed=removed, shards_kept=len(refs))
            if any(counts.values()):
                log.info("store gc: %s", counts)
            return counts


def _shard_tensors(
    task: TaskRecord, new_components: list[tuple[ComponentRecord, Tensors]], extra: Tensors | None
) -> Tensors:
    """Check a commit's records, and lay out its one shard: each new component's tensors under its
    key prefix, task-level tensors (probe inputs) under TASK_TENSOR_PREFIX."""
    if not isinstance(task.name, str) or not task.name:
        raise InvalidArgument("a task needs a non-empty name")
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in task.path):
        raise InvalidArgument(f"task {task.name!r}: path must be a list of [component_name, component_id]")
    ids = [rec.id for rec, _ in new_components]
    if len(set(ids)) != len(ids):
        raise InvalidArgument(f"task {task.name!r}: new components repeat an id")
    prefixes = sorted(rec.key_prefix for rec, _ in new_components)
    if any(not p or p.startswith(TASK_TENSOR_PREFIX) for p in prefixes) or any(
        b.startswith(a) for a, b in itertools.pairwise(prefixes)
    ):  # a prefix inside another would hand one component's tensors to the other
        raise InvalidArgument(f"task {task.name!r}: component key prefixes must be non-empty and disjoint")
    tensors: Tensors = {}
    for rec, ts in new_components:
        tensors.update({rec.key_prefix + k: v for k, v in ts.items()})
    tensors.update({TASK_TENSOR_PREFIX + k: v for k, v in (extra or {}).items()})
    return tensors


def _put_components(w: MetaWriter, task: TaskRecord, comps: list[ComponentRecord]) -> None:
    """Write a commit's new components, after checking that everything its path names exists."""
    for c in comps:
        if w.get_component(c.id) is not None:
            raise AlreadyExists(f"component {c.id!r} is already in the store; reference it instead")
    new_ids = {c.id for c in comps}
    missing = [i for i in task.component_ids() if i not in new_ids and w.get_component(i) is None]
    if missing:
        raise FailedPrecondition(f"task {task.name!r} references unknown components {missing[:5]}")
    for c in comps:
        w.put_component(c)


def _versions_of(view: MetaView, name: str) -> list[TaskRecord]:
    """A task's versions; one committed before versions existed is its own version 1."""
    versions = view.list_versions(name)
    if versions:
        return versions
    current = view.get_task(name)
    return [current] if current is not None else []


def _version(view: MetaView, current: TaskRecord, version: int) -> TaskRecord:
    for rec in _versions_of(view, current.name):
        if rec.version == version:
            return rec
    known = ", ".join(str(r.version) for r in _versions_of(view, current.name))
    raise NotFound(f"task {current.name!r} has no version {version} (it has {known})")


def _free_unused(w: MetaWriter, ids: list[str]) -> tuple[list[str], set[str]]:
    """Delete those of the components `ids` that no task record (current or any version) still
    references and that are not the root's; returns their ids and the shards they lived in."""
    used = {cid for t in (*w.list_tasks(), *w.list_all_versions()) for cid in t.component_ids()}
    freed, shards = [], set()
    for cid in dict.fromkeys(ids):
        rec = w.get_component(cid)
        if cid not in used and rec is not None and rec.owner != "root":
            w.delete_component(cid)
            freed.append(cid)
            shards.add(rec.shard)
    return freed, shards


def _task_exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"task {name!r} already exists; pick another name or delete the task first")
