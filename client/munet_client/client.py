"""A typed Python client for munet-server. Needs grpcio and protobuf only (no torch).

with MunetClient("127.0.0.1:50051", token="...") as c:
    op = c.add_task_from_folder("flowers", "data/flowers")
    c.wait(op.name)
    c.predict("flowers", [open("rose.jpg", "rb").read()], top_k=3)
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from munet_client.errors import MunetError
from munet_client.images import ImageFolder
from munet_client.types import (
    Label,
    Operation,
    RestoreInfo,
    SnapshotInfo,
    SystemInfo,
    TaskInfo,
    Verification,
)
from munet_proto.v1 import munet_pb2 as pb
from munet_proto.v1 import munet_pb2_grpc as pb_grpc

EXPORT_FILES = ("model.onnx", "model.safetensors", "model.json")
DEFAULT_PORT = 50051


def normalize_target(target: str) -> str:
    """host[:port] -> host:port, with munet-server's port when none is given (gRPC itself would use
    443); a port outside 1-65535 is refused rather than wrapped. gRPC URIs (dns:, unix:, ipv4:...)
    pass through unchanged."""
    t = target.strip()
    if not t:
        raise ValueError("the target is empty; give host:port, e.g. 127.0.0.1:50051")
    if "://" in t or t.startswith(("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")):
        return t  # a gRPC URI such as unix:/run/munet.sock
    if t.startswith("["):  # [IPv6]:port
        host, _, rest = t[1:].partition("]")
        port = rest.removeprefix(":")
        host = f"[{host}]"
    elif t.count(":") > 1:  # a bare IPv6 address
        host, port = f"[{t}]", ""
    else:
        host, _, port = t.partition(":")
    if not port:
        return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} in target {target!r} is not a port number (1-65535)")
    return f"{host}:{int(port)}"

POLL_S = 1.0  # how often to poll an operation when the server refuses another long-lived call
SERVICE = pb.DESCRIPTOR.services_by_name["Munet"].full_name  # munet.v1.Munet
UploadCallback = Callable[[int, int], None]  # (bytes sent, total bytes)
CHUNK_BYTES = 2 << 20  # examples per AddTask message are grouped up to about this size
PREDICT_CHUNK = 256  # images per Predict call (the server's default limit)


class MunetClient:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        timeout: float = 60.0,
        tls_ca: Path | str | None = None,
        tls_server_name: str = "",
        max_message_mb: int = 64,
    ) -> None:
        """`tls_server_name`: the name the server's certificate is for, when it differs from the
        target's host (e.g. a health check on 127.0.0.1 of a server whose certificate names its DNS name)."""
        self.target = target = normalize_target(target)
        self.timeout = timeout
        token = token if token is not None else os.environ.get("MUNET_TOKEN", "")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", max_message_mb << 20),
            ("grpc.max_send_message_length", max_message_mb << 20),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.MunetStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> MunetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Callable, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise MunetError.from_rpc(e) from None

    # ---- system --------------------------------------------------------------------------------
    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING / SERVICE_UNKNOWN; `service` may be a task name."""
        name = (
            f"{SERVICE}/{service}" if service and "/" not in service and "." not in service else service
        )
        try:
            r = self._health.Check(health_pb2.HealthCheckRequest(service=name), timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise MunetError.from_rpc(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def system(self) -> SystemInfo:
        return SystemInfo.from_pb(self._call(self.stub.GetSystem, pb.GetSystemRequest()))

    # ---- AddTask -------------------------------------------------------------------------------
    def add_task(
        self,
        name: str,
        class_names: list[str],
        examples: Iterable[tuple[bytes, int]],
        *,
        budget: dict[str, int] | None = None,
        scale_factor: float | None = None,
        validation_fraction: float | None = None,
        seed: int | None = None,
        policy: str = "",
        learned_mu: bool = False,
        on_upload: UploadCallback | None = None,
        total_bytes: int = 0,
    ) -> Operation:
        """Upload a labelled dataset and start evolving a path for it; returns the operation."""
        spec = pb.TaskSpec(
            name=name,
            class_names=class_names,
            budget=pb.SearchBudget(**(budget or {})),
            policy=policy,
            learned_mu=learned_mu,
        )
        if scale_factor is not None:
            spec.scale_factor = scale_factor
        if validation_fraction is not None:
            spec.validation_fraction = validation_fraction
        if seed is not None:
            spec.seed = seed

        def messages() -> Iterator[pb.AddTaskRequest]:
            yield pb.AddTaskRequest(spec=spec)
            batch, size, sent = [], 0, 0
            for image, label in examples:
                batch.append(pb.Example(image=image, label=label))
                size += len(image)
                if size >= CHUNK_BYTES:
                    yield pb.AddTaskRequest(examples=pb.ExampleBatch(examples=batch))
                    sent += size
                    if on_upload:
                        on_upload(sent, total_bytes)
                    batch, size = [], 0
            if batch:
                yield pb.AddTaskRequest(examples=pb.ExampleBatch(examples=batch))
                if on_upload:
                    on_upload(sent + size, total_bytes)

        return Operation.from_pb(self._call(self.stub.AddTask, messages(), timeout=max(self.timeout, 3600)))

    def add_task_from_folder(
        self, name: str, folder: Path | str, on_upload: UploadCallback | None = None, **kwargs: Any
    ) -> Operation:
        """ImageFolder tree in: class names are the sub-folder names, sorted."""
        tree = ImageFolder.scan(folder)
        return self.add_task(
            name, tree.class_names, tree.examples(), on_upload=on_upload, total_bytes=tree.num_bytes, **kwargs
        )

    # ---- operations ----------------------------------------------------------------------------
    def operation(self, name: str) -> Operation:
        return Operation.from_pb(self._call(self.stub.GetOperation, pb.GetOperationRequest(name=name)))

    def operations(self, task: str = "") -> list[Operation]:
        """Every operation (of `task`), oldest first, page by page."""
        out: list[Operation] = []
        token = ""
        while True:
            r = self._call(self.stub.ListOperations, pb.ListOperationsRequest(task=task, page_token=token))
            out += [Operation.from_pb(o) for o in r.operations]
            token = r.next_page_token
            if not token:
                return out

    def cancel(self, name: str) -> Operation:
        return Operation.from_pb(self._call(self.stub.CancelOperation, pb.CancelOperationRequest(name=name)))

    def wait(self, name: str, timeout: float | None = None) -> Operation:
        """Block until the operation is done (or `timeout` seconds pass); returns its last state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else min(30.0, max(0.0, deadline - time.monotonic()))
            req = pb.WaitOperationRequest(name=name, timeout_seconds=max(left, 0.001))
            try:
                op = Operation.from_pb(self._call(self.stub.WaitOperation, req, timeout=left + 10))
            except MunetError as e:
                if e.code != "RESOURCE_EXHAUSTED":  # the server's long-call slots are full: poll
                    raise
                op = self.operation(name)
                if not op.done:
                    time.sleep(min(POLL_S, left))
            if op.done or (deadline is not None and time.monotonic() >= deadline):
                return op

    def watch(self, name: str) -> Iterator[Operation]:
        """Every change of the operation until it is done (polled when the server has no stream
        to spare)."""
        try:
            for m in self.stub.WatchOperation(
                pb.WatchOperationRequest(name=name), timeout=None, metadata=self._metadata
            ):
                yield Operation.from_pb(m)
            return
        except grpc.RpcError as e:
            err = MunetError.from_rpc(e)
            if err.code != "RESOURCE_EXHAUSTED":
                raise err from None
        last = None
        while True:
            op = self.operation(name)
            if op != last:
                yield op
                last = op
            if op.done:
                return
            time.sleep(POLL_S)

    # ---- Predict -------------------------------------------------------------------------------
    def predict(
        self, task: str, images: list[bytes | str | Path], top_k: int = 1, version: int = 0
    ) -> list[list[Label]]:
        """Encoded images (bytes) or paths to image files -> top-k labels per image. `version` (or a
        task named "task@2") pins a stored version; 0 is the one the task serves."""
        data = [Path(i).read_bytes() if isinstance(i, (str, Path)) else bytes(i) for i in images]
        out: list[list[Label]] = []
        for i in range(0, max(len(data), 1), PREDICT_CHUNK):  # an empty list still asks (and fails)
            req = pb.PredictRequest(task=task, images=data[i : i + PREDICT_CHUNK], top_k=top_k, version=version)
            r = self._call(self.stub.Predict, req)
            out.extend([Label(lb.name, lb.index, lb.probability) for lb in p.labels] for p in r.predictions)
        return out

    def predict_many(
        self, tasks: list[str], images: list[bytes | str | Path], top_k: int = 1
    ) -> dict[str, list[list[Label]]]:
        """The same images for several tasks in one call (their shared layers run once):
        task -> top-k labels per image. `top_k` is capped at each task's number of classes."""
        data = [Path(i).read_bytes() if isinstance(i, (str, Path)) else bytes(i) for i in images]
        out: dict[str, list[list[Label]]] = {t: [] for t in tasks}
        for i in range(0, max(len(data), 1), PREDICT_CHUNK):
            req = pb.PredictManyRequest(tasks=tasks, images=data[i : i + PREDICT_CHUNK], top_k=top_k)
            for r in self._call(self.stub.PredictMany, req).results:
                out[r.task].extend(
                    [Label(lb.name, lb.index, lb.probability) for lb in p.labels] for p in r.predictions
                )
        return out

    def predict_raw(self, task: str, pixels: list[Any], top_k: int = 1) -> list[list[Label]]:
        """uint8 arrays (H, W) or (H, W, 3) (numpy or anything with .shape and .tobytes())."""
        raws = []
        for a in pixels:
            h, w = a.shape[:2]
            c = a.shape[2] if len(a.shape) == 3 else 1
            raws.append(pb.RawImage(height=h, width=w, channels=c, data=a.tobytes()))
        r = self._call(self.stub.Predict, pb.PredictRequest(task=task, raw_images=raws, top_k=top_k))
        return [[Label(lb.name, lb.index, lb.probability) for lb in p.labels] for p in r.predictions]

    # ---- tasks ---------------------------------------------------------------------------------
    def list_tasks(self) -> list[TaskInfo]:
        """Every task by name, page by page; components carry sharer counts (describe_task names them)."""
        out: list[TaskInfo] = []
        token = ""
        while True:
            r = self._call(self.stub.ListTasks, pb.ListTasksRequest(page_token=token))
            out += [TaskInfo.from_pb(t) for t in r.tasks]
            token = r.next_page_token
            if not token:
                return out

    def describe_task(self, name: str) -> TaskInfo:
        return TaskInfo.from_pb(self._call(self.stub.DescribeTask, pb.DescribeTaskRequest(name=name)))

    def delete_task(self, name: str) -> tuple[list[str], int]:
        r = self._call(self.stub.DeleteTask, pb.DeleteTaskRequest(name=name))
        return list(r.freed_components), r.params_freed

    # ---- a task's later life --------------------------------------------------------------------
    def improve_task(self, name: str, *, budget: dict[str, Any] | None = None, seed: int | None = None) -> Operation:
        """Search again for a committed task on its stored images (muNet's next task iteration); the
        operation publishes a new version only if it beats the served one (see Operation.result)."""
        req = pb.ImproveTaskRequest(name=name, budget=pb.SearchBudget(**(budget or {})))
        if seed is not None:
            req.seed = seed
        return Operation.from_pb(self._call(self.stub.ImproveTask, req))

    def set_task_version(self, name: str, version: int) -> TaskInfo:
        """Serve a stored version of the task from now on (a rollback, or forward again)."""
        req = pb.SetTaskVersionRequest(name=name, version=version)
        return TaskInfo.from_pb(self._call(self.stub.SetTaskVersion, req))

    def delete_task_version(self, name: str, version: int) -> tuple[list[str], int]:
        """Delete a version the task does not serve: (freed component ids, parameters freed)."""
        r = self._call(self.stub.DeleteTaskVersion, pb.DeleteTaskVersionRequest(name=name, version=version))
        return list(r.freed_components), r.params_freed

    def verify_task(self, name: str) -> Verification:
        """Recompute the task's outputs on its stored probe images: bit-identical to its commit or not."""
        r = self._call(self.stub.VerifyTask, pb.VerifyTaskRequest(name=name), timeout=max(self.timeout, 300))
        return Verification(r.name, r.identical, r.golden_digest, r.digest, r.probe_images)

    def export_task(self, name: str, out_dir: Path | str, *, overwrite: bool = False) -> dict[str, int]:
        """Write a standalone copy of the task into `out_dir`: model.onnx (onnxruntime, any language),
        model.safetensors + model.json (`munet_client.load_exported`). Each file is checked against
        the SHA-256 the server sent before it replaces anything. Returns {file: bytes}."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if not overwrite and (taken := [f for f in EXPORT_FILES if (out / f).exists()]):
            raise FileExistsError(f"{out} already holds {', '.join(taken)}; choose another folder or overwrite")
        parts: dict[str, Path] = {}
        files: dict[str, Any] = {}  # open .part files
        digests: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        try:
            call = self.stub.ExportTask(
                pb.ExportTaskRequest(name=name), timeout=max(self.timeout, 600), metadata=self._metadata
            )
            for chunk in call:
                if chunk.file not in EXPORT_FILES:
                    raise MunetError("INTERNAL", f"the server sent an unexpected file {chunk.file!r}")
                if chunk.file not in files:
                    parts[chunk.file] = out / f".{chunk.file}.part"
                    files[chunk.file] = open(parts[chunk.file], "wb")  # noqa: SIM115 - closed below
                    digests[chunk.file] = hashlib.sha256()
                    sizes[chunk.file] = 0
                files[chunk.file].write(chunk.data)
                digests[chunk.file].update(chunk.data)
                sizes[chunk.file] += len(chunk.data)
                if chunk.last:
                    files.pop(chunk.file).close()
                    if digests[chunk.file].hexdigest() != chunk.sha256 or sizes[chunk.file] != chunk.size:
                        raise MunetError("DATA_LOSS", f"{chunk.file} arrived damaged (checksum mismatch)")
            if set(sizes) != set(EXPORT_FILES) or files:
                raise MunetError("DATA_LOSS", "the export stream ended before every file was complete")
            for name_, part in parts.items():
                os.replace(part, out / name_)
        except grpc.RpcError as e:
            raise MunetError.from_rpc(e) from None
        finally:
            for f in files.values():
                f.close()
            for part in parts.values():
                part.unlink(missing_ok=True)
        return sizes

    # ---- snapshot / restore --------------------------------------------------------------------
    def snapshot(
        self,
        dest_file: Path | str | None = None,
        *,
        server_dir: str = "",
        on_chunk: UploadCallback | None = None,
    ) -> SnapshotInfo:
        """To a local tar file (streamed), or to a directory on the server (`server_dir`)."""
        if server_dir:
            r = self._call(
                self.stub.Snapshot, pb.SnapshotRequest(dest_dir=server_dir), timeout=max(self.timeout, 600)
            )
            return SnapshotInfo(r.path, r.manifest_sha256, r.num_files, r.num_bytes, r.num_tasks)
        if dest_file is None:
            raise ValueError("give dest_file (a local archive) or server_dir")
        dest = Path(dest_file)
        if dest.exists():
            raise FileExistsError(f"{dest} exists; choose a new file name")
        tmp = dest.with_name(f".{dest.name}.part")
        n = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in self.stub.StreamSnapshot(
                    pb.StreamSnapshotRequest(), timeout=max(self.timeout, 3600), metadata=self._metadata
                ):
                    f.write(chunk.data)
                    n += len(chunk.data)
                    if on_chunk:
                        on_chunk(n, 0)
            os.replace(tmp, dest)
        except grpc.RpcError as e:
            tmp.unlink(missing_ok=True)
            raise MunetError.from_rpc(e) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SnapshotInfo(str(dest), "", 0, n, 0)

    def restore(
        self,
        src_file: Path | str | None = None,
        *,
        server_dir: str = "",
        on_chunk: UploadCallback | None = None,
    ) -> RestoreInfo:
        """Replace the server's whole system with a snapshot (local tar file, or server-side dir)."""
        if server_dir:
            r = self._call(
                self.stub.Restore, pb.RestoreRequest(src_dir=server_dir), timeout=max(self.timeout, 600)
            )
        else:
            if src_file is None:
                raise ValueError("give src_file (a local archive) or server_dir")
            path = Path(src_file)
            total = path.stat().st_size

            def chunks() -> Iterator[pb.SnapshotChunk]:
                sent = 0
                with open(path, "rb") as f:
                    while block := f.read(1 << 20):
                        sent += len(block)
                        if on_chunk:
                            on_chunk(sent, total)
                        yield pb.SnapshotChunk(data=block)

            r = self._call(self.stub.StreamRestore, chunks(), timeout=max(self.timeout, 3600))
        return RestoreInfo(r.num_tasks, r.manifest_sha256, list(r.tasks))
