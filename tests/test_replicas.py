"""Read-only replicas (issue 14 §3): a primary and two replicas on loopback. A task added on the primary
is served, bit-identically, by both replicas after the primary's next snapshot; replicas refuse changes
(over gRPC and HTTP) and keep serving the old snapshot when a newer one is damaged."""

from __future__ import annotations

import time

import httpx
import pytest

from munet_client import MunetClient, MunetError
from munet_server.data.images import encode_png
from munet_server.replica import newest_snapshot
from tests.helpers import image_folder, make_app


def _until(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _names(client: MunetClient) -> list[str]:
    return [t.name for t in client.list_tasks()]


def test_replicas_follow_the_primarys_snapshots(tmp_path, tiny_vit):
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    primary = make_app(tmp_path / "primary", tiny_vit)
    replicas = [
        make_app(tmp_path / f"replica{i}", tiny_vit, read_only=True, follow=snaps, follow_interval=0.2, http_port=0)
        for i in range(2)
    ]
    p = MunetClient(f"127.0.0.1:{primary.port}", timeout=60)
    rs = [MunetClient(f"127.0.0.1:{r.port}", timeout=60) for r in replicas]
    try:
        assert all(_names(r) == [] for r in rs)  # nothing to follow yet: an empty system
        folder, test = image_folder(tmp_path, classes=3, per_class=10)
        pngs = [encode_png(i) for i in test.images[:8]]
        for n, name in enumerate(("digits", "more")):
            op = p.add_task_from_folder(name, folder, budget={"generations": 0}, seed=n)
            assert p.wait(op.name, timeout=300).state == "SUCCEEDED"
            p.snapshot(server_dir=str(snaps / f"snap-{n}"))
            for r in rs:
                _until(lambda r=r, n=n: len(_names(r)) == n + 1)
        want = {t: p.predict(t, pngs, top_k=3) for t in ("digits", "more")}
        for r in rs:
            assert _names(r) == ["digits", "more"]
            assert {t: r.predict(t, pngs, top_k=3) for t in want} == want  # bit-identical answers
            assert r.verify_task("digits").identical
            with pytest.raises(MunetError) as e:
                r.delete_task("digits")
            assert e.value.code == "FAILED_PRECONDITION" and "read-only replica" in e.value.message
            with pytest.raises(MunetError) as e:
                r.add_task_from_folder("x", folder)
            assert e.value.code == "FAILED_PRECONDITION"
        http = httpx.Client(base_url=f"http://127.0.0.1:{replicas[0].http_port}")
        resp = http.delete("/munet/v1/tasks/digits")
        assert resp.status_code == 412 and "read-only replica" in resp.json()["error"]
        assert http.get("/v2/models/digits/ready").json()["ready"]
        # A damaged newer snapshot is refused; the replicas keep serving the last good one.
        # Damaged before it appears (a hidden dir is unfinished), so no replica can take it first.
        p.snapshot(server_dir=str(snaps / ".snap-9"))
        victim = next((snaps / ".snap-9" / "shards").iterdir())
        good = victim.read_bytes()
        victim.write_bytes(b"\0" * len(good))
        (snaps / ".snap-9").rename(snaps / "snap-9")
        assert newest_snapshot(snaps)[0].name == "snap-9"
        _until(lambda: all(a.follower.refused for a in replicas))
        for c in rs:
            assert _names(c) == ["digits", "more"] and c.predict("digits", pngs, top_k=3) == want["digits"]
        # Repaired in place (a copy that had not finished): its files changed, so it is tried again.
        (snaps / "snap-9" / victim.relative_to(snaps / ".snap-9")).write_bytes(good)
        _until(lambda: all(a.follower.serving.name == "snap-9" for a in replicas))
        for c in rs:
            assert c.predict("digits", pngs, top_k=3) == want["digits"]
    finally:
        for c in (p, *rs):
            c.close()
        for a in (primary, *replicas):
            a.stop(0)
