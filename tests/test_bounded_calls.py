"""Bounded everything (issue 12 items 5, 7, 8): long-lived calls cannot take every RPC thread, a
stalled upload ends, an abandoned wait frees its thread, the Predict queue is bounded and drops
the work of callers who left, and a stopping server fails queued work instead of aborting."""

from __future__ import annotations

import contextlib
import threading
import time

import grpc
import pytest
import torch

from munet_client import MunetClient, MunetError
from munet_proto.v1 import munet_pb2 as pb
from munet_proto.v1 import munet_pb2_grpc
from munet_server.data.images import encode_png
from munet_server.errors import Cancelled, ResourceExhausted, Unavailable
from munet_server.ingest.upload import UploadLimits
from munet_server.serve.batcher import Batcher
from tests.helpers import image_folder, make_app, store_state


def _stalled_upload(stub, name: str, release: threading.Event):
    """An AddTask stream that sends its spec and one example, then nothing until `release`."""
    import numpy as np

    png = encode_png(np.zeros((8, 8), dtype="uint8"))

    def messages():
        yield pb.AddTaskRequest(spec=pb.TaskSpec(name=name, class_names=["a", "b"]))
        yield pb.AddTaskRequest(examples=pb.ExampleBatch(examples=[pb.Example(image=png, label=0)]))
        release.wait()

    return stub.AddTask.future(messages())  # no deadline, as plain stubs send


def _wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("bounded")
    app = make_app(tmp / "store", tiny_vit, max_long_calls=4, rpc_workers=8,
                   upload=UploadLimits(idle_seconds=600))  # fmt: skip
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
    folder, test = image_folder(tmp, classes=2, per_class=8)
    assert client.wait(client.add_task_from_folder("a", folder).name, timeout=300).state == "SUCCEEDED"
    yield app, client, [encode_png(i) for i in test.images[:4]], folder
    client.close()
    app.stop(0)


