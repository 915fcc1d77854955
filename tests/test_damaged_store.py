"""A damaged store never costs data: the server refuses to start over damaged metadata (and deletes
nothing), and one task's missing or corrupt shard takes only that task out of service.

Each case damages a real store on disk, then starts the real `munet-server` process on it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from munet_client import MunetError
from munet_server.data.images import encode_png
from tests.helpers import ServerProcess, free_port, image_folder, server_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory, tiny_vit_weights):
    """A stopped store with tasks a and b, their shards, and a's predictions on held-out images."""
    tmp = tmp_path_factory.mktemp("damaged")
    store = tmp / "store"
    folder, test = image_folder(tmp, classes=3, per_class=12)
    other, _ = image_folder(tmp, classes=2, per_class=12, name="other")  # b's head differs from a's
    images = [encode_png(i) for i in test.images[:6]]
    s = ServerProcess(store, tiny_vit_weights)
    for name, data in (("a", folder), ("b", other)):
        op = s.client.add_task_from_folder(name, data, budget={"generations": 1})
        assert s.client.wait(op.name, timeout=300).state == "SUCCEEDED"
    golden = s.client.predict("a", images, top_k=3)
    s.stop()
    return store, tmp, images, golden


def _copy(two_tasks, tmp_path):
    """A private copy of the stored system (each test damages its own)."""
    import shutil

    store, _, images, golden = two_tasks
    dst = tmp_path / "store"
    shutil.copytree(store, dst)
    (gen,) = [p for p in dst.iterdir() if p.name.startswith("gen-")]
    return dst, gen, images, golden


def _shards(gen) -> set[str]:
    return {p.name for p in (gen / "shards").iterdir()}


def _start_refused(store, weights) -> str:
    """Start munet-server on `store`; it must exit by itself with an error message (no crash signal)."""
    proc = subprocess.run(
        server_command(store, free_port(), weights), capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # not -SIGBUS, not 0
    return proc.stderr


@pytest.mark.parametrize("damage", ["empty", "missing", "truncated"])
def test_damaged_metadata_refuses_to_start_and_deletes_nothing(two_tasks, tmp_path, tiny_vit_weights, damage):
    store, gen, _, _ = _copy(two_tasks, tmp_path)
    data = gen / "meta.lmdb" / "data.mdb"
    before = _shards(gen)
    if damage == "empty":
        os.truncate(data, 0)
    elif damage == "missing":
        data.unlink()
    else:
        os.truncate(data, 8192)  # two meta pages survive; the tree they point to does not
    err = _start_refused(store, tiny_vit_weights)
    assert "DATA_LOSS" in err and str(data) in err and "restore" in err, err[-1500:]
    assert _shards(gen) == before  # start-up gc never ran over the damaged store


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_one_damaged_shard_takes_out_only_its_task(two_tasks, tmp_path, tiny_vit_weights, damage):
    from munet_server.store.metadata import MetadataStore

    store, gen, images, golden = _copy(two_tasks, tmp_path)
    meta = MetadataStore(gen / "meta.lmdb")
    with meta.read() as v:
        shard = v.get_task("b").shards[0]
    meta.close()
    path = gen / "shards" / f"{shard}.safetensors"
    if damage == "deleted":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    before = _shards(gen)
    s = ServerProcess(store, tiny_vit_weights)
    try:
        assert s.client.predict("a", images, top_k=3) == golden  # the healthy task serves exactly as before
        with pytest.raises(MunetError) as e:
            s.client.predict("b", images)
        assert e.value.code == "DATA_LOSS" and "restore" in e.value.message
        assert s.client.health("a") == "SERVING" and s.client.health("b") == "NOT_SERVING"
        states = {t.name: t.state for t in s.client.list_tasks()}
        assert states["a"] == "READY" and states["b"].startswith("DAMAGED"), states
        assert _shards(gen) == before  # nothing was collected
        s.client.delete_task("b")  # the user's way out, besides a restore
        assert [t.name for t in s.client.list_tasks()] == ["a"]
    finally:
        s.stop()
