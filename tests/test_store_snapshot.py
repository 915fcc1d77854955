"""Snapshots, archives and restores, including hostile input and crashes (real kill -9)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from munet_server.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    MunetError,
    ResourceExhausted,
)
from munet_server.store import snapshot
from munet_server.store.store import Store
from tests.test_store_commit import component, populate, task, weights

REPO = Path(__file__).resolve().parents[1]


def dump(store: Store) -> tuple[Any, ...]:
    """Every record, every example, every tensor: equal dumps mean equal stores."""
    with store.meta.read() as v:
        comps = sorted(v.list_components(), key=lambda c: c.id)
        tasks, datasets, jobs = v.list_tasks(), v.list_datasets(), v.list_operations()
        examples = {d.id: list(v.iter_examples(d.id)) for d in datasets}
        system = v.get_system()
    tensors = {c.id: {k: t.tolist() for k, t in store.load_component_tensors(c).items()} for c in comps}
    task_tensors = {t.name: {k: x.tolist() for k, x in store.load_task_tensors(t).items()} for t in tasks}
    return system, comps, tasks, datasets, jobs, examples, tensors, task_tensors


@pytest.fixture
def source(tmp_path: Path) -> Store:
    store = Store(tmp_path / "source")
    populate(store)
    return store


@pytest.fixture
def target(tmp_path: Path) -> Store:
    """A live store with its own, different content: a refused restore must leave it exactly so."""
    store = Store(tmp_path / "target")
    store.commit_task(task("other", [("head", "head-o")]), [(component("head-o", "other"), weights(7))])
    return store


def assert_untouched(store: Store, before: tuple[Any, ...]) -> None:
    gen = store.generation_dir
    assert (store.root / "CURRENT").read_text().strip() == gen.name
    assert dump(store) == before
    assert sorted(p.name for p in store.root.iterdir()) == sorted(["CURRENT", "LOCK", gen.name])


def test_snapshot_restore_round_trip(source: Store, target: Store, tmp_path: Path) -> None:
    manifest = snapshot.snapshot_to_dir(source, tmp_path / "snap")
    assert manifest["format"] == "munet-snapshot" and manifest["tasks"] == ["a", "b"]
    assert manifest["components"] == 3 and len(manifest["files"]) == 1 + 4  # lmdb + root, a, b, job
    on_disk = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert on_disk == manifest
    old_gen = target.generation_dir
    assert snapshot.restore_dir(target, tmp_path / "snap")["tasks"] == ["a", "b"]
    assert dump(target) == dump(source)
    assert not old_gen.exists() and target.generation_dir.exists()
    target.close()
    with Store(target.root) as reopened:  # survives a restart
        assert dump(reopened) == dump(source)
    assert not any(p.name.startswith(".snap") for p in tmp_path.iterdir())


def test_snapshot_refuses_a_non_empty_destination(source: Store, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(AlreadyExists):
        snapshot.snapshot_to_dir(source, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert snapshot.snapshot_to_dir(source, tmp_path / "empty")["tasks"] == ["a", "b"]


def _shard(snap: Path) -> Path:
    return sorted((snap / "shards").iterdir())[0]


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write a new file over the name: snapshot shards are hard links to the live ones."""
    tmp = path.with_name("tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _flip(snap: Path) -> None:
    data = bytearray(_shard(snap).read_bytes())
    data[-1] ^= 0xFF
    _replace_bytes(_shard(snap), bytes(data))


def _truncate(snap: Path) -> None:
    lmdb_file = snap / "meta.lmdb" / "data.mdb"
    _replace_bytes(lmdb_file, lmdb_file.read_bytes()[:4096])


def _forge(snap: Path) -> None:
    """Change a shard and fix up the manifest: the digest in its name still gives it away."""
    shard = _shard(snap)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    _replace_bytes(shard, bytes(data))
    m = json.loads((snap / "manifest.json").read_text())
    m["files"][f"shards/{shard.name}"]["sha256"] = hashlib.sha256(data).hexdigest()
    (snap / "manifest.json").write_text(json.dumps(m))


def _relist(snap: Path, drop: str = "", add: str = "") -> None:
    """Keep the manifest consistent with the files, so that only deeper checks can catch the damage."""
    m = json.loads((snap / "manifest.json").read_text())
    m["files"].pop(drop, None)
    for rel in [add] if add else list(m["files"]):
        data = (snap / rel).read_bytes()
        m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (snap / "manifest.json").write_text(json.dumps(m))


def _drop_referenced_shard(snap: Path) -> None:
    shard = _shard(snap)
    shard.unlink()
    _relist(snap, drop=f"shards/{shard.name}")


def _garbage_shard(snap: Path) -> None:
    data = b"\x10" + b"\0" * 7 + b"not json at all!"
    rel = f"shards/{hashlib.sha256(data).hexdigest()}.safetensors"
    (snap / rel).write_bytes(data)
    _relist(snap, add=rel)


def _truncate_consistently(snap: Path) -> None:
    _truncate(snap)
    _relist(snap)


def _manifest(snap: Path, **changes: Any) -> None:
    m = json.loads((snap / "manifest.json").read_text()) | changes
    (snap / "manifest.json").write_text(json.dumps(m))


TAMPERS = {
    "flipped_shard_byte": (_flip, DataLoss),
    "truncated_lmdb": (_truncate, DataLoss),
    "forged_manifest": (_forge, DataLoss),
    "referenced_shard_dropped": (_drop_referenced_shard, DataLoss),
    "garbage_shard_named_by_its_digest": (_garbage_shard, DataLoss),
    "truncated_lmdb_relisted": (_truncate_consistently, DataLoss),
    "missing_file": (lambda s: _shard(s).unlink(), DataLoss),
    "extra_unlisted_shard": (
        lambda s: (s / "shards" / f"{'e' * 64}.safetensors").write_bytes(b"x"),
        InvalidArgument,
    ),
    "extra_file": (lambda s: (s / "notes.txt").write_text("hi"), InvalidArgument),
    "symlinked_shard": (lambda s: _symlink_shard(s), InvalidArgument),
    "newer_schema": (lambda s: _manifest(s, schema_version=2), FailedPrecondition),
    "not_a_snapshot": (lambda s: _manifest(s, format="zip"), InvalidArgument),
}


def _symlink_shard(snap: Path) -> None:
    shard = _shard(snap)
    real = snap.parent / "elsewhere.safetensors"
    shutil.copyfile(shard, real)
    shard.unlink()
    shard.symlink_to(real)


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_restore_refuses_damage_and_leaves_the_store_unchanged(
    source: Store, target: Store, tmp_path: Path, name: str
) -> None:
    tamper, error = TAMPERS[name]
    snap = tmp_path / "snap"
    snapshot.snapshot_to_dir(source, snap)
    tamper(snap)
    before = dump(target)
    with pytest.raises(error) as e:
        snapshot.restore_dir(target, snap)
    assert e.value.message
    assert_untouched(target, before)
    source.gc()
    assert dump(source)  # the source (whose shards the snapshot hard-links) is intact


def test_archive_round_trip(source: Store, target: Store, tmp_path: Path) -> None:
    manifest = snapshot.snapshot_to_archive(source, tmp_path / "snap.tar")
    with tarfile.open(tmp_path / "snap.tar") as tf:  # a standard tar any tool can read
        names = tf.getnames()
    assert names == ["manifest.json", *manifest["files"]]
    chunks = list(snapshot.iter_archive(source, chunk_size=4096))
    assert all(len(c) == 4096 for c in chunks[:-1])
    snapshot.restore_from_archive(target, iter(chunks), max_bytes=1 << 30)
    assert dump(target) == dump(source)
    assert not [p for p in source.root.iterdir() if p.name.startswith("staging-")]


def _snapshot_temps() -> list[Path]:
    import tempfile

    return list(Path(tempfile.gettempdir()).glob(f"munet-snapshot-{os.getpid()}-*"))


def test_abandoned_archive_stream_cleans_up(source: Store) -> None:
    before = _snapshot_temps()
    stream = snapshot.iter_archive(source, chunk_size=512)
    next(stream)
    # Nothing is staged on the store's disk (a nearly full store can still be streamed off); only
    # the metadata copy sits in TMPDIR.
    assert sorted(p.name for p in source.root.iterdir()) == ["CURRENT", "LOCK", source.generation_dir.name]
    assert len(_snapshot_temps()) == len(before) + 1
    stream.close()  # what a disconnecting client does
    assert _snapshot_temps() == before


def test_a_task_deleted_during_a_stream_keeps_its_shards_until_the_stream_ends(
    source: Store, target: Store
) -> None:
    expected = dump(source)
    victim = source.meta.get_task("b")  # its block and shard are its own (a's head is shared)
    assert victim is not None
    stream = snapshot.iter_archive(source, chunk_size=512)
    chunks = [next(stream)]
    source.delete_task(victim.name)
    assert all(source.shards.path(d).exists() for d in victim.shards)  # pinned by the stream
    with source.meta.read() as v:
        assert source.shards.digests() - source.referenced_shards(v)  # some are unreferenced now...
    chunks += list(stream)
    with source.meta.read() as v:
        assert source.shards.digests() == source.referenced_shards(v)  # ...and go when it ends
    snapshot.restore_from_archive(target, iter(chunks), max_bytes=1 << 30)
    assert dump(target) == expected  # the archive is the store as it was when the stream began


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _valid_members(store: Store) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    data = b"".join(snapshot.iter_archive(store))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


HOSTILE = {
    "dotdot": lambda: (_info("../evil", size=4), b"evil"),
    "nested_dotdot": lambda: (_info("shards/../../evil", size=4), b"evil"),
    "absolute": lambda: (_info("/tmp/munet-evil", size=4), b"evil"),
    "symlink": lambda: (_info(f"shards/{'a' * 64}.safetensors", tarfile.SYMTYPE, link="/etc/passwd"), None),
    "hardlink": lambda: (_info("meta.lmdb/lock.mdb", tarfile.LNKTYPE, link="/etc/passwd"), None),
    "device": lambda: (_info("meta.lmdb/lock.mdb", tarfile.CHRTYPE), None),
    "unknown_name": lambda: (_info("run.sh", size=4), b"evil"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_restore_archive_refuses_hostile_members(
    source: Store, target: Store, tmp_path: Path, name: str
) -> None:
    hostile = HOSTILE[name]()
    archive = _tar([hostile, *_valid_members(source)])
    before = dump(target)
    with pytest.raises(InvalidArgument):
        snapshot.restore_from_archive(target, [archive[i : i + 1000] for i in range(0, len(archive), 1000)], 1 << 30)
    assert_untouched(target, before)
    assert not (tmp_path / "evil").exists() and not (target.root / "evil").exists()
    assert not Path("/tmp/munet-evil").exists()


def test_restore_archive_limits_and_garbage(source: Store, target: Store) -> None:
    archive = b"".join(snapshot.iter_archive(source))
    before = dump(target)
    cases: list[tuple[list[bytes], int, type[MunetError]]] = [
        ([archive], len(archive) - 1, ResourceExhausted),
        ([archive[: len(archive) // 2]], 1 << 30, MunetError),  # truncated stream
        ([b"\x1f\x8b" + archive[:600]], 1 << 30, InvalidArgument),  # not a plain tar
        ([_tar(_valid_members(source) * 2)], 1 << 30, InvalidArgument),  # duplicate members
    ]
    for chunks, limit, error in cases:
        with pytest.raises(error):
            snapshot.restore_from_archive(target, chunks, limit)
        assert_untouched(target, before)


def test_interrupted_work_is_cleaned_at_open(source: Store, tmp_path: Path) -> None:
    """What a kill -9 can leave behind: staging dirs, a temp CURRENT, an old generation, temp shards."""
    before = dump(source)
    root, gen = source.root, source.generation_dir
    source.close()
    (root / "staging-0123456789abcdef" / "shards").mkdir(parents=True)
    (root / "staging-0123456789abcdef.tar").write_bytes(b"partial upload")
    (root / "CURRENT.tmp-abc").write_text("gen-ffffffffffffffff\n")
    shutil.copytree(gen, root / "gen-ffffffffffffffff")  # a complete generation CURRENT never named
    (gen / "shards" / ".tmp-123").write_bytes(b"half a shard")
    with Store(root, gc_on_open=False) as store:
        counts = store.gc()
        assert counts["staging_dirs"] == 2 and counts["old_generations"] == 1 and counts["temp_files"] == 2
        assert store.generation_dir == gen and dump(store) == before
        assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "LOCK", gen.name]


def test_damaged_or_lost_current_is_refused(source: Store) -> None:
    root = source.root
    source.close()
    current = (root / "CURRENT").read_text()
    (root / "CURRENT").write_text("../../etc\n")
    with pytest.raises(DataLoss):
        Store(root)
    (root / "CURRENT").unlink()
    with pytest.raises(DataLoss):  # not silently started empty over existing data
        Store(root)
    (root / "CURRENT").write_text(current)
    Store(root).close()


_CHILD = """
import os, signal, sys, torch
from pathlib import Path
import munet_server.store.store as m
from munet_server.store import snapshot
from tests.test_store_commit import component, task, weights
mode, root = sys.argv[1], Path(sys.argv[2])
die = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
store = m.Store(root)
if mode == "commit":
    m._after_shard_written = die
    store.commit_task(task("c", [("head", "head-c")]), [(component("head-c", "c"), weights(3))])
elif mode == "restore":
    m._before_current_switch = die
    snapshot.restore_dir(store, Path(sys.argv[3]))
elif mode == "hold":
    print("locked", flush=True)
    sys.stdin.read()
"""


def _child(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args], cwd=REPO, text=True, stdout=subprocess.PIPE, **kw
    )


@pytest.mark.parametrize("mode", ["commit", "restore"])
def test_kill_9_mid_operation_leaves_a_complete_generation(source: Store, tmp_path: Path, mode: str) -> None:
    snap = tmp_path / "snap"
    other = Store(tmp_path / "other")
    other.commit_task(task("x", [("head", "head-x")]), [(component("head-x", "x"), weights(5))])
    snapshot.snapshot_to_dir(other, snap)
    before, root = dump(source), source.root
    source.close()
    proc = _child(mode, str(root), str(snap))
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    gens = [p for p in root.iterdir() if p.name.startswith("gen-")]
    if mode == "commit":  # debris: a durable shard that nothing references
        assert sum(len(list((g / "shards").iterdir())) for g in gens) == 5
    else:  # debris: a complete, verified generation that CURRENT does not name
        assert len(gens) == 2
    with Store(root) as store:  # gc on open
        assert dump(store) == before
        assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "LOCK", store.generation_dir.name]
        assert len(store.shards.digests()) == 4 and store.meta.get_task("c") is None


def test_a_second_process_cannot_open_the_store(source: Store) -> None:
    root = source.root
    source.close()
    holder = _child("hold", str(root), stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FailedPrecondition):
            Store(root)
    finally:
        holder.communicate("", timeout=30)
    Store(root).close()


def test_a_sparse_metadata_file_is_compacted_at_open(source: Store, tmp_path: Path) -> None:
    """LMDB never shrinks its file; a store whose uploads were deleted gives the space back at the
    next start, with every record and tensor as before."""
    from munet_server.store.records import DatasetRecord

    with source.meta.write() as w:
        w.put_dataset(DatasetRecord("ds-big", "big", ["x", "y"], 400, [200, 200], "0" * 64, 0.0, True))
        for i in range(400):
            w.put_example("ds-big", i, i % 2, os.urandom(20_000))
    with source.meta.write() as w:
        w.delete_dataset("ds-big")
    expected = dump(source)
    data = source.generation_dir / "meta.lmdb" / "data.mdb"
    big = data.stat().st_size
    root = source.root
    source.close()
    reopened = Store(root, compact_min_bytes=1 << 20)
    try:
        small = (reopened.generation_dir / "meta.lmdb" / "data.mdb").stat().st_size
        assert big > 4 << 20 and small < big / 4, (big, small)
        assert dump(reopened) == expected
        assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "LOCK", reopened.generation_dir.name]
    finally:
        reopened.close()