def test_stalled_uploads_leave_health_and_predict_answering(served, caplog):
    app, client, images, _ = served
    before = store_state(app)
    release = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = munet_pb2_grpc.MunetStub(ch)
        calls = [_stalled_upload(stub, f"s{i}", release) for i in range(4)]
        _wait_for(lambda: app.servicer.long_calls.held == 4)
        extra = _stalled_upload(stub, "s-extra", release)
        with pytest.raises(grpc.RpcError) as e:
            extra.result(timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "long-lived calls" in e.value.details()
        t0 = time.monotonic()
        assert client.health() == "SERVING"
        assert len(client.predict("a", images)) == len(images)
        assert [t.name for t in client.list_tasks()] == ["a"]
        assert time.monotonic() - t0 < 10
        for c in calls:
            c.cancel()  # the users gave up: their threads and slots come back
        _wait_for(lambda: app.servicer.long_calls.held == 0)
        release.set()
    assert store_state(app) == before  # nothing of the abandoned uploads is kept
    incidents = [r for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("munet")]
    assert not incidents, [r.getMessage() for r in incidents]  # a client cancelling is not an incident


def test_an_idle_upload_is_ended(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit, upload=UploadLimits(idle_seconds=1.0))
    release = threading.Event()
    try:
        before = store_state(app)
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            call = _stalled_upload(munet_pb2_grpc.MunetStub(ch), "idle", release)
            with pytest.raises(grpc.RpcError) as e:
                call.result(timeout=30)
            release.set()
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "sent nothing for 1 s" in e.value.details()
        assert store_state(app) == before
        assert app.servicer.long_calls.held == 0
    finally:
        app.stop(0)


def test_abandoned_waits_and_watches_free_their_threads(served):
    app, client, _, folder = served
    op = client.add_task_from_folder("long", folder, budget={"seconds": 600, "generations": 1000, "epochs": 1000})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = munet_pb2_grpc.MunetStub(ch)
            waits = [stub.WaitOperation.future(pb.WaitOperationRequest(name=op.name)) for _ in range(2)]
            watches = [stub.WatchOperation(pb.WatchOperationRequest(name=op.name)) for _ in range(2)]
            for w in watches:
                next(w)
            _wait_for(lambda: app.servicer.long_calls.held == 4)
            for c in [*waits, *watches]:
                c.cancel()
            _wait_for(lambda: app.servicer.long_calls.held == 0)  # noticed within about a second
        assert client.wait(op.name, timeout=0.5).state in ("QUEUED", "RUNNING")
    finally:
        client.cancel(op.name)
        client.wait(op.name, timeout=120)


# ---- the Predict batcher, driven directly with a forward pass we can hold ---------------------------
class HeldForward:
    """A forward pass that waits for `release` (so work piles up) and records what it computed."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.seen: list[int] = []

    def __call__(self, task: str, images: torch.Tensor) -> torch.Tensor:
        self.started.set()
        self.release.wait(30)
        self.seen.append(len(images))
        return images.flatten(1)[:, :2].float()


@contextlib.contextmanager
def held_batcher(**kwargs):
    """A real Batcher over a HeldForward; released and stopped however the test ends."""
    fwd = HeldForward()
    b = Batcher(fwd, max_batch=4, wait_ms=0, **kwargs)
    try:
        yield fwd, b
    finally:
        fwd.release.set()
        b.stop()


def test_predict_queue_is_bounded():
    with held_batcher(max_queued=8) as (fwd, b):
        first = b.submit("t", torch.zeros(4, 3, 2, 2))
        fwd.started.wait(10)  # running: no longer queued
        queued = [b.submit("t", torch.zeros(4, 3, 2, 2)) for _ in range(2)]
        with pytest.raises(ResourceExhausted) as e:
            b.submit("u", torch.zeros(1, 3, 2, 2))
        assert "8" in e.value.message and "retry" in e.value.message
        fwd.release.set()
        for f in [first, *queued]:
            assert f.result(10).shape == (4, 2)
        assert b.submit("u", torch.zeros(1, 3, 2, 2)).result(10).shape == (1, 2)  # room again


def test_work_of_a_caller_who_left_is_dropped():
    abandon: list = []
    errors: list = []
    with held_batcher() as (fwd, b):
        b.submit("t", torch.zeros(4, 3, 2, 2))
        fwd.started.wait(10)

        def caller() -> None:
            try:
                b("t", torch.zeros(3, 3, 2, 2), timeout=None, on_abandon=abandon.append)
            except Cancelled as e:
                errors.append(e)

        t = threading.Thread(target=caller)
        t.start()
        _wait_for(lambda: abandon)
        abandon[0]()  # what gRPC does when the client cancels or disconnects
        t.join(10)
        assert errors and "went away" in errors[0].message
        fwd.release.set()
        b.submit("t", torch.zeros(1, 3, 2, 2)).result(10)
        assert fwd.seen == [4, 1]  # the 3 abandoned images were never computed


def test_a_lone_caller_never_lingers_and_announced_callers_share_a_pass():
    """The batch linger (here 500 ms) is spent only on callers of the task still decoding."""
    seen: list[int] = []

    def fwd(task: str, images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return images.flatten(1)[:, :2].float()

    b = Batcher(fwd, max_batch=8, wait_ms=500)
    try:
        t0 = time.monotonic()
        with b.announce("t") as a:
            assert b("t", torch.zeros(1, 3, 2, 2), announced=a).shape == (1, 2)
        assert time.monotonic() - t0 < 0.25 and seen == [1]  # nobody else coming: no wait
        with b.announce("t") as slow:  # a second caller still decoding ...
            with b.announce("t") as a:
                first = b.submit("t", torch.zeros(2, 3, 2, 2), a)
            time.sleep(0.05)
            second = b.submit("t", torch.zeros(3, 3, 2, 2), slow)  # ... arrives within the linger
        assert first.result(5).shape == (2, 2) and second.result(5).shape == (3, 2)
        assert seen == [1, 5]  # one pass for both
        with b.announce("t"):  # a caller that fails before submitting is not waited for
            pass
        t0 = time.monotonic()
        assert b.submit("t", torch.zeros(1, 3, 2, 2)).result(5).shape == (1, 2)
        assert time.monotonic() - t0 < 0.25
    finally:
        b.stop()


def test_stopping_fails_queued_work_with_unavailable():
    fwd = HeldForward()
    b = Batcher(fwd, max_batch=4, wait_ms=0)
    running = b.submit("t", torch.zeros(4, 3, 2, 2))
    fwd.started.wait(10)
    queued = b.submit("t", torch.zeros(2, 3, 2, 2))
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    _wait_for(lambda: queued.done())
    assert isinstance(queued.exception(), Unavailable)
    fwd.release.set()
    stopper.join(10)
    assert not stopper.is_alive() and running.result(1).shape == (4, 2)  # the pass in flight finished
    with pytest.raises(Unavailable):
        b.submit("t", torch.zeros(1, 3, 2, 2))


def test_client_falls_back_to_polling_when_watches_are_full(served):
    """`munet add-task` watches its operation; with every long-call slot taken it polls instead."""
    app, client, _, _ = served
    release = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = munet_pb2_grpc.MunetStub(ch)
        calls = [_stalled_upload(stub, f"w{i}", release) for i in range(4)]
        try:
            _wait_for(lambda: app.servicer.long_calls.held == 4)
            op = client.operations(task="a")[0]
            states = [o.state for o in client.watch(op.name)]
            assert states == ["SUCCEEDED"]
            assert client.wait(op.name).state == "SUCCEEDED"
        finally:
            for c in calls:
                c.cancel()
            release.set()
    with pytest.raises(MunetError):
        client.operation("no-such-operation")


def _check_paging(app, ops) -> None:
    """ListTasks and ListOperations page (AIP-158); ListTasks sends sharer counts, not names, so its
    size grows linearly with the number of tasks (names of every sharer made it quadratic)."""
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = munet_pb2_grpc.MunetStub(ch)
        first = stub.ListTasks(pb.ListTasksRequest(page_size=2), timeout=30)
        assert [t.name for t in first.tasks] == ["t0", "t1"] and first.next_page_token
        rest = stub.ListTasks(pb.ListTasksRequest(page_size=2, page_token=first.next_page_token), timeout=30)
        assert [t.name for t in rest.tasks] == ["t2"] and not rest.next_page_token
        root = [c for c in first.tasks[0].path if c.owner == "root"]
        assert root and all(c.num_shared_with == 3 and not c.shared_with for c in root)  # root + 2 tasks
        full = stub.DescribeTask(pb.DescribeTaskRequest(name="t0"), timeout=30)
        assert list(next(c for c in full.path if c.owner == "root").shared_with) == ["root", "t1", "t2"]
        page = stub.ListOperations(pb.ListOperationsRequest(page_size=1), timeout=30)
        assert [o.name for o in page.operations] == [ops[1].name]
        page = stub.ListOperations(pb.ListOperationsRequest(page_token=page.next_page_token), timeout=30)
        assert [o.name for o in page.operations] == [ops[2].name] and not page.next_page_token
        with pytest.raises(grpc.RpcError) as e:
            stub.ListTasks(pb.ListTasksRequest(page_token="%%%not-a-token"), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_operation_history_is_bounded(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit, operation_history=2)
    folder, _ = image_folder(tmp_path, classes=2, per_class=6)
    try:
        with MunetClient(f"127.0.0.1:{app.port}", timeout=60) as c:
            ops = [c.add_task_from_folder(f"t{i}", folder, budget={"generations": 0}) for i in range(3)]
            for op in ops:
                assert c.wait(op.name, timeout=300).state == "SUCCEEDED"
            assert sorted(o.name for o in c.operations()) == sorted(o.name for o in ops[1:])
            with pytest.raises(MunetError) as e:
                c.operation(ops[0].name)
            assert e.value.code == "NOT_FOUND"
        with app.ref.system.store.meta.read() as v:  # gone from the store too, not only from memory
            assert len(v.list_operations()) == 2
        assert len(app.ref.system.tasks) == 3  # the tasks themselves stay
        _check_paging(app, ops)
    finally:
        app.stop(0)


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_real_enospc_maps_to_resource_exhausted(tmp_path):
    """The error a full disk really raises (writing to /dev/full) is recognised and names the store."""
    from munet_server.errors import disk_full

    with pytest.raises(OSError) as e, open("/dev/full", "wb") as f:
        f.write(b"x" * 65536)
        f.flush()
    mapped = disk_full(e.value, tmp_path)
    assert mapped is not None and mapped.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(tmp_path) in mapped.message and "MiB free" in mapped.message
    assert disk_full(ValueError("not a disk error"), tmp_path) is None


def test_memory_per_dataset_is_bounded_however_small_the_files(tmp_path, tiny_vit):
    """1x1 PNGs cost a full decoded image each in the search: the bound is on decoded bytes."""
    import numpy as np

    side = tiny_vit.max_image_size  # the storage size uploads are decoded at
    app = make_app(tmp_path / "store", tiny_vit, upload=UploadLimits(max_decoded_bytes=3 * side * side * 10))
    try:
        before = store_state(app)
        dot = encode_png(np.zeros((1, 1), dtype="uint8"))  # ~70 bytes
        with MunetClient(f"127.0.0.1:{app.port}", timeout=60) as c, pytest.raises(MunetError) as e:
            c.add_task("dots", ["a", "b"], [(dot, i % 2) for i in range(11)])
        assert e.value.code == "RESOURCE_EXHAUSTED" and "more than 10 examples" in e.value.message
        assert store_state(app) == before
    finally:
        app.stop(0)
