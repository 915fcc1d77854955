"""LMDB metadata: one environment, one named DB per record type, JSON values.

Every `with meta.write() as w:` block is one LMDB write transaction: all of it commits or none
(an exception aborts it; a kill -9 before commit leaves the previous state). Readers never block
writers and see a consistent snapshot for the life of their transaction.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from munet_server.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted
from munet_server.store.records import (
    OPERATION_STATES,
    ComponentRecord,
    DatasetRecord,
    OperationRecord,
    SystemRecord,
    TaskRecord,
    _Record,
)

# "tasks" holds each task's current version; "versions" every published version ("<task>/<version>").
DB_NAMES = ("system", "components", "tasks", "datasets", "examples", "jobs", "versions")
_SYSTEM_KEY = b"system"
_MAX_KEY = 480  # LMDB's key limit is 511 bytes; examples add "/<9 digits>"
_LABEL = struct.Struct("<I")
_BATCH = 1024  # examples read per transaction: long scans must not pin old pages forever
R = TypeVar("R", bound=_Record)


def _key(value: object, what: str, allow_slash: bool = True) -> bytes:
    if not isinstance(value, str) or not value or "\x00" in value or (not allow_slash and "/" in value):
        raise InvalidArgument(
            f"{what} {value!r} must be a non-empty string without NUL{'' if allow_slash else ' or /'}"
        )
    raw = value.encode()
    if len(raw) > _MAX_KEY:
        raise InvalidArgument(f"{what} is {len(raw)} bytes long; the limit is {_MAX_KEY}")
    return raw


def _version_key(name: str, version: int) -> bytes:
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 10**9:
        raise InvalidArgument(f"task version {version!r} must be an int in [1, 1e9)")
    return _key(name, "task name", allow_slash=False) + f"/{version:09d}".encode()


def _example_key(dataset_id: str, index: int) -> bytes:
    if not isinstance(index, int) or not 0 <= index < 10**9:
        raise InvalidArgument(f"example index {index!r} must be an int in [0, 1e9)")
    return _key(dataset_id, "dataset id", allow_slash=False) + f"/{index:09d}".encode()


DATA_FILE = "data.mdb"
_META_MAGIC = 0xBEEFC0DE
# MDB_meta inside each of the two meta pages (64-bit builds): magic at 16, the page size (the free DB's
# md_pad) at 40, the last used page number at 136 and the transaction id at 144.
_META_FIELDS = ((16, "<I"), (40, "<I"), (136, "<Q"), (144, "<Q"))


def check_data_file(path: Path) -> None:
    """Refuse an LMDB data file that is empty, torn or shorter than its own meta page says.

    LMDB maps the file: reading a page past a truncated end kills the process with SIGBUS, and an
    empty file is silently re-initialised as an empty database. Both are detected here, before
    mapping, from the newest of the two meta pages at the start of the file.
    """
    fix = "restore the store from a snapshot (munet restore), or move the store aside and start afresh"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(2 * 65536)
    metas = []
    for page in range(2):
        psize = 4096 if page == 0 else metas[0][1] if metas else 4096
        off = page * psize
        if len(head) < off + 152:
            break
        magic, pagesize, last_pg, txnid = (struct.unpack_from(fmt, head, off + o)[0] for o, fmt in _META_FIELDS)
        if magic == _META_MAGIC and pagesize in (4096, 8192, 16384, 32768, 65536):
            metas.append((txnid, pagesize, last_pg))
    if size == 0 or not metas:
        raise DataLoss(f"the metadata database {path} is empty or not an LMDB file ({size} bytes); {fix}")
    _, pagesize, last_pg = max(metas)
    need = (last_pg + 1) * pagesize
    if size < need:
        raise DataLoss(
            f"the metadata database {path} is truncated: {size} bytes, but its last page ends at byte "
            f"{need}; {fix}"
        )


def _map_full(path: Path) -> ResourceExhausted:
    return ResourceExhausted(
        f"the metadata database at {path} is full (LMDB map size reached); delete tasks or old "
        "operations, or restart the server with a larger map size"
    )


class MetaView:
    """Getters over one LMDB transaction (read-only or write)."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs

    @property
    def txn(self) -> lmdb.Transaction:
        return self._txn

    def _get(self, db: str, key: bytes, cls: type[R]) -> R | None:
        raw = self._txn.get(key, db=self._dbs[db])
        return None if raw is None else cls.from_json(bytes(raw))

    def _list(self, db: str, cls: type[R]) -> list[R]:
        with self._txn.cursor(db=self._dbs[db]) as cur:
            return [cls.from_json(bytes(v)) for _, v in cur]

    def _plain(self, db: str, cls: type[R]) -> Iterator[dict[str, Any]]:
        """Every record as parsed JSON, not built and checked as a record: for a scan that needs
        a field or two of thousands of records (the start-up gc). A record that is not a JSON
        object is read the checked way, which raises DataLoss saying what is wrong with it."""
        with self._txn.cursor(db=self._dbs[db]) as cur:
            for _, v in cur:
                raw = bytes(v)
                try:
                    obj = json.loads(raw)
                except ValueError:
                    obj = None
                if not isinstance(obj, dict):
                    cls.from_json(raw)
                    continue
                yield obj

    def held_shards(self) -> set[str]:
        """Shards of components and of every task version, as stored (entries of the wrong type
        are left out; is_digest filters the rest)."""
        def strings(x: Any) -> list[str]:
            return [s for s in x if isinstance(s, str) and s] if isinstance(x, list) else []

        held = set(strings([c.get("shard") for c in self._plain("components", ComponentRecord)]))
        for db in ("tasks", "versions"):
            held.update(s for t in self._plain(db, TaskRecord) for s in strings(t.get("shards")))
        return held

    def get_system(self) -> SystemRecord | None:
        return self._get("system", _SYSTEM_KEY, SystemRecord)

    def get_task(self, name: str) -> TaskRecord | None:
        return self._get("tasks", _key(name, "task name"), TaskRecord)

    def list_tasks(self) -> list[TaskRecord]:
        return sorted(self._list("tasks", TaskRecord), key=lambda t: (t.created_at, t.name))

    def list_versions(self, name: str) -> list[TaskRecord]:
        """Every stored version of a task, oldest first (a task committed before versions existed
        has none: its current record is its version 1)."""
        prefix = _key(name, "task name", allow_slash=False) + b"/"
        out = []
        with self._txn.cursor(db=self._dbs["versions"]) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append(TaskRecord.from_json(bytes(value)))
        return out

    def list_all_versions(self) -> list[TaskRecord]:
        return self._list("versions", TaskRecord)

    def get_component(self, id: str) -> ComponentRecord | None:
        return self._get("components", _key(id, "component id"), ComponentRecord)

    def list_components(self) -> list[ComponentRecord]:
        return self._list("components", ComponentRecord)

    def get_dataset(self, id: str) -> DatasetRecord | None:
        return self._get("datasets", _key(id, "dataset id", allow_slash=False), DatasetRecord)

    def list_datasets(self) -> list[DatasetRecord]:
        return self._list("datasets", DatasetRecord)

    def get_operation(self, id: str) -> OperationRecord | None:
        return self._get("jobs", _key(id, "job id"), OperationRecord)

    def list_operations(self) -> list[OperationRecord]:
        return sorted(self._list("jobs", OperationRecord), key=lambda j: (j.created_at, j.id))

    def iter_examples(self, dataset_id: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """(label, encoded image) in index order, from index `start`, within this transaction."""
        for _, label, data in self._scan_examples(dataset_id, start, None):
            yield label, data

    def _scan_examples(
        self, dataset_id: str, start: int, limit: int | None
    ) -> Iterator[tuple[int, int, bytes]]:
        prefix = _key(dataset_id, "dataset id", allow_slash=False) + b"/"
        with self._txn.cursor(db=self._dbs["examples"]) as cur:
            if not cur.set_range(_example_key(dataset_id, start)):
                return
            for count, (key, value) in enumerate(cur):
                if not key.startswith(prefix) or (limit is not None and count >= limit):
                    return
                if len(value) < 4:
                    raise DataLoss(f"stored example {key!r} is truncated; restore a snapshot")
                yield int(key[len(prefix) :]), _LABEL.unpack_from(value)[0], value[4:]


class MetaWriter(MetaView):
    """Puts and deletes inside one write transaction (see `MetadataStore.write`)."""

    def _put(self, db: str, key: bytes, record: _Record) -> None:
        self._txn.put(key, record.to_json(), db=self._dbs[db])

    def put_system(self, rec: SystemRecord) -> None:
        self._put("system", _SYSTEM_KEY, rec)

    def put_task(self, rec: TaskRecord) -> None:
        self._put("tasks", _key(rec.name, "task name"), rec)

    def delete_task(self, name: str) -> bool:
        return self._txn.delete(_key(name, "task name"), db=self._dbs["tasks"])

    def put_version(self, rec: TaskRecord) -> None:
        self._put("versions", _version_key(rec.name, rec.version), rec)

    def delete_version(self, name: str, version: int) -> bool:
        return self._txn.delete(_version_key(name, version), db=self._dbs["versions"])

    def put_component(self, rec: ComponentRecord) -> None:
        self._put("components", _key(rec.id, "component id"), rec)

    def delete_component(self, id: str) -> bool:
        return self._txn.delete(_key(id, "component id"), db=self._dbs["components"])

    def put_dataset(self, rec: DatasetRecord) -> None:
        self._put("datasets", _key(rec.id, "dataset id", allow_slash=False), rec)

    def put_example(self, dataset_id: str, index: int, label: int, data: bytes) -> None:
        if not isinstance(label, int) or not 0 <= label < 2**32:
            raise InvalidArgument(f"example label {label!r} must be an int in [0, 2**32)")
        self._txn.put(
            _example_key(dataset_id, index), _LABEL.pack(label) + bytes(data), db=self._dbs["examples"]
        )

    def delete_dataset(self, id: str) -> bool:
        """Delete the record and all its examples; True if the record existed."""
        prefix = _key(id, "dataset id", allow_slash=False) + b"/"
        with self._txn.cursor(db=self._dbs["examples"]) as cur:
            if cur.set_range(prefix):
                while cur.key().startswith(prefix):
                    if not cur.delete():  # delete() moves to the next record
                        break
        return self._txn.delete(prefix[:-1], db=self._dbs["datasets"])

    def put_operation(self, rec: OperationRecord) -> None:
        if rec.state not in OPERATION_STATES:
            raise InvalidArgument(f"job state {rec.state!r} is not one of {', '.join(OPERATION_STATES)}")
        self._put("jobs", _key(rec.id, "job id"), rec)

    def delete_operation(self, id: str) -> bool:
        return self._txn.delete(_key(id, "job id"), db=self._dbs["jobs"])


class MetadataStore:
    def __init__(self, path: Path, map_size: int = 1 << 36) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / DATA_FILE).exists():
            check_data_file(self.path / DATA_FILE)
        try:
            self._env: lmdb.Environment | None = lmdb.open(
                str(self.path), subdir=True, map_size=map_size, max_dbs=len(DB_NAMES),
                lock=True, writemap=False, readahead=False,
            )  # fmt: skip
            self._dbs = {n: self._env.open_db(n.encode()) for n in DB_NAMES}
        except lmdb.MapFullError:
            raise _map_full(self.path) from None
        except lmdb.Error as e:
            raise DataLoss(
                f"cannot open the metadata database at {self.path} ({e}); restore a snapshot"
            ) from None

    def used_bytes(self) -> int:
        """Bytes of the pages the records occupy (the file also holds free pages: LMDB never
        returns them to the filesystem; a compacted copy drops them)."""
        env = self.env
        st = env.stat()
        pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        with env.begin() as txn:
            for db in self._dbs.values():
                s = txn.stat(db)
                pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        return pages * st["psize"]

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None:
            raise FailedPrecondition(f"the metadata database at {self.path} is closed")
        return self._env

    @contextmanager
    def read(self) -> Iterator[MetaView]:
        txn = self.env.begin(write=False)
        try:
            yield MetaView(txn, self._dbs)
        finally:
            txn.abort()

    @contextmanager
    def write(self) -> Iterator[MetaWriter]:
        txn = self.env.begin(write=True)
        try:
            yield MetaWriter(txn, self._dbs)
            txn.commit()
        except lmdb.MapFullError:
            txn.abort()
            raise _map_full(self.path) from None
        except BaseException:
            txn.abort()
            raise

    # Short one-transaction reads, for callers that need a single record.
    def get_system(self) -> SystemRecord | None:
        with self.read() as v:
            return v.get_system()

    def get_task(self, name: str) -> TaskRecord | None:
        with self.read() as v:
            return v.get_task(name)

    def list_tasks(self) -> list[TaskRecord]:
        with self.read() as v:
            return v.list_tasks()

    def get_component(self, id: str) -> ComponentRecord | None:
        with self.read() as v:
            return v.get_component(id)

    def list_components(self) -> list[ComponentRecord]:
        with self.read() as v:
            return v.list_components()

    def get_dataset(self, id: str) -> DatasetRecord | None:
        with self.read() as v:
            return v.get_dataset(id)

    def list_datasets(self) -> list[DatasetRecord]:
        with self.read() as v:
            return v.list_datasets()

    def get_operation(self, id: str) -> OperationRecord | None:
        with self.read() as v:
            return v.get_operation(id)

    def list_operations(self) -> list[OperationRecord]:
        with self.read() as v:
            return v.list_operations()

    def iter_examples(self, dataset_id: str) -> Iterator[tuple[int, bytes]]:
        """(label, image bytes) in insertion order, read in batches of short transactions."""
        start = 0
        while True:
            with self.read() as v:
                batch = list(v._scan_examples(dataset_id, start, _BATCH))
            for _, label, data in batch:
                yield label, data
            if len(batch) < _BATCH:
                return
            start = batch[-1][0] + 1

    def copy_to(self, dest_dir: Path, txn: lmdb.Transaction | None = None) -> None:
        """A consistent, compacted copy (dest_dir/data.mdb); pass `txn` to copy a given read view."""
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
        self.env.copy(str(dest_dir), compact=True, txn=txn)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
