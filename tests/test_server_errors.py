"""Every bad input gets a precise status and leaves the store exactly as it was; auth; cancel; TLS."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from munet_client import MunetClient, MunetError
from munet_server.data.images import encode_png
from munet_server.ingest.upload import UploadLimits
from tests.helpers import image_folder, make_app, self_signed_cert, store_state


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("errors")
    app = make_app(
        tmp / "store", tiny_vit, upload=UploadLimits(max_examples=500, max_bytes=400_000, min_per_class=2)
    )
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
    folder, test = image_folder(tmp, classes=2, per_class=12)
    assert client.wait(client.add_task_from_folder("base", folder).name, timeout=300).state == "SUCCEEDED"
    yield app, client, test
    client.close()
    app.stop(0)


PNG = encode_png(np.zeros((8, 8), dtype="uint8"))
NOISE = encode_png(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))  # ~270 kB
GOOD = [(PNG, 0), (PNG, 0), (PNG, 1), (PNG, 1)]


@pytest.mark.parametrize(
    ("name", "classes", "examples", "kwargs", "code", "fragment"),
    [
        ("base", ["a", "b"], GOOD, {}, "ALREADY_EXISTS", "already exists"),
        ("x", ["a", "b"], [], {}, "INVALID_ARGUMENT", "no examples"),
        ("x", ["a", "b"], [*GOOD, (b"\x89PNG\r\n\x1a\ngarbage", 0)], {}, "INVALID_ARGUMENT", "example 4"),
        ("x", ["a", "b"], [*GOOD, (PNG, 2)], {}, "INVALID_ARGUMENT", "label 2"),
        ("x", ["a", "b"], [*GOOD, (PNG, -1)], {}, "INVALID_ARGUMENT", "label -1"),
        ("x", ["a", "b"], [(PNG, 0), (PNG, 0), (PNG, 1)], {}, "INVALID_ARGUMENT", "at least 2"),
        ("x", ["a"], GOOD[:2], {}, "INVALID_ARGUMENT", "at least 2 classes"),
        ("x", ["a", "a"], GOOD, {}, "INVALID_ARGUMENT", "unique"),
        ("x", ["a", "b\x00c"], GOOD, {}, "INVALID_ARGUMENT", "U+0000"),
        ("x", ["a", "b\nc"], GOOD, {}, "INVALID_ARGUMENT", "control"),
        ("x", ["a", "evil\u202etxt.exe"], GOOD, {}, "INVALID_ARGUMENT", "U+202E"),
        ("x", ["a", "n" * 5000], GOOD, {}, "INVALID_ARGUMENT", "limit is 128"),
        ("../x", ["a", "b"], GOOD, {}, "INVALID_ARGUMENT", "invalid task name"),
        ("a/b", ["a", "b"], GOOD, {}, "INVALID_ARGUMENT", "invalid task name"),
        ("a\x00b", ["a", "b"], GOOD, {}, "INVALID_ARGUMENT", "invalid task name"),
        ("", ["a", "b"], GOOD, {}, "INVALID_ARGUMENT", "invalid task name"),
        ("x", ["a", "b"], GOOD, {"budget": {"generations": -1}}, "INVALID_ARGUMENT", "generations"),
        ("x", ["a", "b"], GOOD, {"budget": {"epochs": 10**12}}, "INVALID_ARGUMENT", "epochs"),
        ("x", ["a", "b"], GOOD, {"budget": {"seconds": 0.0}}, "INVALID_ARGUMENT", "seconds"),
        ("x", ["a", "b"], GOOD, {"scale_factor": 0.0}, "INVALID_ARGUMENT", "scale_factor"),
        ("x", ["a", "b"], GOOD, {"policy": "magic"}, "INVALID_ARGUMENT", "policy"),
        ("x", ["a", "b"], [(PNG, i % 2) for i in range(501)], {}, "RESOURCE_EXHAUSTED", "500"),
        (
            "x",
            ["a", "b"],
            [(NOISE, 0), (NOISE, 1)],
            {},
            "RESOURCE_EXHAUSTED",
            "larger",
        ),
    ],
)
def test_bad_uploads_change_nothing(served, name, classes, examples, kwargs, code, fragment):
    app, client, _ = served
    before = store_state(app)
    with pytest.raises(MunetError) as e:
        client.add_task(name, classes, iter(examples), **kwargs)
    assert e.value.code == code, e.value
    assert fragment in e.value.message, e.value.message
    assert store_state(app) == before


def test_predict_bad_batches(served):
    _app, client, _test = served
    from munet_proto.v1 import munet_pb2 as pb

    stub = client.stub
    with pytest.raises(MunetError, match="either encoded images or raw"):
        client._call(
            stub.Predict,
            pb.PredictRequest(
                task="base",
                images=[PNG],
                raw_images=[pb.RawImage(height=1, width=1, channels=1, data=b"\x00")],
            ),
        )
    with pytest.raises(MunetError, match="needs 12"):
        client._call(
            stub.Predict,
            pb.PredictRequest(
                task="base", raw_images=[pb.RawImage(height=2, width=2, channels=3, data=b"\x00")]
            ),
        )
    with pytest.raises(MunetError, match="channels"):
        client._call(
            stub.Predict,
            pb.PredictRequest(
                task="base", raw_images=[pb.RawImage(height=1, width=1, channels=4, data=b"\x00" * 4)]
            ),
        )
    assert len(client.predict("base", [PNG] * 257)) == 257  # the client splits big batches itself
    with pytest.raises(MunetError) as e:
        client._call(stub.Predict, pb.PredictRequest(task="base", images=[PNG] * 257))
    assert e.value.code == "RESOURCE_EXHAUSTED"
    with pytest.raises(MunetError) as e:
        client._call(stub.Predict, pb.PredictRequest(task="", images=[PNG]))
    assert e.value.code == "INVALID_ARGUMENT"


def test_cancel_stops_a_search_and_keeps_what_it_published(served, tmp_path):
    """A cancelled AddTask publishes nothing more: its first version (published within seconds) keeps
    serving, every other task is as it was; one cancelled while queued leaves nothing at all."""
    app, client, test = served
    before = store_state(app)
    probe = client.predict("base", [encode_png(i) for i in test.images], top_k=2)
    folder, _ = image_folder(tmp_path, classes=3, per_class=20)
    op = client.add_task_from_folder("slow", folder, budget={"seconds": 600, "generations": 1000, "epochs": 200})
    for update in client.watch(op.name):
        if update.state == "RUNNING" and update.progress.phase == "searching":
            break
    queued = client.add_task_from_folder("queued", folder)  # behind "slow": one search runs at a time
    assert client.cancel(queued.name).state == "CANCELLED"
    cancelled = client.cancel(op.name)
    final = client.wait(op.name, timeout=120)
    assert final.state == "CANCELLED" and final.error_code == "CANCELLED", (cancelled, final)
    slow = client.describe_task("slow")
    assert slow.served_version >= 1 and client.verify_task("slow").identical
    after = store_state(app)
    assert set(before[0]) <= set(after[0]) and set(before[1]) <= set(after[1])  # nothing of "base" changed
    assert not after[2]  # no unfinished upload is left (the queued one went with its operation)
    assert [t.name for t in client.list_tasks()] == ["base", "slow"]
    assert client.predict("base", [encode_png(i) for i in test.images], top_k=2) == probe
    assert client.describe_task("slow").versions == slow.versions  # the search published nothing more
    client.delete_task("slow")
    with pytest.raises(MunetError) as e:
        client.cancel(op.name)
    assert e.value.code == "FAILED_PRECONDITION"


def test_restore_refuses_garbage_and_changes_nothing(served, tmp_path):
    app, client, _ = served
    before = store_state(app)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(MunetError) as e:
        client.restore(bad)
    assert e.value.code in ("INVALID_ARGUMENT", "DATA_LOSS"), e.value
    with pytest.raises(MunetError) as e:
        client.restore(server_dir=str(tmp_path / "missing"))
    assert e.value.code == "NOT_FOUND"
    assert store_state(app) == before
    assert client.health("base") == "SERVING"


# ---- auth --------------------------------------------------------------------------------------------
def test_tokens(tmp_path, tiny_vit):
    app = make_app(tmp_path / "s", tiny_vit, admin_token="adm-secret", predict_token="pred-secret")
    target = f"127.0.0.1:{app.port}"
    folder, _test = image_folder(tmp_path, classes=2, per_class=6)
    try:
        with MunetClient(target) as anon:
            with pytest.raises(MunetError) as e:
                anon.add_task_from_folder("t", folder)
            assert e.value.code == "UNAUTHENTICATED" and "Bearer" in e.value.message
            with pytest.raises(MunetError) as e:
                anon.predict("t", [PNG])
            assert e.value.code == "UNAUTHENTICATED"
            with pytest.raises(MunetError) as e:
                anon.snapshot(tmp_path / "x.tar")
            assert e.value.code == "UNAUTHENTICATED"
            for read in (anon.list_tasks, anon.operations, anon.system, lambda: anon.describe_task("t")):
                with pytest.raises(MunetError) as e:
                    read()  # metadata needs at least the predict token
                assert e.value.code == "UNAUTHENTICATED"
            assert anon.health() == "SERVING"  # health stays open for load balancers
        with MunetClient(target, token="pred-secret") as predictor:
            with pytest.raises(MunetError) as e:
                predictor.add_task_from_folder("t", folder)
            assert e.value.code == "PERMISSION_DENIED"
            with pytest.raises(MunetError) as e:
                predictor.delete_task("t")
            assert e.value.code == "PERMISSION_DENIED"
        with MunetClient(target, token="adm-secret") as admin:
            assert admin.wait(admin.add_task_from_folder("t", folder).name, timeout=300).state == "SUCCEEDED"
        with MunetClient(target, token="pred-secret") as predictor:
            assert len(predictor.predict("t", [PNG])) == 1
            assert [t.name for t in predictor.list_tasks()] == ["t"]
        with MunetClient(target, token="wrong") as bad:
            with pytest.raises(MunetError) as e:
                bad.predict("t", [PNG])
            assert e.value.code == "PERMISSION_DENIED"
    finally:
        app.stop(0)


def test_a_predict_token_alone_protects_admin_rpcs(tmp_path, tiny_vit):
    """With only --predict-token, the store is not left open: admin RPCs need that token."""
    app = make_app(tmp_path / "s", tiny_vit, predict_token="only-secret")
    target = f"127.0.0.1:{app.port}"
    try:
        with MunetClient(target) as anon:
            calls = {
                "AddTask": lambda: anon.add_task("t", ["a", "b"], GOOD),
                "DeleteTask": lambda: anon.delete_task("t"),
                "Snapshot": lambda: anon.snapshot(server_dir=str(tmp_path / "snap")),
                "Restore": lambda: anon.restore(server_dir=str(tmp_path / "snap")),
                "ListTasks": anon.list_tasks,
            }
            for name, call in calls.items():
                with pytest.raises(MunetError) as e:
                    call()
                assert e.value.code == "UNAUTHENTICATED", name
        assert not (tmp_path / "snap").exists()
        with MunetClient(target, token="only-secret") as holder:
            with pytest.raises(MunetError) as e:
                holder.delete_task("t")
            assert e.value.code == "NOT_FOUND"  # past auth
    finally:
        app.stop(0)


def test_tokens_from_files_stay_out_of_the_command_line(tmp_path):
    from munet_server.config import from_args, parser

    (tmp_path / "admin").write_text("adm-from-file\n")
    (tmp_path / "predict").write_text("pred-from-file")
    args = parser().parse_args(
        ["--admin-token-file", str(tmp_path / "admin"), "--predict-token-file", str(tmp_path / "predict")]
    )
    cfg = from_args(args, env={})
    assert (cfg.admin_token, cfg.predict_token) == ("adm-from-file", "pred-from-file")
    (tmp_path / "empty").write_text("\n")
    for argv, fragment in [
        (["--admin-token-file", str(tmp_path / "missing")], "missing"),
        (["--admin-token-file", str(tmp_path / "empty")], "one line"),
        (["--admin-token-file", str(tmp_path / "admin"), "--admin-token", "x"], "not both"),
    ]:
        with pytest.raises(SystemExit) as e:
            from_args(parser().parse_args(argv), env={})
        assert fragment in str(e.value)


def test_tls_round_trip(tmp_path, tiny_vit):
    cert, key = self_signed_cert(tmp_path)
    app = make_app(tmp_path / "s", tiny_vit, tls_cert=cert, tls_key=key)
    try:
        with MunetClient(f"localhost:{app.port}", tls_ca=cert) as c:
            assert c.health() == "SERVING"
            assert c.system().family == "vit"
        with MunetClient(f"localhost:{app.port}", timeout=3) as plain, pytest.raises(MunetError) as e:
            plain.system()  # plaintext against a TLS port fails cleanly
        assert e.value.code == "UNAVAILABLE"
    finally:
        app.stop(0)


def test_default_bind_is_loopback():
    from munet_server.config import ServerConfig, from_args, parser

    assert ServerConfig().host == "127.0.0.1"
    assert from_args(parser().parse_args([]), {}).host == "127.0.0.1"


def test_host_and_port_from_the_environment(monkeypatch):
    """The Docker image sets MUNET_HOST/MUNET_PORT; its HEALTHCHECK reads the same MUNET_PORT."""
    from munet_server.config import from_args, parser

    monkeypatch.setenv("MUNET_HOST", "0.0.0.0")
    monkeypatch.setenv("MUNET_PORT", "50123")
    cfg = from_args(parser().parse_args([]), {})
    assert (cfg.host, cfg.port) == ("0.0.0.0", 50123)
    cfg = from_args(parser().parse_args(["--host", "127.0.0.1", "--port", "7"]), {})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 7)  # flags win


def test_concurrent_predicts_across_tasks(served):
    app, client, test = served
    images = [encode_png(i) for i in test.images]
    want = client.predict("base", images)
    errors, results = [], []

    def worker():
        try:
            with MunetClient(client.target) as c:
                for _ in range(5):
                    results.append(c.predict("base", images) == want)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 40 and all(results)
    assert app.service.predictor.batcher.batches < app.service.predictor.batcher.batched_images  # requests were merged
