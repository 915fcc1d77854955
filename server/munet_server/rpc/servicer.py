"""The gRPC transport: thin handlers that convert protobuf, call the service, and map errors to statuses."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from munet_proto.v1 import munet_pb2 as pb
from munet_proto.v1 import munet_pb2_grpc as pb_grpc
from munet_server.errors import InvalidArgument, MunetError, disk_full
from munet_server.rpc import convert, paging
from munet_server.rpc.streams import CallSlots, idle_guarded
from munet_server.service import MunetService

if TYPE_CHECKING:
    from munet_server.system import MunetSystem

log = logging.getLogger(__name__)
NO_DEADLINE_S = 365 * 24 * 3600.0  # grpc reports "no deadline" as ~9e18 s remaining


def time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds until the caller's deadline, or None when it set none (grpcurl, grpc-js and plain
    generated stubs send no deadline by default: normal, not an error)."""
    left = context.time_remaining()
    if left is None or left > NO_DEADLINE_S:
        return None
    return max(0.0, left)


def _fail(context: grpc.ServicerContext, method: str, e: BaseException) -> None:
    if isinstance(e, MunetError):
        context.abort(e.code, e.message)
    incident = uuid.uuid4().hex[:8]
    log.exception("%s failed (incident %s)", method, incident)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(e).__name__}); incident {incident} in the server log",
    )


def _client_gone(context: grpc.ServicerContext, method: str, e: BaseException) -> bool:
    """A client that cancels or disconnects mid-call (its upload's iterator then raises) is normal:
    logged at INFO, no incident; gRPC has already ended the call."""
    if context.is_active() and not isinstance(e, grpc.RpcError):
        return False
    log.info("%s: the client went away mid-call (%s)", method, type(e).__name__)
    return True


def _classify(
    service: MunetService, context: grpc.ServicerContext, method: str, e: Exception
) -> tuple[str, BaseException | None]:
    """The status code to count for a failed call, and the error to answer with (None: re-raise,
    the call already has its status or the client is gone)."""
    if isinstance(e, MunetError):
        return e.code.name, e
    if context.code() is not None:  # context.abort() raised: already a status
        return "ABORTED_BY_HANDLER", None
    if _client_gone(context, method, e):
        return "CANCELLED", None
    full = disk_full(e, service.config.store)
    return ("RESOURCE_EXHAUSTED", full) if full else ("INTERNAL", e)


def unary(fn: Callable) -> Callable:
    """Map engine errors to precise statuses; count and time every call."""

    @functools.wraps(fn)
    def wrapper(self: MunetServicer, request: Any, context: grpc.ServicerContext) -> Any:
        t0, code = time.perf_counter(), "OK"
        try:
            return fn(self, request, context)
        except Exception as e:
            code, answer = _classify(self.service, context, fn.__name__, e)
            if answer is None:
                raise
            _fail(context, fn.__name__, answer)
        finally:
            self.service.metrics.requests.labels(fn.__name__, code).inc()
            self.service.metrics.rpc_latency.labels(fn.__name__).observe(time.perf_counter() - t0)

    return wrapper


