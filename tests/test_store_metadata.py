"""Records and the LMDB metadata store: JSON tolerance, atomic transactions, examples, limits."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from munet_server.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted
from munet_server.store.metadata import MetadataStore
from munet_server.store.records import ComponentRecord, DatasetRecord, SystemRecord, TaskRecord
from tests.test_store_commit import NOW, component, job, task

RECORDS = [
    SystemRecord(root={"model_name": "vit", "kwargs": {"depth": 2}}, created_at=NOW),
    component("blk-1", "root", "a" * 64),
    task("t", [("blk", "blk-1")], dataset_id="ds-1"),
    DatasetRecord("ds-1", "t", ["x", "y"], 3, [2, 1], "0" * 64, NOW, complete=False),
    job("j", "QUEUED", ["b" * 64]),
]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: type(r).__name__)
def test_record_json_round_trip(rec) -> None:
    data = rec.to_json()
    assert type(rec).from_json(data) == rec
    assert json.loads(data)["schema_version"] == 1
    assert rec.to_json() == data  # deterministic bytes


def test_unknown_keys_are_dropped_with_a_warning(caplog) -> None:
    obj = json.loads(RECORDS[2].to_json()) | {"added_by_v2": 1}
    with caplog.at_level(logging.WARNING):
        assert TaskRecord.from_json(json.dumps(obj).encode()) == RECORDS[2]
    assert "added_by_v2" in caplog.text


def test_newer_schema_and_damage_are_refused() -> None:
    obj = json.loads(RECORDS[1].to_json()) | {"schema_version": 2}
    with pytest.raises(FailedPrecondition) as e:
        ComponentRecord.from_json(json.dumps(obj).encode())
    assert "upgrade" in e.value.message
    for bad in (
        b"{not json",
        b"[]",
        b'{"id": "x"}',
        json.dumps(obj | {"schema_version": 1, "num_params": "6"}).encode(),
    ):
        with pytest.raises(DataLoss):
            ComponentRecord.from_json(bad)
    with pytest.raises(InvalidArgument):  # not JSON-serialisable
        dataclasses.replace(RECORDS[2], metrics={"x": object()}).to_json()


def test_put_get_list_delete(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m")
    sys_rec, comp, t, ds, j = RECORDS
    later = dataclasses.replace(t, name="later", created_at=NOW + 5)
    with meta.write() as w:
        w.put_system(sys_rec)
        w.put_component(comp)
        w.put_task(later)
        w.put_task(t)
        w.put_dataset(ds)
        w.put_operation(j)
        assert w.get_task("t") == t  # a writer reads its own writes
    assert meta.get_system() == sys_rec and meta.get_component("blk-1") == comp
    assert [x.name for x in meta.list_tasks()] == ["t", "later"]  # by created_at
    assert meta.get_dataset("ds-1") == ds and meta.list_datasets() == [ds]
    assert meta.get_operation("j") == j and meta.list_operations() == [j] and meta.list_components() == [comp]
    assert meta.get_task("missing") is None
    with meta.write() as w:
        assert w.delete_task("t") and w.delete_component("blk-1") and w.delete_operation("j")
        assert not w.delete_task("t")
    assert meta.get_task("t") is None and meta.list_components() == [] and meta.list_operations() == []
    meta.close()
    with pytest.raises(FailedPrecondition):
        meta.get_task("later")


def test_write_is_atomic_and_reads_are_consistent(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m")
    with pytest.raises(RuntimeError), meta.write() as w:
        w.put_task(RECORDS[2])
        w.put_component(RECORDS[1])
        raise RuntimeError("abort")
    assert meta.list_tasks() == [] and meta.list_components() == []
    with meta.read() as view:
        with meta.write() as w:
            w.put_task(RECORDS[2])
        assert view.get_task("t") is None  # the view predates the write
    assert meta.get_task("t") == RECORDS[2]


def test_examples_in_order_and_deleted_with_their_dataset(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m")
    n = 2500  # crosses several read batches
    with meta.write() as w:
        for ds_id in ("ds-1", "ds-10"):  # "ds-1" is a string prefix of "ds-10"
            w.put_dataset(dataclasses.replace(RECORDS[3], id=ds_id))
        for i in range(n):
            w.put_example("ds-1", i, i % 7, i.to_bytes(4, "big") + b"img")
        w.put_example("ds-10", 0, 2**32 - 1, b"other")
    got = list(meta.iter_examples("ds-1"))
    assert got == [(i % 7, i.to_bytes(4, "big") + b"img") for i in range(n)]
    with meta.read() as v:
        assert next(v.iter_examples("ds-1", start=2499)) == (2499 % 7, (2499).to_bytes(4, "big") + b"img")
    with meta.write() as w:
        assert w.delete_dataset("ds-1")
    assert list(meta.iter_examples("ds-1")) == [] and meta.get_dataset("ds-1") is None
    assert list(meta.iter_examples("ds-10")) == [(2**32 - 1, b"other")]


def test_bad_keys_are_invalid_argument(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m")
    with meta.write() as w:
        for bad in (
            lambda: w.put_example("ds/1", 0, 0, b""),
            lambda: w.put_example("ds", -1, 0, b""),
            lambda: w.put_example("ds", 0, -1, b""),
            lambda: w.put_task(dataclasses.replace(RECORDS[2], name="")),
            lambda: w.put_operation(dataclasses.replace(RECORDS[4], id="x" * 600)),
        ):
            with pytest.raises(InvalidArgument):
                bad()


def test_map_full_is_resource_exhausted(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m", map_size=1 << 20)
    with pytest.raises(ResourceExhausted) as e, meta.write() as w:
        for i in range(64):
            w.put_example("ds", i, 0, b"x" * 65536)
    assert "larger map size" in e.value.message
    assert list(meta.iter_examples("ds")) == []  # aborted as a whole
    with meta.write() as w:  # and the store still works
        w.put_task(RECORDS[2])
    assert meta.get_task("t") == RECORDS[2]


def test_copy_to_is_a_consistent_openable_copy(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m")
    with meta.write() as w:
        w.put_task(RECORDS[2])
        w.put_example("ds-1", 0, 1, b"png")
    meta.copy_to(tmp_path / "copy")
    copy = MetadataStore(tmp_path / "copy")
    assert copy.list_tasks() == [RECORDS[2]] and list(copy.iter_examples("ds-1")) == [(1, b"png")]


def test_threads_share_one_environment(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "m")
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                with meta.write() as w:
                    w.put_operation(dataclasses.replace(RECORDS[4], id=f"j{k}-{i}"))
                assert meta.get_operation(f"j{k}-{i}") is not None
                meta.list_operations()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(meta.list_operations()) == 200
