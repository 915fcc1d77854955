"""A task's life after AddTask (issue 15): ImproveTask (muNet's next task iteration) publishes a new
version only when it beats the served one; versions stay stored, can be pinned, served again and
deleted; nothing done to one task changes another task's outputs (golden digests)."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from munet_server.errors import FailedPrecondition, NotFound
from munet_server.evolve.budget import Budget
from munet_server.learn import champion_of
from munet_server.learn import learn as learn_task
from munet_server.spec import AddTaskSpec
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import commit_poor_version, digits_dataset, learn

PROBE_ONLY = dict(generations=0, seconds=60.0)
def improve(system: MunetSystem, name: str, ds, seed: int = 0, **budget):
    """ImproveTask in-process: a search with the served version as its champion."""
    spec = AddTaskSpec(name=name, class_names=ds.class_names, budget=Budget(**{**PROBE_ONLY, **budget}), seed=seed)
    return learn_task(system, spec, ds, champion=champion_of(system, name))


@pytest.fixture()
def two_tasks(tmp_path, tiny_vit):
    system = MunetSystem.open(Store(tmp_path / "s"), tiny_vit, device="cpu")
    ds_a, ds_b = digits_dataset(classes=4, per_class=40), digits_dataset(classes=3, per_class=30)
    learn(system, "a", ds_a, **PROBE_ONLY)
    learn(system, "b", ds_b, **PROBE_ONLY)
    yield system, ds_a, ds_b
    system.store.close()


def test_versions_publish_pin_roll_back_and_delete(two_tasks, tmp_path, tiny_vit):
    system, ds_a, _ = two_tasks
    x = ds_a.images[:24]
    # AddTask's probes may publish more than version 1: how many of them run depends on the machine's pace.
    first = system.entry("a").record.version
    v1 = system.logits("a", x)
    b_digest, b_out = system.entry("b").record.golden_digest, system.logits("b", x)

    poor = commit_poor_version(system, "a", ds_a)
    assert poor == first + 1
    v2 = system.logits("a", x)
    assert not torch.equal(v1, v2) and system.entry("a").record.version == poor

    # ImproveTask on the weak served version: the search beats its recipe and publishes the next version.
    better = poor + 1
    improved = improve(system, "a", ds_a, seed=0)
    rec, decision = improved.record, next(d for d in improved.state.decisions if d.publish)
    assert rec is not None and rec.version == better and improved.served_version == better
    assert decision.publish and decision.challenger_accuracy > decision.champion_accuracy
    assert rec.metrics["improved_from"] == poor and rec.metrics["validation_accuracy"] == decision.challenger_accuracy
    assert system.entry("a").record.version == better and system.verify_task("a")

    # Other tasks never change; earlier versions answer exactly as they did, pinned by number.
    assert system.verify_task("b") and torch.equal(system.logits("b", x), b_out)
    assert system.entry("b").record.golden_digest == b_digest
    assert torch.equal(system.logits(f"a@{first}", x), v1) and torch.equal(system.logits(f"a@{poor}", x), v2)
    assert system.verify_task(f"a@{first}") and system.verify_task(f"a@{poor}")

    # Roll back: AddTask's version serves again, bit-identically.
    system.set_version("a", first)
    assert torch.equal(system.logits("a", x), v1) and system.verify_task("a")
    with pytest.raises(FailedPrecondition, match="serves"):
        system.delete_version("a", first)
    with pytest.raises(NotFound, match=f"no version {better + 4}"):
        system.set_version("a", better + 4)

    # Deleting the poor version frees what only it used (its head); the others keep their own.
    paths = {v.version: {c for _, c in v.path} for v in system.versions("a")}
    poor_only = paths[poor] - set().union(*(cs for n, cs in paths.items() if n != poor))
    freed = system.delete_version("a", poor)
    assert set(freed) == poor_only and all(c not in system.pool for c in freed)
    with pytest.raises(NotFound):
        system.logits(f"a@{poor}", x)
    kept = [*range(1, first + 1), better]
    assert [v.version for v in system.versions("a")] == kept
    assert torch.equal(system.logits(f"a@{better}", x), system.logits(f"a@{better}", x))
    assert system.verify_task(f"a@{better}")

    # A restart finds every version and the one served; version numbers are never given twice.
    system.store.close()
    again = MunetSystem.open(Store(tmp_path / "s"), tiny_vit, device="cpu")
    try:
        assert [v.version for v in again.versions("a")] == kept and again.entry("a").record.version == first
        assert torch.equal(again.logits("a", x), v1) and again.verify_task(f"a@{better}") and again.verify_task("b")
        assert commit_poor_version(again, "a", ds_a) == better + 1
        freed = again.delete_task("a")  # every version goes, and what only they used
        assert "a" not in again.tasks and again.verify_task("b")
        with again.store.meta.read() as v:
            assert v.list_versions("a") == [] and all(c not in {r.id for r in v.list_components()} for c in freed)
    finally:
        again.store.close()


# ---- over a real server: gRPC, the CLI and HTTP --------------------------------------------------
def test_improve_and_versions_over_grpc_cli_and_http(tmp_path, tiny_vit, capsys):
    import httpx

    from munet_client import MunetClient, MunetError
    from munet_client.cli import main as cli
    from munet_server.data.dataset import build_dataset
    from tests.helpers import image_folder, make_app

    app = make_app(tmp_path / "store", tiny_vit, http_port=0)
    target = f"127.0.0.1:{app.port}"
    client = MunetClient(target, timeout=120)
    http = httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=300)
    try:
        folder_a, test_a = image_folder(tmp_path, classes=10, per_class=20, name="a")
        folder_b, _ = image_folder(tmp_path, classes=3, per_class=10, seed=1, name="b")
        for name, folder in (("a", folder_a), ("b", folder_b)):
            op = client.add_task_from_folder(name, folder, budget={"generations": 0}, seed=0)
            assert client.wait(op.name, timeout=600).state == "SUCCEEDED"
        images = [f for f in sorted(folder_a.rglob("*.png"))][:12]
        v1 = client.predict("a", images, top_k=2)
        b_before = client.predict("b", images, top_k=2)

        # Nothing beats the served version (the same probe search): kept, and said so.
        op = client.wait(client.improve_task("a", budget={"generations": 0}, seed=0).name, timeout=600)
        assert op.state == "SUCCEEDED" and op.kind == "improve_task" and op.task_version == 1
        assert op.result.startswith("kept version 1")
        assert [v.version for v in client.describe_task("a").versions] == [1]

        # A weak version 2 served (committed in-process: the path a worse search would have found) ...
        system = app.ref.system
        ds = build_dataset(system.store.meta.iter_examples(system.entry("a").record.dataset_id),
                           system.entry("a").record.class_names, system.storage_size)  # fmt: skip
        assert commit_poor_version(system, "a", ds) == 2
        v2 = client.predict("a", images, top_k=2)
        assert v2 != v1

        # ... which `munet improve` beats: version 3 is published and served.
        assert cli(["--target", target, "improve", "a", "--generations", "0", "--seed", "0", "-q"]) == 0
        assert "published version 3 (was 2)" in capsys.readouterr().out
        info = client.describe_task("a")
        assert info.served_version == 3 and [v.version for v in info.versions] == [1, 2, 3]
        assert [v.served for v in info.versions] == [False, False, True] and info.versions[2].improved_from == 2
        assert client.predict("b", images, top_k=2) == b_before and client.verify_task("b").identical

        # Pinned versions answer as they did: "a@1", the version field, OIP's versioned route.
        assert client.predict("a@1", images, top_k=2) == v1 and client.predict("a", images, top_k=2, version=2) == v2
        assert client.verify_task("a@1").identical and client.verify_task("a@2").identical
        assert client.describe_task("a@1").version == 1
        with pytest.raises(MunetError) as e:
            client.predict("a@9", images)
        assert e.value.code == "NOT_FOUND" and "has no version 9" in e.value.message
        from munet_server.data.images import encode_png

        png = base64.b64encode(encode_png(test_a.images[0])).decode()
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [png]}], "parameters": {"top_k": 2}}
        r1 = http.post("/v2/models/a/versions/1/infer", json=body).json()
        assert r1["model_version"] == "1" and r1["outputs"][0]["data"] == [lb.name for lb in client.predict("a@1", [encode_png(test_a.images[0])], top_k=2)[0]]
        assert http.post("/v2/models/a/infer", json=body).json()["model_version"] == "3"
        assert http.get("/v2/models/a").json()["versions"] == ["1", "2", "3"]

        # Roll back over the CLI; `munet versions` shows it; the outputs are version 1's, bit for bit.
        assert cli(["--target", target, "set-version", "a", "1"]) == 0
        assert "now serves version 1" in capsys.readouterr().out
        assert client.predict("a", images, top_k=2) == v1 and client.verify_task("a").identical
        assert cli(["--target", target, "versions", "a", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(v["version"], v["served"]) for v in listed] == [(1, True), (2, False), (3, False)]

        # Delete versions: the served one is refused; another goes with what only it used (HTTP here).
        with pytest.raises(MunetError) as e:
            client.delete_task_version("a", 1)
        assert e.value.code == "FAILED_PRECONDITION"
        r = http.delete("/munet/v1/tasks/a/versions/2")
        assert r.status_code == 200 and r.json()["freed_components"]
        assert http.get("/munet/v1/tasks/a/versions").json()["served_version"] == 1
        assert [v["version"] for v in http.get("/munet/v1/tasks/a/versions").json()["versions"]] == [1, 3]
        assert http.post("/munet/v1/tasks/a/versions/3:serve").json()["served_version"] == 3
        r = http.post("/munet/v1/tasks/b:improve", json={"generations": 0, "seed": 0})
        assert r.status_code == 202 and r.json()["kind"] == "improve_task"
        assert client.wait(r.json()["name"], timeout=600).state == "SUCCEEDED"
        assert http.post("/munet/v1/tasks/b:improve", json={"bogus": 1}).status_code == 400
        assert client.predict("b", images, top_k=2) == b_before  # kept or not, b answers as before

        # muNet's outer loop from the CLI: every task visited once more, in turn.
        assert cli(["--target", target, "improve", "--all", "--generations", "0", "--seed", "0", "--json"]) == 0
        ops = json.loads(capsys.readouterr().out)
        assert [o["task"] for o in ops] == ["a", "b"] and all(o["state"] == "SUCCEEDED" for o in ops)
        assert cli(["--target", target, "improve", "a", "--all"]) == 2  # one or the other
    finally:
        http.close()
        client.close()
        app.stop(0)


def test_improve_a_task_whose_head_another_task_shares(tmp_path, tiny_vit):
    """Two tasks learned on the same images with the same seed share one stored head (the second adds
    no parameters); improving the second retrains its head like any other (issue 31 §5)."""
    system = MunetSystem.open(Store(tmp_path / "s"), tiny_vit, device="cpu")
    ds = digits_dataset(classes=3, per_class=30)
    learn(system, "first", ds, **PROBE_ONLY)
    learn(system, "twin", ds, **PROBE_ONLY)
    first, twin = system.entry("first").path, system.entry("twin").path
    assert first.components[-1].id == twin.components[-1].id  # the same head, stored once
    digest = system.entry("first").record.golden_digest
    improved = improve(system, "twin", ds, seed=1)
    assert improved.served_version in (1, 2)
    assert system.verify_task("first") and system.entry("first").record.golden_digest == digest
    system.store.close()
