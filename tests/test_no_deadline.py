"""Every RPC works from a plain generated stub that sets no deadline (grpcurl's and grpc-js's default).

grpc reports "no deadline" as ~9e18 seconds remaining; code that passed that on as a timeout failed
with INTERNAL "timestamp out of range". Here each RPC is called with raw stubs and no `timeout=`.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from munet_proto.v1 import munet_pb2 as pb
from munet_proto.v1 import munet_pb2_grpc as pb_grpc
from munet_server.data.images import encode_png
from tests.helpers import image_folder, make_app

pytestmark = pytest.mark.timeout(600)  # a call that hangs instead of answering fails the test


def _add_task_messages(name: str, folder) -> list[pb.AddTaskRequest]:
    classes = sorted(p.name for p in folder.iterdir())
    msgs = [pb.AddTaskRequest(spec=pb.TaskSpec(name=name, class_names=classes))]
    examples = [
        pb.Example(image=f.read_bytes(), label=label)
        for label, c in enumerate(classes)
        for f in sorted((folder / c).iterdir())
    ]
    msgs.append(pb.AddTaskRequest(examples=pb.ExampleBatch(examples=examples)))
    return msgs


def test_every_rpc_without_a_deadline(tmp_path, tiny_vit):
    app = make_app(tmp_path / "store", tiny_vit)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.MunetStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            assert stub.GetSystem(pb.GetSystemRequest()).num_tasks == 0

            folder, test = image_folder(tmp_path, classes=2, per_class=8)
            op = stub.AddTask(iter(_add_task_messages("a", folder)))
            assert stub.GetOperation(pb.GetOperationRequest(name=op.name)).name == op.name
            watched = list(stub.WatchOperation(pb.WatchOperationRequest(name=op.name)))
            assert watched[-1].state == pb.Operation.SUCCEEDED
            done = stub.WaitOperation(pb.WaitOperationRequest(name=op.name, timeout_seconds=0))
            assert done.state == pb.Operation.SUCCEEDED
            assert stub.WaitOperation(pb.WaitOperationRequest(name=op.name, timeout_seconds=5)).done
            assert [o.name for o in stub.ListOperations(pb.ListOperationsRequest()).operations] == [op.name]

            images = [encode_png(i) for i in test.images[:3]]
            pred = stub.Predict(pb.PredictRequest(task="a", images=images, top_k=2))
            assert len(pred.predictions) == 3
            many = stub.PredictMany(pb.PredictManyRequest(tasks=["a"], images=images, top_k=1))
            assert [len(r.predictions) for r in many.results] == [3]
            assert [t.name for t in stub.ListTasks(pb.ListTasksRequest()).tasks] == ["a"]
            assert stub.DescribeTask(pb.DescribeTaskRequest(name="a")).name == "a"

            snap = tmp_path / "snap"
            assert stub.Snapshot(pb.SnapshotRequest(dest_dir=str(snap))).num_tasks == 1
            archive = b"".join(c.data for c in stub.StreamSnapshot(pb.StreamSnapshotRequest()))
            assert len(archive) > 0

            # A second operation, cancelled while it is queued or running.
            op2 = stub.AddTask(iter(_add_task_messages("b", folder)))
            cancelled = stub.CancelOperation(pb.CancelOperationRequest(name=op2.name))
            assert cancelled.name == op2.name
            final = stub.WaitOperation(pb.WaitOperationRequest(name=op2.name))
            assert final.state in (pb.Operation.CANCELLED, pb.Operation.SUCCEEDED)
            if "b" in {t.name for t in stub.ListTasks(pb.ListTasksRequest()).tasks}:
                stub.DeleteTask(pb.DeleteTaskRequest(name="b"))

            assert stub.DeleteTask(pb.DeleteTaskRequest(name="a")).freed_components
            assert stub.Restore(pb.RestoreRequest(src_dir=str(snap))).num_tasks == 1
            chunks = (pb.SnapshotChunk(data=archive[i : i + 65536]) for i in range(0, len(archive), 65536))
            assert list(stub.StreamRestore(chunks).tasks) == ["a"]
            again = stub.Predict(pb.PredictRequest(task="a", images=images, top_k=2))
            assert again == pred
    finally:
        app.stop(0)
