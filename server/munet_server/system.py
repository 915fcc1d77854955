"""The live multitask system: the component pool and every committed task's path, backed by a Store.

Locks (docs/METHOD.md §1): the root's components are frozen from the start; a task's draft components
are frozen the moment the task is committed, and from then on are only ever *referenced* (or copied)
by other tasks. Nothing here ever writes into a frozen tensor, so committing a task cannot change
any earlier task's predictions — `verify_task` recomputes each task's golden digest to prove it.

Readers (Predict) take the current `tasks` mapping, which is replaced, never mutated, on commit and
delete: they never see a half-published task.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from munet_server.data.transforms import preprocess
from munet_server.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from munet_server.evolve.scoring import ScoreConfig, accounted_params
from munet_server.model.arch import Architecture
from munet_server.model.components import Component, ComponentSpec, tensors_of
from munet_server.model.hparams import SearchSpace
from munet_server.model.path import PathModel, TaskPath
from munet_server.model.root import Root, RootConfig, load_root
from munet_server.model.shared_forward import forward_shared
from munet_server.residency import Residency
from munet_server.store.records import ComponentRecord, SystemRecord, TaskRecord
from munet_server.store.store import Store

log = logging.getLogger(__name__)
GOLDEN_IMAGES = 16  # the images whose outputs a version's golden digest hashes (stored as "probe/images")


@dataclass(frozen=True)
class DamagedTask:
    record: TaskRecord
    reason: str


@dataclass(frozen=True)
class TaskEntry:
    record: TaskRecord
    path: TaskPath
    arch: Architecture = field(repr=False, compare=False)

    @cached_property
    def model(self) -> PathModel:
        """Built on first use: building every task's module at start-up took a quarter of opening
        a store of 1,000 tasks. Two threads may race to build it; both get an equal module over the
        same components."""
        return self.path.build(self.arch).eval()


class MunetSystem:
    """Open with `MunetSystem.open(store, root_config)`; the store decides the root once created."""

    def __init__(self, store: Store, root: Root, device: torch.device, max_resident_bytes: int = 0) -> None:
        self.store = store
        self.root = root
        self.arch = root.arch
        self.device = device
        cfg = root.config
        self.space = SearchSpace.for_root(
            self.arch.num_blocks, self.arch.patch_multiple, cfg.min_image_size, cfg.max_image_size
        )
        self.storage_size = cfg.max_image_size  # datasets are kept decoded at this size
        # Predict feeds CNN roots on a CPU channels-last inputs: oneDNN's NHWC kernels ran a batch-1
        # EfficientNet-Lite0 forward 1.7x and a batch-32 one 1.2x faster in process on a 2-core CPU. Golden
        # digests keep the contiguous layout they were first computed in (the two differ by float
        # rounding, ~1e-6), so that every store written before still verifies.
        self.channels_last = self.arch.family == "cnn" and device.type == "cpu"
        self.pool: dict[str, Component] = {}
        self._root_path: TaskPath | None = None
        self.tasks: dict[str, TaskEntry] = {}
        self._users: dict[str, frozenset[str]] = {}  # component id -> committed tasks using it
        # Tasks whose stored weights are missing or corrupt: kept in the store (a snapshot restore or a
        # delete is the user's call), refused by Predict with DATA_LOSS while every other task serves.
        self.damaged: dict[str, DamagedTask] = {}
        self._pinned: dict[tuple[str, int], TaskEntry] = {}  # versions asked for by number, built once
        # What the last commit took (freeze, golden digest, shard + LMDB write): a search keeps this
        # much of its budget for it, so that AddTask as a whole ends within the budget.
        self.commit_seconds = 1.0
        # Committed layers beyond the root's: in memory or on disk, least recently used go first.
        self.residency = Residency(max_resident_bytes, self._stored_tensors, device)
        self._lock = threading.RLock()

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, store: Store, root_config: RootConfig | None = None, device: str = "auto", max_resident_mb: float = 0
    ) -> MunetSystem:
        """max_resident_mb: bound on the committed layers kept in memory beyond the root's (0: none)."""
        dev = resolve_device(device)
        resident = int(max_resident_mb * 2**20)
        rec = store.meta.get_system()
        if rec is None:
            root = load_root(root_config or RootConfig())
            system = cls(store, root, dev, resident)
            system._create_root()
        else:
            stored = RootConfig.from_dict(rec.root)
            if root_config is not None and root_config.model_name != stored.model_name:
                raise FailedPrecondition(
                    f"the store at {store.root} holds a system rooted on {stored.model_name!r}, not "
                    f"{root_config.model_name!r}; open it without --root or use another --store"
                )
            # The architecture comes from timm; every tensor, the root's included, from the shards.
            skeleton = RootConfig.from_dict({**stored.to_dict(), "weights": "random"})
            root = load_root(skeleton)
            root.weights_sha256 = rec.root.get("weights_sha256", "")
            root.config = stored
            system = cls(store, root, dev, resident)
            system._load()
        return system

    def _create_root(self) -> None:
        comps = [
            Component(s, self.arch.root_modules[s.name], frozen=True).freeze("root")
            for s in self.arch.root_specs()
        ]
        tensors = {f"{c.id}/{k}": v for c in comps for k, v in tensors_of(c.module).items()}
        digest = self.store.shards.put(tensors, metadata={"owner": "root"})
        now = time.time()
        with self.store.meta.write() as w:
            w.put_system(SystemRecord(root=self.root.describe(), created_at=now))
            for c in comps:
                w.put_component(_component_record(c, shard=digest, now=now))
        for c in comps:
            c.module.to(self.device)
            self.pool[c.id] = c
        self._root_path = self._make_root_path()

    def _load(self) -> None:
        records = {r.id: r for r in self.store.meta.list_components()}
        unreadable: dict[str, str] = {}
        for rec in records.values():
            spec = ComponentSpec.from_dict(rec.spec)
            module = self.arch.fresh(spec)
            try:
                tensors = self.store.load_component_tensors(rec)
            except (DataLoss, NotFound) as e:
                if rec.owner == "root":  # every task runs through the root: nothing can be served
                    raise DataLoss(f"the root's weights are unreadable: {e.message}") from None
                log.error("component %s of %s is unreadable: %s", rec.id, rec.owner, e.message)
                unreadable[rec.id] = e.message
                continue
            module.load_state_dict(tensors, strict=True)
            if rec.owner == "root":  # root slots must be the very modules the arch lays out
                self.arch.root_modules[spec.name].load_state_dict(module.state_dict(), strict=True)
                module = self.arch.root_modules[spec.name]
            c = Component(spec, module.to(self.device), frozen=True, id=rec.id, owner=rec.owner, origin=rec.origin)
            c.num_params = rec.num_params
            self.pool[rec.id] = c
            if rec.owner != "root":
                self.residency.add(c)  # beyond the bound, the oldest go back to disk at once
        self._root_path = self._make_root_path()
        tasks, damaged = {}, {}
        for t in self.store.meta.list_tasks():
            missing = [cid for _, cid in t.path if cid not in self.pool]
            if missing:
                why = unreadable.get(missing[0], f"component {missing[0]} has no record")
                damaged[t.name] = DamagedTask(t, f"{len(missing)} of its components are unreadable ({why})")
                log.error("task %r cannot be served: %s", t.name, damaged[t.name].reason)
                continue
            path = TaskPath(task=t.name, hparams=t.hparams, components=[self.pool[cid] for _, cid in t.path])
            tasks[t.name] = TaskEntry(t, path, self.arch)
        self._set_tasks(tasks)
        self.damaged = damaged

    def _make_root_path(self) -> TaskPath:
        by_name = {c.spec.name: c for c in self.pool.values() if c.owner == "root"}
        hp = self.space.defaults(self.root.config.image_size)
        comps = [by_name[s.name] for s in self.arch.root_specs()]
        return TaskPath(task="root", hparams=hp, components=comps)

    @property
    def root_path(self) -> TaskPath:
        assert self._root_path is not None
        return self._root_path

    def clone_floor(self) -> tuple[int, bool]:
        """What a search on this system's device can afford to train (Architecture.clone_floor)."""
        return self.arch.clone_floor(self.device.type)

    # ---- accounting ----------------------------------------------------------------------------
    def _set_tasks(self, tasks: dict[str, TaskEntry]) -> None:
        """Swap in a new task map and its component -> users index (built once per commit or
        delete, so that users() and shared_with() cost O(1) and O(users), not a scan of every path)."""
        users: dict[str, set[str]] = {}
        for name, e in tasks.items():
            for c in e.path.components:
                users.setdefault(c.id, set()).add(name)
        self._users = {cid: frozenset(names) for cid, names in users.items()}
        self.tasks = tasks

    def users(self, component: Component, exclude: str = "") -> int:
        """Committed tasks whose path references this component (the root's lock is not a user)."""
        names = self._users.get(component.id, frozenset())
        return len(names) - (exclude in names)

    def shared_with(self, component: Component, exclude: str = "") -> list[str]:
        """"root" (for root components) and the committed tasks using it, but `exclude`."""
        names = self._users.get(component.id, frozenset())
        return (["root"] if component.owner == "root" else []) + sorted(n for n in names if n != exclude)

    def num_shared_with(self, component: Component, exclude: str = "") -> int:
        return (component.owner == "root") + self.users(component, exclude)

    def accounted_params(self, path: TaskPath, task: str) -> float:
        return accounted_params(path.components, lambda c: self.users(c, exclude=task) if c.frozen else 0)

    def score_config(self, scale_factor: float) -> ScoreConfig:
        return ScoreConfig(scale_factor=scale_factor, root_params=self.arch.root_param_count())

    def seed_paths(self, exclude: str = "") -> list[TaskPath]:
        """Published paths of other tasks plus the root, newest first (muNet's seed order)."""
        entries = sorted(
            (e for n, e in self.tasks.items() if n != exclude),
            key=lambda e: e.record.created_at,
            reverse=True,
        )
        return [e.path for e in entries] + [self.root_path]

    # ---- commit / delete -----------------------------------------------------------------------
    def commit(
        self,
        task: str,
        class_names: list[str],
        path: TaskPath,
        metrics: dict[str, Any],
        dataset_id: str,
        golden_images: torch.Tensor,
    ) -> TaskRecord:
        """Freeze the path's drafts, write one shard + one LMDB transaction, then publish in memory."""
        with self._lock:
            if task in self.tasks or task in self.damaged:
                raise AlreadyExists(f"task {task!r} already exists; choose another name or delete it first")
            return self._commit(task, class_names, path, metrics, dataset_id, golden_images, new_version=False)

    def commit_version(self, task: str, path: TaskPath, metrics: dict[str, Any]) -> TaskRecord:
        """Publish a new version of a committed task (ImproveTask) and serve it; the task's earlier
        versions stay stored, and nothing of any other task changes."""
        with self._lock:
            current = self.entry(task).record
            golden = self.store.load_task_tensors(current)["probe/images"]
            return self._commit(
                task, current.class_names, path, metrics, current.dataset_id, golden, new_version=True
            )

    def _commit(
        self,
        task: str,
        class_names: list[str],
        path: TaskPath,
        metrics: dict[str, Any],
        dataset_id: str,
        golden_images: torch.Tensor,
        new_version: bool,
    ) -> TaskRecord:
        t0 = time.monotonic()
        with self._lock:
            comps, new = [], []
            for c in path.components:
                if not c.frozen or c.id not in self.pool:  # drafts, and derived frozen ones (a resampled
                    c.freeze(owner=task)  # position embedding) that no committed task holds yet
                    existing = self.pool.get(c.id)
                    if existing is not None:
                        c = existing  # identical content already in the system: share it
                    elif all(n.id != c.id for n in new):
                        new.append(c)
                comps.append(c)
            path.components = comps
            path.parent = None
            model = path.build(self.arch).eval()
            inputs = golden_images[:GOLDEN_IMAGES].contiguous()
            with self.residency.use(comps):  # shared layers of other tasks may be on disk
                golden = self.golden_digest(model, path.hparams, inputs)
            now = time.time()
            metrics = {
                **metrics,
                "params_added": sum(c.num_params for c in new),
                "params_total": path.num_params(),
                "new_components": [c.id for c in new],
            }
            record = TaskRecord(
                name=task,
                class_names=list(class_names),
                path=[[c.spec.name, c.id] for c in comps],
                hparams=path.hparams,
                metrics=metrics,
                shards=[],
                golden_digest=golden,
                probe={"num_examples": int(inputs.shape[0])},
                dataset_id=dataset_id,
                created_at=now,
            )
            recs = [(_component_record(c, shard="", now=now), tensors_of(c.module)) for c in new]
            write = self.store.commit_version if new_version else self.store.commit_task
            record = write(record, recs, extra_tensors={"probe/images": inputs})
            for c in new:
                self.pool[c.id] = c
                self.residency.add(c)
            self._set_tasks({**self.tasks, task: TaskEntry(record, path, self.arch)})
            self.commit_seconds = time.monotonic() - t0
            return record

    # ---- versions ------------------------------------------------------------------------------
    def versions(self, task: str) -> list[TaskRecord]:
        """A task's published versions, oldest first."""
        self.entry(task)
        return self.store.versions(task)

    def set_version(self, task: str, version: int) -> TaskRecord:
        """Serve a stored version of the task from now on (a rollback, or forward again). Only this
        task's outputs change; its earlier outputs are those of that version's golden digest."""
        with self._lock:
            self.entry(task)
            record = self.store.set_current_version(task, version)
            e = self._version_entry(record)
            self._set_tasks({**self.tasks, task: e})
            return record

    def delete_version(self, task: str, version: int) -> list[str]:
        """Delete a version the task does not serve; frees the components nothing else uses."""
        with self._lock:
            self.entry(task)
            freed = self.store.delete_version(task, version)
            self._pinned = {k: e for k, e in self._pinned.items() if k != (task, version)}
            for cid in freed:
                self.pool.pop(cid, None)
                self.residency.forget(cid)
            return freed

    def _version_entry(self, record: TaskRecord) -> TaskEntry:
        key = (record.name, record.version)
        e = self._pinned.get(key)
        if e is None:
            comps = [self.pool[cid] for _, cid in record.path]
            path = TaskPath(task=record.name, hparams=record.hparams, components=comps)
            e = TaskEntry(record, path, self.arch)
            self._pinned = {**self._pinned, key: e}
        return e

    def delete_task(self, task: str) -> list[str]:
        with self._lock:
            if task not in self.tasks and task not in self.damaged:
                raise NotFound(f"task {task!r} does not exist")
            freed = self.store.delete_task(task)
            self._set_tasks({n: e for n, e in self.tasks.items() if n != task})
            self._pinned = {k: e for k, e in self._pinned.items() if k[0] != task}
            self.damaged = {n: d for n, d in self.damaged.items() if n != task}
            for cid in freed:
                self.pool.pop(cid, None)
                self.residency.forget(cid)
            return freed

    # ---- predictions ---------------------------------------------------------------------------
    def entry(self, task: str) -> TaskEntry:
        """A task's served version, or a pinned one: "name@version"."""
        task, version = parse_task_ref(task)
        e = self._current_entry(task)
        if version is None or version == e.record.version:
            return e
        for rec in self.store.versions(task):
            if rec.version == version:
                return self._version_entry(rec)
        known = ", ".join(str(r.version) for r in self.store.versions(task))
        raise NotFound(f"task {task!r} has no version {version} (it has {known})")

    def _current_entry(self, task: str) -> TaskEntry:
        e = self.tasks.get(task)
        if e is None and task in self.damaged:
            raise DataLoss(
                f"task {task!r} cannot be served: {self.damaged[task].reason}. Restore a snapshot "
                "(munet restore), or delete the task and add it again"
            )
        if e is None:
            known = ", ".join(sorted(self.tasks)[:10]) or "none yet"
            raise NotFound(f"task {task!r} does not exist (known tasks: {known})")
        return e

    @torch.no_grad()
    def logits(self, task: str, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, S, S) uint8 at storage size -> (B, classes) float32 logits on the CPU."""
        e = self.entry(task)
        x = self._serving_input(preprocess(images, int(e.path.hparams["ds_image_size"])))
        with self.residency.use(e.path.components):
            return e.model(x).float().cpu()

    def _serving_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def logits_many(self, tasks: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The same images through several tasks' paths: the components they share run once.

        Each task's logits are exactly what `logits(task, images)` returns."""
        entries = {t: self.entry(t) for t in tasks}
        resized: dict[int, torch.Tensor] = {}  # one preprocessed batch per image size
        inputs = {}
        for t, e in entries.items():
            size = int(e.path.hparams["ds_image_size"])
            if size not in resized:
                resized[size] = self._serving_input(preprocess(images, size))
            inputs[t] = resized[size]
        with self.residency.use(c for e in entries.values() for c in e.path.components):
            chains = {t: self.arch.steps(list(e.model.parts)) for t, e in entries.items()}
            return {t: y.float().cpu() for t, y in forward_shared(chains, inputs).items()}

    @torch.no_grad()
    def golden_digest(self, model: PathModel, hp: dict[str, Any], images: torch.Tensor) -> str:
        x = preprocess(images, int(hp["ds_image_size"])).to(self.device)
        with _one_thread():
            out = model(x).float().cpu().contiguous()
        return hashlib.sha256(out.numpy().tobytes()).hexdigest()

    def golden_images(self, task: str) -> torch.Tensor:
        return self.store.load_task_tensors(self.entry(task).record)["probe/images"]

    def verify_task(self, task: str) -> bool:
        """Recompute the task's outputs on its golden images: bit-identical or not."""
        return self.digest_now(task)[0] == self.entry(task).record.golden_digest

    def digest_now(self, task: str) -> tuple[str, int]:
        """(the golden digest of the task's outputs computed now, how many golden images it covers)."""
        e = self.entry(task)
        images = self.golden_images(task)
        with self.residency.use(e.path.components):
            return self.golden_digest(e.model, e.path.hparams, images), len(images)

    def _stored_tensors(self, cid: str) -> dict[str, torch.Tensor]:
        """A committed component's tensors from its shard (to bring it back into memory)."""
        rec = self.store.meta.get_component(cid)
        if rec is None:
            raise DataLoss(f"component {cid} has no record in the store")
        return self.store.load_component_tensors(rec)


def _component_record(c: Component, shard: str, now: float) -> ComponentRecord:
    return ComponentRecord(
        id=c.id,
        kind=c.spec.kind,
        spec=c.spec.to_dict(),
        num_params=c.num_params,
        shard=shard,
        key_prefix=f"{c.id}/",
        owner=c.owner,
        created_at=now,
        origin=c.origin,
    )


def parse_task_ref(ref: str) -> tuple[str, int | None]:
    """"name" -> (name, None): the served version; "name@3" -> (name, 3). Task names cannot hold "@"."""
    name, sep, version = ref.partition("@")
    if not sep:
        return ref, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidArgument(f"{ref!r}: a version is a number from 1 (e.g. {name}@2)")
    return name, int(version)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FailedPrecondition("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The calling thread's OpenMP team at one thread: a CPU convolution's bits depend on the team's
    size, which differs between the threads that commit and verify (a search's, a gRPC worker's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
