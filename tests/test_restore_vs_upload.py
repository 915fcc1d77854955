"""A restore and an upload never overlap, so no acknowledged example is lost to a restore; a stalled
restore stream holds up nothing (the snapshot is received before anything is stopped or locked)."""

from __future__ import annotations

import threading

import grpc
import pytest

from munet_client import MunetClient, MunetError
from munet_proto.v1 import munet_pb2 as pb
from munet_proto.v1 import munet_pb2_grpc as pb_grpc
from tests.helpers import image_folder, make_app

pytestmark = pytest.mark.slow


def _examples(folder) -> tuple[list[str], list[pb.Example]]:
    classes = sorted(p.name for p in folder.iterdir())
    examples = [
        pb.Example(image=f.read_bytes(), label=label)
        for label, c in enumerate(classes)
        for f in sorted((folder / c).iterdir())
    ]
    return classes, examples


def test_restore_is_refused_while_an_upload_streams_and_loses_nothing(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit)
    target = f"127.0.0.1:{app.port}"
    folder, _ = image_folder(tmp_path, classes=2, per_class=20)
    classes, examples = _examples(folder)
    try:
        with MunetClient(target) as c, grpc.insecure_channel(target) as ch:
            c.snapshot(tmp_path / "empty.tar")  # a valid snapshot to restore (no tasks)
            half = threading.Event()
            go_on = threading.Event()

            def messages():
                yield pb.AddTaskRequest(spec=pb.TaskSpec(name="up", class_names=classes))
                for i, ex in enumerate(examples):  # one example per message: the server flushes as it goes
                    if i == len(examples) // 2:
                        half.set()
                        assert go_on.wait(120)
                    yield pb.AddTaskRequest(examples=pb.ExampleBatch(examples=[ex]))

            upload = pb_grpc.MunetStub(ch).AddTask.future(messages())
            assert half.wait(60)
            with pytest.raises(MunetError) as e:  # both forms of restore are refused mid-upload
                c.restore(tmp_path / "empty.tar")
            assert e.value.code == "FAILED_PRECONDITION" and "upload" in e.value.message
            with pytest.raises(MunetError) as e:
                c.restore(server_dir=str(tmp_path / "nowhere"))
            assert e.value.code in ("FAILED_PRECONDITION", "NOT_FOUND")
            go_on.set()
            op = upload.result(timeout=120)
            done = c.wait(op.name, timeout=300)
            assert done.state == "SUCCEEDED", done.error
            assert done.num_examples == len(examples)  # every acknowledged example was kept
            assert [t.name for t in c.list_tasks()] == ["up"]
            assert c.restore(tmp_path / "empty.tar").tasks == []  # nothing in flight: allowed
    finally:
        app.stop(0)


def test_a_stalled_restore_stream_blocks_no_upload(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit)
    target = f"127.0.0.1:{app.port}"
    folder, _ = image_folder(tmp_path, classes=2, per_class=12)
    try:
        with MunetClient(target) as c, grpc.insecure_channel(target) as ch:
            archive = tmp_path / "snap.tar"
            c.snapshot(archive)
            data = archive.read_bytes()
            sent_some = threading.Event()
            release = threading.Event()

            def chunks():
                yield pb.SnapshotChunk(data=data[:4096])
                sent_some.set()
                release.wait(300)  # a client that stalls mid-stream
                yield pb.SnapshotChunk(data=data[4096:])

            restore = pb_grpc.MunetStub(ch).StreamRestore.future(chunks())
            assert sent_some.wait(60)
            # Meanwhile the server works as usual: an upload is accepted and its operation runs.
            op = c.add_task_from_folder("during", folder)
            assert c.wait(op.name, timeout=300).state == "SUCCEEDED"
            release.set()
            # The restore then finds nothing in flight and replaces the system (with no tasks).
            assert list(restore.result(timeout=120).tasks) == []
            assert c.list_tasks() == []
    finally:
        app.stop(0)
