"""Store.commit_task / delete_task / gc on a real store under tmp_path (no mocks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import munet_server.store.store as store_mod
from munet_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from munet_server.store.records import (
    ComponentRecord,
    DatasetRecord,
    OperationRecord,
    SystemRecord,
    TaskRecord,
)
from munet_server.store.store import Store

NOW = 1_700_000_000.0


def component(cid: str, owner: str, shard: str = "") -> ComponentRecord:
    return ComponentRecord(
        id=cid,
        kind="block",
        spec={"name": cid.split("-")[0]},
        num_params=6,
        shard=shard,
        key_prefix=f"{cid}/",
        owner=owner,
        created_at=NOW,
    )


def task(name: str, path: list[tuple[str, str]], created_at: float = NOW, dataset_id: str = "") -> TaskRecord:
    return TaskRecord(
        name=name,
        class_names=["a", "b"],
        path=[[n, c] for n, c in path],
        hparams={"lr": 0.1},
        metrics={"validation_accuracy": 0.5},
        shards=[],
        golden_digest="f" * 64,
        probe={"num_examples": 2},
        dataset_id=dataset_id,
        created_at=created_at,
    )


def weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(2, 3, generator=g), "b": torch.randn(3, generator=g)}


def job(jid: str, state: str, shards: list[str]) -> OperationRecord:
    return OperationRecord(
        id=jid,
        kind="add_task",
        task_name="t",
        state=state,
        spec={},
        progress={},
        error={},
        checkpoint={"shards": shards},
        created_at=NOW,
        updated_at=NOW,
    )


def populate(store: Store) -> None:
    """A root (one shard), task a (new head), task b (reuses a's head, adds a block), data, a job."""
    root_digest = store.shards.put({"root-0/w": torch.ones(2, 2)}, {"owner": "root"})
    with store.meta.write() as w:
        w.put_system(SystemRecord(root={"model_name": "tiny"}, created_at=NOW))
        w.put_component(component("root-0", "root", root_digest))
        w.put_dataset(DatasetRecord("ds-a", "a", ["x", "y"], 3, [2, 1], "0" * 64, NOW, True))
        for i, label in enumerate([0, 1, 0]):
            w.put_example("ds-a", i, label, bytes([i]) * 10)
    store.commit_task(
        task("a", [("root", "root-0"), ("head", "head-a")], NOW + 1, "ds-a"),
        [(component("head-a", "a"), weights(1))],
        extra_tensors={"probe/images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)},
    )
    store.commit_task(
        task("b", [("root", "root-0"), ("blk", "blk-b"), ("head", "head-a")], NOW + 2),
        [(component("blk-b", "b"), weights(2))],
    )
    ckpt = store.shards.put({"state": torch.arange(4)}, {"job": "j1"})
    with store.meta.write() as w:
        w.put_operation(job("j1", "RUNNING", [ckpt]))


def test_commit_publishes_components_task_and_tensors(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    populate(store)
    a = store.meta.get_task("a")
    assert a is not None and len(a.shards) == 1
    head = store.meta.get_component("head-a")
    assert head is not None and head.shard == a.shards[0]
    loaded = store.load_component_tensors(head)
    assert set(loaded) == {"w", "b"} and torch.equal(loaded["w"], weights(1)["w"])
    assert torch.equal(store.load_task_tensors(a)["probe/images"], torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert set(store.load_task_tensors(a)) == {"probe/images"}
    assert [t.name for t in store.meta.list_tasks()] == ["a", "b"]


def test_failure_between_shard_and_publish_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "s")
    populate(store)
    before = store.shards.digests()

    def crash(digest: str) -> None:
        raise RuntimeError("killed between shard and publish")

    monkeypatch.setattr(store_mod, "_after_shard_written", crash)
    with pytest.raises(RuntimeError):
        store.commit_task(task("c", [("head", "head-c")]), [(component("head-c", "c"), weights(3))])
    assert store.meta.get_task("c") is None and store.meta.get_component("head-c") is None
    orphans = store.shards.digests() - before
    assert len(orphans) == 1
    counts = store.gc()
    assert counts["shards_removed"] == 1 and store.shards.digests() == before


def test_duplicate_name_and_unknown_reference(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    populate(store)
    digests = store.shards.digests()
    with pytest.raises(AlreadyExists) as e:
        store.commit_task(task("a", [("head", "head-z")]), [(component("head-z", "a"), weights(9))])
    assert "pick another name or delete" in e.value.message
    assert store.shards.digests() == digests  # refused before any shard was written
    with pytest.raises(FailedPrecondition):
        store.commit_task(task("z", [("head", "nowhere")]), [])
    with pytest.raises(AlreadyExists):  # an existing component must be referenced, not re-added
        store.commit_task(task("z", [("head", "head-a")]), [(component("head-a", "z"), weights(1))])
    with pytest.raises(InvalidArgument):  # overlapping key prefixes
        bad = [
            (component("x", "z"), weights(1)),
            (replace(component("xy", "z"), key_prefix="x/y"), weights(2)),
        ]
        store.commit_task(task("z", [("x", "x"), ("y", "xy")]), bad)
    assert store.meta.get_task("z") is None


def test_delete_task_frees_only_unshared_components(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    populate(store)
    assert store.delete_task("a") == []  # its head is used by b; the root is never freed
    assert store.meta.get_task("a") is None and store.meta.get_component("head-a") is not None
    assert store.meta.get_dataset("ds-a") is None and list(store.meta.iter_examples("ds-a")) == []
    assert sorted(store.delete_task("b")) == ["blk-b", "head-a"]
    assert [c.id for c in store.meta.list_components()] == ["root-0"]
    with pytest.raises(NotFound):
        store.delete_task("b")
    # Their shards went with the delete; left: the root shard and the running job's checkpoint.
    assert len(store.shards.digests()) == 2
    assert store.gc()["shards_removed"] == 0


def test_gc_keeps_live_job_checkpoints_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    populate(store)
    job_shard = store.meta.get_operation("j1").checkpoint["shards"][0]  # type: ignore[union-attr]
    assert store.gc()["shards_removed"] == 0 and store.shards.exists(job_shard)
    assert not store.release_shard(job_shard)
    with store.meta.write() as w:
        w.put_operation(job("j1", "FAILED", [job_shard]))
    assert store.gc(min_age_s=3600)["shards_removed"] == 0  # too fresh for a run-time gc
    assert store.gc()["shards_removed"] == 1 and not store.shards.exists(job_shard)
    assert store.meta.get_task("a") is not None and store.load_task_tensors(store.meta.get_task("a"))


def test_reopen_after_close_sees_everything(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    populate(store)
    store.close()
    with Store(tmp_path / "s") as again:
        assert [t.name for t in again.meta.list_tasks()] == ["a", "b"]
        head = again.meta.get_component("head-a")
        assert head is not None and torch.equal(again.load_component_tensors(head)["b"], weights(1)["b"])