def streaming(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self: MunetServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        code = "OK"
        try:
            yield from fn(self, request, context)
        except Exception as e:
            code, answer = _classify(self.service, context, fn.__name__, e)
            if answer is None:
                raise
            _fail(context, fn.__name__, answer)
        finally:
            self.service.metrics.requests.labels(fn.__name__, code).inc()

    return wrapper


class MunetServicer(pb_grpc.MunetServicer):
    def __init__(self, service: MunetService) -> None:
        self.service = service
        self.long_calls = CallSlots(service.config.max_long_calls)
        self.idle_s = service.config.upload.idle_seconds

    @property
    def system(self) -> MunetSystem:  # the live one: Restore replaces it
        return self.service.system

    # ---- system --------------------------------------------------------------------------------
    @unary
    def GetSystem(self, request: pb.GetSystemRequest, context: grpc.ServicerContext) -> pb.SystemInfo:
        s = self.system
        cfg = s.root.config
        from munet_server import __version__

        return pb.SystemInfo(
            version=__version__,
            root_model=cfg.model_name,
            root_weights=cfg.weights,
            root_weights_sha256=s.root.weights_sha256,
            family=s.root.family,
            root_params=s.arch.root_param_count(),
            num_blocks=s.arch.num_blocks,
            device=str(s.device),
            num_tasks=len(s.tasks),
            total_params=sum(c.num_params for c in s.pool.values()),
            min_image_size=cfg.min_image_size,
            max_image_size=cfg.max_image_size,
            executor=self.service.config.executor,
        )

    # ---- AddTask -------------------------------------------------------------------------------
    @unary
    def AddTask(
        self, request_iterator: Iterator[pb.AddTaskRequest], context: grpc.ServicerContext
    ) -> pb.Operation:
        with self.long_calls.hold("AddTask"):
            messages = idle_guarded(request_iterator, self.idle_s, "an AddTask upload")
            first = next(messages, None)
            if first is None or first.WhichOneof("part") != "spec":
                raise InvalidArgument(
                    "the first AddTask message must carry the task spec (name, class names)"
                )
            spec = convert.task_spec(first.spec, self.service.config.default_budget)

            def examples() -> Iterator[tuple[bytes, int]]:
                for msg in messages:
                    if msg.WhichOneof("part") != "examples":
                        raise InvalidArgument(
                            "only the first AddTask message may carry a spec; send examples after it"
                        )
                    for ex in msg.examples.examples:
                        yield ex.image, ex.label

            op = self.service.add_task(spec, examples(), alive=context.is_active)
            return convert.operation(op)

    # ---- operations ----------------------------------------------------------------------------
    @unary
    def GetOperation(self, request: pb.GetOperationRequest, context: grpc.ServicerContext) -> pb.Operation:
        return convert.operation(self.service.operations.get(request.name))

    @unary
    def ListOperations(
        self, request: pb.ListOperationsRequest, context: grpc.ServicerContext
    ) -> pb.ListOperationsResponse:
        state = pb.Operation.State.Name(request.state) if request.state else ""
        ops = self.service.operations.list(task=request.task, state=state)  # oldest first
        page, token = paging.page(
            ops, key=lambda j: f"{j.created_at!r}/{j.id}", size=request.page_size, token=request.page_token
        )
        return pb.ListOperationsResponse(operations=[convert.operation(j) for j in page], next_page_token=token)

    @unary
    def WaitOperation(self, request: pb.WaitOperationRequest, context: grpc.ServicerContext) -> pb.Operation:
        if request.timeout_seconds < 0:
            raise InvalidArgument("timeout_seconds must be >= 0 (0 waits until done)")
        left = time_left(context)
        timeout = request.timeout_seconds or None
        if left is not None:  # answer just before the client's deadline rather than after it
            timeout = min(timeout or left, max(0.0, left - 0.2))
        with self.long_calls.hold("WaitOperation"):
            op = self.service.operations.wait(request.name, timeout, alive=context.is_active)
        return convert.operation(op)

    @unary
    def CancelOperation(
        self, request: pb.CancelOperationRequest, context: grpc.ServicerContext
    ) -> pb.Operation:
        return convert.operation(self.service.operations.cancel(request.name))

    @streaming
    def WatchOperation(
        self, request: pb.WatchOperationRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Operation]:
        with self.long_calls.hold("WatchOperation"):
            for op in self.service.operations.watch(request.name, alive=context.is_active):
                yield convert.operation(op)

    # ---- Predict -------------------------------------------------------------------------------
    @unary
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        if not request.task:
            raise InvalidArgument("name the task to predict with (PredictRequest.task)")
        prediction = self.service.predict(
            convert.task_ref(request.task, request.version),
            list(request.images),
            convert.raw_pixels(request.raw_images),
            timeout=time_left(context),
            on_abandon=context.add_callback,
            top_k=request.top_k,
        )
        preds = prediction.ranked(request.top_k)
        return convert.predict_response(request.task, preds)

    @unary
    def PredictMany(
        self, request: pb.PredictManyRequest, context: grpc.ServicerContext
    ) -> pb.PredictManyResponse:
        t0 = time.perf_counter()
        tasks = list(request.tasks)
        raw = convert.raw_pixels(request.raw_images)
        preds = self.service.predictor.predict_many(
            tasks,
            list(request.images),
            raw,
            request.top_k,
            timeout=time_left(context),
            on_abandon=context.add_callback,
        )
        seconds = time.perf_counter() - t0
        for t in tasks:  # each task answered every image in the time of the whole call
            self.service.metrics.observe_predict(t, self.system.entry(t).record.version, len(preds[t]), seconds)
        return pb.PredictManyResponse(results=[convert.predict_response(t, preds[t]) for t in tasks])

    # ---- tasks ---------------------------------------------------------------------------------
    @unary
    def ListTasks(self, request: pb.ListTasksRequest, context: grpc.ServicerContext) -> pb.ListTasksResponse:
        s = self.system
        names = sorted({*s.tasks, *s.damaged})
        page, token = paging.page(names, key=str, size=request.page_size, token=request.page_token)
        improving = self.service.operations.improving()
        infos = [convert.task_info(s, n, sharers=False, improving=n in improving) for n in page]
        return pb.ListTasksResponse(tasks=infos, next_page_token=token)

    @unary
    def DescribeTask(self, request: pb.DescribeTaskRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        improving = request.name.split("@")[0] in self.service.operations.improving()
        return convert.task_info(self.system, request.name, improving=improving)

    @unary
    def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> pb.DeleteTaskResponse:
        d = self.service.delete_task(request.name)
        return pb.DeleteTaskResponse(freed_components=d.freed_components, params_freed=d.params_freed)

    @unary
    def VerifyTask(self, request: pb.VerifyTaskRequest, context: grpc.ServicerContext) -> pb.VerifyTaskResponse:
        golden = self.system.entry(request.name).record.golden_digest  # "task@2": that version's
        digest, n = self.system.digest_now(request.name)
        return pb.VerifyTaskResponse(
            name=request.name, identical=digest == golden, golden_digest=golden, digest=digest, probe_images=n
        )

    @streaming
    def ExportTask(self, request: pb.ExportTaskRequest, context: grpc.ServicerContext) -> Iterator[pb.ExportChunk]:
        with self.long_calls.hold("ExportTask"):
            for p in self.service.export_task(request.name):
                yield pb.ExportChunk(file=p.file, data=p.data, last=p.last, sha256=p.sha256, size=p.size)

    # ---- ImproveTask and versions ----------------------------------------------------------------
    @unary
    def ImproveTask(self, request: pb.ImproveTaskRequest, context: grpc.ServicerContext) -> pb.Operation:
        budget = convert.budget_overrides(request.budget)
        seed = request.seed if request.HasField("seed") else None
        return convert.operation(self.service.improve_task(request.name, budget, seed))

    @unary
    def SetTaskVersion(self, request: pb.SetTaskVersionRequest, context: grpc.ServicerContext) -> pb.TaskInfo:
        self.service.set_task_version(request.name, request.version)
        return convert.task_info(self.system, request.name)

    @unary
    def DeleteTaskVersion(
        self, request: pb.DeleteTaskVersionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteTaskResponse:
        d = self.service.delete_task_version(request.name, request.version)
        return pb.DeleteTaskResponse(freed_components=d.freed_components, params_freed=d.params_freed)

    # ---- snapshot / restore --------------------------------------------------------------------
    @unary
    def Snapshot(self, request: pb.SnapshotRequest, context: grpc.ServicerContext) -> pb.SnapshotInfo:
        dest = self.service.server_path(request.dest_dir)
        with self.long_calls.hold("Snapshot"):
            manifest = self.service.snapshot_to(dest)
        return pb.SnapshotInfo(
            path=str(dest),
            manifest_sha256=manifest_digest(manifest),
            num_files=len(manifest["files"]),
            num_bytes=sum(f["size"] for f in manifest["files"].values()),
            num_tasks=len(manifest["tasks"]),
        )

    @streaming
    def StreamSnapshot(
        self, request: pb.StreamSnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotChunk]:
        with self.long_calls.hold("StreamSnapshot"):
            for chunk in self.service.stream_snapshot(chunk_size=1 << 20):
                yield pb.SnapshotChunk(data=chunk)

    @unary
    def Restore(self, request: pb.RestoreRequest, context: grpc.ServicerContext) -> pb.RestoreResponse:
        src = self.service.server_path(request.src_dir)
        with self.long_calls.hold("Restore"):
            manifest = self.service.restore_from_dir(src)
        return _restored(manifest)

    @unary
    def StreamRestore(
        self, request_iterator: Iterator[pb.SnapshotChunk], context: grpc.ServicerContext
    ) -> pb.RestoreResponse:
        with self.long_calls.hold("StreamRestore"):
            chunks = idle_guarded(request_iterator, self.idle_s, "a StreamRestore upload")
            manifest = self.service.restore_from_stream(m.data for m in chunks)
        return _restored(manifest)


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _restored(manifest: dict[str, Any]) -> pb.RestoreResponse:
    tasks = list(manifest.get("tasks", []))
    return pb.RestoreResponse(num_tasks=len(tasks), manifest_sha256=manifest_digest(manifest), tasks=tasks)
