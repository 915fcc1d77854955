"""End to end over a real gRPC server on loopback, through the real client (and CLI)."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from munet_client import MunetClient, MunetError
from munet_client.cli import main as cli
from munet_server.data.images import encode_png
from tests.helpers import image_folder, make_app


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("e2e")
    app = make_app(tmp / "store", tiny_vit)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
    folder, test = image_folder(tmp, classes=3, per_class=30)
    op = client.add_task_from_folder("digits", folder, seed=0)
    final = client.wait(op.name, timeout=300)
    assert final.state == "SUCCEEDED", final
    yield app, client, test, tmp
    client.close()
    app.stop(0)


def _accuracy(client, task, test):
    preds = client.predict(task, [encode_png(i) for i in test.images])
    return sum(p[0].index == int(y) for p, y in zip(preds, test.labels)) / len(preds), preds


def test_health_and_reflection(served):
    _app, client, _, _ = served
    assert client.health() == "SERVING"
    assert client.health("digits") == "SERVING"
    assert client.health("no-such-task") == "SERVICE_UNKNOWN"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    resp = next(
        iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    )
    names = {s.name for s in resp.list_services_response.service}
    assert {"munet.v1.Munet", "grpc.health.v1.Health"} <= names


def test_predict_above_chance_and_matches_in_process(served):
    app, client, test, _ = served
    acc, preds = _accuracy(client, "digits", test)
    assert acc > 0.55, acc  # 3 classes: chance is 0.33
    # The served answer is exactly the in-process forward pass of the same path.
    from munet_server.data.images import decode_to_storage

    x = torch.stack([decode_to_storage(encode_png(i), app.ref.system.storage_size) for i in test.images])
    probs = torch.softmax(app.ref.system.logits("digits", x), -1)
    assert [p[0].index for p in preds] == probs.argmax(-1).tolist()
    assert preds[0][0].probability == pytest.approx(float(probs[0].max()), abs=1e-6)
    # Raw pixels give the same answer as the PNG bytes.
    raw = client.predict_raw("digits", [i for i in test.images[:5]])
    assert [r[0].index for r in raw] == [p[0].index for p in preds[:5]]


def test_describe_and_list(served):
    _, client, _, _ = served
    info = client.describe_task("digits")
    assert info.class_names == ["0", "1", "2"]
    assert info.params_added > 0 and info.params_total >= info.params_added
    assert info.path[-1].name == "head" and info.path[-1].created_by_task
    assert any(p.owner == "root" for p in info.path)  # reused, frozen root layers
    assert info.hparams["ds_image_size"] in (16, 32, 48, 64)
    assert [t.name for t in client.list_tasks()] == ["digits"]
    assert client.system().num_tasks >= 1


def test_second_task_leaves_first_bit_identical(served):
    app, client, test, tmp = served
    before = client.predict("digits", [encode_png(i) for i in test.images], top_k=3)
    folder, _test2 = image_folder(tmp, classes=4, per_class=20, seed=1, name="digits4")
    op = client.add_task_from_folder("digits4", folder, seed=1)
    assert client.wait(op.name, timeout=300).state == "SUCCEEDED"
    after = client.predict("digits", [encode_png(i) for i in test.images], top_k=3)
    assert before == after  # names, indices and float probabilities, all equal
    assert app.ref.system.verify_task("digits")
    shared = [p for p in client.describe_task("digits4").path if p.shared]
    assert shared, "the second task reuses frozen components"


def test_snapshot_restore_into_fresh_server(served, tiny_vit, tmp_path):
    _app, client, test, _ = served
    archive = tmp_path / "system.tar"
    client.snapshot(archive)
    images = [encode_png(i) for i in test.images]
    want = client.predict("digits", images, top_k=2)
    fresh = make_app(tmp_path / "fresh", tiny_vit)
    try:
        with MunetClient(f"127.0.0.1:{fresh.port}") as c2:
            info = c2.restore(archive)
            assert "digits" in info.tasks
            assert c2.predict("digits", images, top_k=2) == want
            assert c2.health("digits") == "SERVING"
            # Server-side snapshot directory, then restore from it.
            snap = c2.snapshot(server_dir=str(tmp_path / "snapdir"))
            assert snap.num_tasks == len(info.tasks) and snap.num_files >= 2
            assert c2.restore(server_dir=str(tmp_path / "snapdir")).tasks == info.tasks
    finally:
        fresh.stop(0)


def test_cli_commands(served, capsys, tmp_path):
    app, _client, test, _ = served
    target = ["--target", f"127.0.0.1:{app.port}"]
    assert cli([*target, "health"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert cli([*target, "--json", "tasks"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert "digits" in {t["name"] for t in tasks}
    img = tmp_path / "x.png"
    img.write_bytes(encode_png(test.images[0]))
    assert cli([*target, "--json", "predict", "digits", str(img), "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["labels"]) == 2 and out[0]["labels"][0]["name"] in ("0", "1", "2")
    assert cli([*target, "describe", "digits"]) == 0
    assert "path" in capsys.readouterr().out
    assert cli([*target, "describe", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert cli([*target, "--json", "ops"]) == 0
    ops = json.loads(capsys.readouterr().out)
    assert all(o["state"] == "SUCCEEDED" for o in ops)
    assert cli([*target, "--json", "system"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "vit"


def test_errors_have_precise_codes(served):
    _, client, _, _ = served
    cases = {
        "NOT_FOUND": lambda: client.predict("nope", [b"x"]),
        "INVALID_ARGUMENT": lambda: client.predict("digits", [b"not an image"]),
    }
    for code, call in cases.items():
        with pytest.raises(MunetError) as e:
            call()
        assert e.value.code == code, e.value
    with pytest.raises(MunetError, match=r"INVALID_ARGUMENT.*no images"):
        client.predict("digits", [])
    with pytest.raises(MunetError, match="top_k"):
        client.predict("digits", [encode_png(torch.zeros(8, 8, dtype=torch.uint8).numpy())], top_k=9)
    with pytest.raises(MunetError) as e:
        client.describe_task("nope")
    assert e.value.code == "NOT_FOUND" and "digits" in e.value.message  # lists known tasks
    with pytest.raises(MunetError) as e:
        client.operation("nope")
    assert e.value.code == "NOT_FOUND"


def test_unreachable_server_is_a_clear_error():
    with MunetClient("127.0.0.1:1", timeout=2) as c, pytest.raises(MunetError) as e:
        c.system()
    assert e.value.code == "UNAVAILABLE" and "munet-server running" in e.value.message


def test_grpc_status_codes_visible_to_plain_grpc(served):
    """Any gRPC client, not only ours, sees the status codes."""
    from munet_proto.v1 import munet_pb2 as pb
    from munet_proto.v1 import munet_pb2_grpc as pb_grpc

    _, client, _, _ = served
    stub = pb_grpc.MunetStub(client.channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.DescribeTask(pb.DescribeTaskRequest(name="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_endpoint(served):
    """Prometheus text on --metrics-port: RPC counts, Predict latency per task."""
    import socket
    import urllib.request

    app = served[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.metrics.serve(port, "127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'munet_rpc_requests_total{code="OK",method="Predict"}' in text
    assert 'munet_predict_latency_seconds_bucket{le="0.1",task="digits",version="1"}' in text
    assert "munet_tasks " in text


def test_delete_frees_only_unshared_components(served):
    from prometheus_client import generate_latest

    app, client, test, tmp = served
    folder, _ = image_folder(tmp, classes=2, per_class=10, seed=3, name="to-delete")
    assert (
        client.wait(client.add_task_from_folder("doomed", folder, seed=3).name, timeout=300).state
        == "SUCCEEDED"
    )
    before = client.predict("digits", [encode_png(i) for i in test.images], top_k=2)
    client.predict("doomed", [encode_png(test.images[0])])
    assert 'task="doomed"' in generate_latest(app.metrics.registry).decode()
    # What its versions made and no other task uses is freed (every version goes with the task).
    own = set()
    for v in client.describe_task("doomed").versions:
        own |= {p.id for p in client.describe_task(f"doomed@{v.version}").path if p.created_by_task and not p.shared_with}
    sizes = {cid: c.num_params for cid, c in app.ref.system.pool.items()}
    freed, params = client.delete_task("doomed")
    assert set(freed) == own and params == sum(sizes[c] for c in own)
    assert "doomed" not in [t.name for t in client.list_tasks()]
    assert client.health("doomed") == "SERVICE_UNKNOWN"
    assert 'task="doomed"' not in generate_latest(app.metrics.registry).decode()  # its series are gone
    store = app.ref.system.store
    with store.meta.read() as v:
        assert store.shards.digests() == store.referenced_shards(v)  # its shard files went at once
    assert client.predict("digits", [encode_png(i) for i in test.images], top_k=2) == before
    with pytest.raises(MunetError) as e:
        client.delete_task("doomed")
    assert e.value.code == "NOT_FOUND"


def test_cli_add_task_snapshot_restore_delete(served, capsys, tmp_path):
    app, _, _test, _ = served
    target = ["--target", f"127.0.0.1:{app.port}"]
    folder, _ = image_folder(tmp_path, classes=2, per_class=8, seed=5, name="cli-task")
    assert (
        cli([*target, "--json", "add-task", "cli-task", str(folder), "--generations", "1", "--seed", "5"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "cli-task" and info["class_names"] == ["0", "1"]
    archive = tmp_path / "cli.tar"
    assert cli([*target, "snapshot", str(archive)]) == 0 and archive.stat().st_size > 0
    assert cli([*target, "delete", "cli-task"]) == 0
    assert "freed" in capsys.readouterr().out
    assert cli([*target, "--json", "restore", str(archive)]) == 0
    assert "cli-task" in json.loads(capsys.readouterr().out)["tasks"]
    assert cli([*target, "add-task", "cli-task", str(folder)]) == 1  # exists again after the restore
    assert "ALREADY_EXISTS" in capsys.readouterr().err
    assert cli([*target, "add-task", "bad", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    op = json.loads(
        _run_json(
            capsys,
            cli,
            [
                *target,
                "--json",
                "add-task",
                "later",
                str(folder),
                "--no-wait",
                "--seconds",
                "600",
                "--epochs",
                "200",
            ],
        )
    )
    assert cli([*target, "cancel", op["name"]]) == 0
    capsys.readouterr()
    assert cli([*target, "--json", "wait", op["name"]]) == 1  # CANCELLED is not success
    assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"
    # Cancelled before or after its first probe was published (a race the cancel may lose): nothing
    # searches for it any more, and what it published, if anything, serves and verifies.
    tasks = {t.name: t for t in served[1].list_tasks()}
    if "later" in tasks:
        assert not tasks["later"].improving and tasks["later"].served_version >= 1
        assert served[1].verify_task("later").identical


def _run_json(capsys, fn, argv) -> str:
    assert fn(argv) == 0
    return capsys.readouterr().out
