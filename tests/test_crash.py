"""kill -9 the real server process at the most dangerous moments; restart; nothing committed changes.

Each scenario: a server subprocess over one store, a committed task whose predictions are recorded,
a SIGKILL at a chosen point (from outside, or from a crash point armed with MUNET_CRASH_AT), a
restart, and checks: every committed task answers bit-identically, the interrupted operation is
resumed or reported failed (never half-applied), and no leftover files survive start-up gc.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from munet_client import MunetError
from munet_server.data.images import encode_png
from tests.helpers import ServerProcess, image_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def _template(tmp_path_factory, tiny_vit_weights):
    """Learned once: a stopped server's store with one committed task, and its recorded predictions."""
    tmp = tmp_path_factory.mktemp("crash-world")
    store = tmp / "store"
    folder, test = image_folder(tmp, classes=3, per_class=20)
    images = [encode_png(i) for i in test.images]
    s = ServerProcess(store, tiny_vit_weights)
    op = s.client.add_task_from_folder("a", folder, budget={"generations": 0, "seconds": 1.0})
    assert s.client.wait(op.name, timeout=300).state == "SUCCEEDED"
    golden = s.client.predict("a", images, top_k=3)
    assert s.client.describe_task("a").served_version == 1  # a probe search: the first probe serves
    s.stop()
    return store, folder, images, golden


@pytest.fixture
def world(_template, tmp_path, tiny_vit_weights):
    """Each scenario gets its own copy of the template's store (files copied while no server runs)."""
    store, folder, images, golden = _template
    shutil.copytree(store, tmp_path / "store")
    return tmp_path / "store", tiny_vit_weights, folder, images, golden


def _check_committed(s: ServerProcess, images, golden) -> None:
    assert s.client.predict("a", images, top_k=3) == golden


def _check_no_leftovers(store: Path) -> None:
    """Open the store (start-up gc runs) and check every file on disk is referenced."""
    from munet_server.store.store import Store

    with Store(store) as st:
        with st.meta.read() as v:
            refs = st.referenced_shards(v)
            incomplete = [d.id for d in v.list_datasets() if not d.complete]
            live_jobs = [j for j in v.list_operations() if not j.terminal]
        on_disk = st.shards.digests()
        gens = [p.name for p in store.iterdir() if p.name.startswith(("gen-", "staging-"))]
    assert on_disk == refs, (on_disk - refs, refs - on_disk)
    assert not incomplete, incomplete
    assert len(gens) == 1, gens  # only the live generation
    assert not live_jobs or all(j.checkpoint_shards() for j in live_jobs)
    assert not list(store.glob("**/.tmp-*")) and not list(store.glob("**/*.part"))


def test_kill_during_upload(world):
    store, weights, folder, images, golden = world
    s = ServerProcess(store, weights)
    from munet_client.images import ImageFolder

    tree = ImageFolder.scan(folder)

    def slow_examples():
        for i, ex in enumerate(tree.examples()):
            if i == 20:
                s.proc.send_signal(signal.SIGKILL)  # mid-stream, with some examples written
                s.proc.wait(30)
            yield ex

    with pytest.raises(MunetError):
        s.client.add_task("b", tree.class_names, slow_examples())
    s.close()
    s2 = ServerProcess(store, weights)
    _check_committed(s2, images, golden)
    assert [t.name for t in s2.client.list_tasks()] == ["a"]
    assert all(o.task != "b" for o in s2.client.operations())
    s2.stop()
    _check_no_leftovers(store)


def test_kill_during_evolution_resumes(world):
    store, weights, folder, images, golden = world
    s = ServerProcess(store, weights, crash_at="after_checkpoint")  # dies after generation 1 is saved
    op = s.client.add_task_from_folder("b", folder, budget={"generations": 3})
    s.wait_dead()
    s2 = ServerProcess(store, weights)
    _check_committed(s2, images, golden)
    final = s2.client.wait(op.name, timeout=300)
    assert final.state == "SUCCEEDED", final  # resumed from its checkpoint, then committed
    assert final.progress.generation == 3
    assert {t.name for t in s2.client.list_tasks()} == {"a", "b"}
    _check_committed(s2, images, golden)
    s2.stop()
    _check_no_leftovers(store)


def test_kill_during_improve_resumes(world):
    """ImproveTask checkpoints like AddTask: killed after a generation, it resumes and ends with the
    served version or a new one, and version 1 still answers exactly as it did."""
    store, weights, _, images, golden = world
    s = ServerProcess(store, weights, crash_at="after_checkpoint")
    op = s.client.improve_task("a", budget={"generations": 2})
    s.wait_dead()
    s2 = ServerProcess(store, weights)
    assert s2.client.predict("a@1", images, top_k=3) == golden
    final = s2.client.wait(op.name, timeout=300)
    assert final.state == "SUCCEEDED" and final.kind == "improve_task", final
    info = s2.client.describe_task("a")
    assert info.served_version == final.task_version and [v.version for v in info.versions][-1] == final.task_version
    if final.task_version == 1:
        _check_committed(s2, images, golden)
    assert s2.client.predict("a@1", images, top_k=3) == golden and s2.client.verify_task("a@1").identical
    again = s2.client.wait(s2.client.improve_task("a", budget={"generations": 0}).name, timeout=300)
    assert again.state == "SUCCEEDED"  # the task's images outlived both operations
    s2.stop()
    _check_no_leftovers(store)


def test_kill_between_shard_write_and_publish(world):
    store, weights, folder, images, golden = world
    s = ServerProcess(store, weights, crash_at="after_shard_written")
    op = s.client.add_task_from_folder("b", folder, budget={"generations": 0})
    s.wait_dead()
    s2 = ServerProcess(store, weights, crash_at="")
    _check_committed(s2, images, golden)
    # The task was never published; its operation is resumed and then commits cleanly, once.
    final = s2.client.wait(op.name, timeout=300)
    assert final.state in ("SUCCEEDED", "FAILED"), final
    names = [t.name for t in s2.client.list_tasks()]
    assert names == (["a", "b"] if final.state == "SUCCEEDED" else ["a"])
    s2.stop()
    _check_no_leftovers(store)


def test_kill_during_snapshot(world, tmp_path):
    store, weights, _folder, images, golden = world
    s = ServerProcess(store, weights, crash_at="during_snapshot")
    with pytest.raises(MunetError):
        s.client.snapshot(tmp_path / "snap.tar")
    s.wait_dead()
    assert not (tmp_path / "snap.tar").exists()  # no half archive under the final name
    import tempfile

    left = list(Path(tempfile.gettempdir()).glob(f"munet-snapshot-{s.proc.pid}-*"))
    assert left  # the dead stream's metadata copy in TMPDIR (nothing was staged in the store)...
    s2 = ServerProcess(store, weights)
    assert not any(p.exists() for p in left)  # ...is removed at the next start
    _check_committed(s2, images, golden)
    s2.stop()
    _check_no_leftovers(store)


def test_kill_during_restore(world, tmp_path):
    store, weights, folder, images, golden = world
    s = ServerProcess(store, weights)
    archive = tmp_path / "before-b.tar"
    s.client.snapshot(archive)  # a system with "a" only
    op = s.client.add_task_from_folder("b", folder, budget={"generations": 0})
    assert s.client.wait(op.name, timeout=300).state == "SUCCEEDED"
    s.stop()
    # (1) killed while the archive streams in; (2) killed with the new generation complete but not live.
    s = ServerProcess(store, weights)
    data = archive.read_bytes()

    def half_then_kill():
        from munet_proto.v1 import munet_pb2 as pb

        yield pb.SnapshotChunk(data=data[: len(data) // 2])
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(30)
        yield pb.SnapshotChunk(data=data[len(data) // 2 :])

    with pytest.raises(MunetError):
        s.client._call(s.client.stub.StreamRestore, half_then_kill())
    s.close()
    s = ServerProcess(store, weights, crash_at="before_current_switch")
    with pytest.raises(MunetError):
        s.client.restore(archive)
    s.wait_dead()
    s2 = ServerProcess(store, weights)
    assert {t.name for t in s2.client.list_tasks()} == {"a", "b"}  # the old generation is still live
    _check_committed(s2, images, golden)
    s2.stop()
    _check_no_leftovers(store)


def test_sigterm_with_predict_queued_and_a_search_running(world):
    """SIGTERM is a clean stop, not a crash: queued Predict calls get an answer or UNAVAILABLE (never
    INTERNAL), the search pauses, the process exits 0, and after a restart the search resumes."""
    import threading
    import time

    store, weights, folder, images, golden = world
    s = ServerProcess(store, weights)
    op = s.client.add_task_from_folder("b", folder, budget={"seconds": 600})
    while s.client.operation(op.name).state != "RUNNING":
        time.sleep(0.2)
    codes: list[str] = []
    many = images * (256 // len(images))

    def hammer() -> None:
        for _ in range(200):
            try:
                s.client.predict("a", many)
            except MunetError as e:
                if e.code == "RESOURCE_EXHAUSTED":  # the bounded Predict queue: back off, go on
                    time.sleep(0.05)
                    continue
                codes.append(e.code)
                return

    threads = [threading.Thread(target=hammer) for _ in range(24)]  # more callers than RPC workers
    for t in threads:
        t.start()
    time.sleep(2)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0
    for t in threads:
        t.join(60)
    s.close()
    assert codes and set(codes) <= {"UNAVAILABLE", "CANCELLED"}, codes
    s2 = ServerProcess(store, weights)
    _check_committed(s2, images, golden)
    assert s2.client.operation(op.name).state in ("QUEUED", "RUNNING")  # resumed, not lost
    s2.client.cancel(op.name)
    s2.stop()


def test_disk_full_is_resource_exhausted_and_loses_nothing(world):
    """A full disk during an upload or a commit: RESOURCE_EXHAUSTED naming the store's disk, not
    INTERNAL; every committed task serves as before; nothing half-written stays behind."""
    store, weights, folder, images, golden = world
    s = ServerProcess(store, weights, disk_full_at="upload_write")
    with pytest.raises(MunetError) as e:
        s.client.add_task_from_folder("b", folder)
    assert e.value.code == "RESOURCE_EXHAUSTED" and f"the disk of the store {store}" in e.value.message
    _check_committed(s, images, golden)
    s.stop()
    s = ServerProcess(store, weights, disk_full_at="shard_write")
    op = s.client.wait(s.client.add_task_from_folder("b", folder, budget={"generations": 0}).name, 300)
    assert op.state == "FAILED" and op.error_code == "RESOURCE_EXHAUSTED", op
    assert "nothing was committed" in op.error
    _check_committed(s, images, golden)
    assert [t.name for t in s.client.list_tasks()] == ["a"]
    s.stop()
    _check_no_leftovers(store)
