"""HTTP/REST beside gRPC: the Open Inference Protocol (KServe v2) for serving, and `/munet/v1` routes
for what OIP lacks (tasks, operations, adding a task from a zipped ImageFolder, snapshot download).

Same process, same engine and same answers as gRPC: `infer` goes through the same Predictor (and its
dynamic batcher) as `Predict`; task and operation bodies are the proto3 JSON mapping of the gRPC
messages; the same tokens protect the same calls; errors keep their meaning (an HTTP status mapped
from the gRPC code, and `{"error": message, "code": "NOT_FOUND"}`).

OIP infer request, images as BYTES (base64 strings in JSON):
    {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["iVBOR...", "..."]}],
     "parameters": {"top_k": 3}}
or raw pixels as UINT8 with shape [N, H, W, C]. The response holds `label` (BYTES), `probability`
(FP32) and `index` (INT64), each of shape [N, top_k], most probable first.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

import grpc
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from google.protobuf.json_format import MessageToDict

from munet_client.graph import system_svg
from munet_client.images import IMAGE_SUFFIXES, SPLIT_NAMES, skipped
from munet_client.types import TaskInfo
from munet_server import __version__, tokens
from munet_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    MunetError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from munet_server.rest.dashboard import PAGE
from munet_server.rest.limits import BodyLimit
from munet_server.rpc import convert
from munet_server.serve.predictor import RawPixels
from munet_server.service import MunetService
from munet_server.spec import AddTaskSpec

# gRPC status -> HTTP status: the same error meaning through either door.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def _json(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


def create_app(
    service: MunetService, admin_token: str = "", predict_token: str = "", read_only: str = ""
) -> FastAPI:
    """`read_only`: why changes are refused (a replica's source), or empty on a primary."""
    app = FastAPI(
        title="munet-server",
        version=__version__,
        description=__doc__,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN; /docs below serves it from the package
        redoc_url=None,
    )
    _mount_docs(app)
    message_limit = service.config.max_message_mb << 20
    upload_limit = service.config.upload.max_bytes + (1 << 20)  # the zip plus multipart framing

    def limit_for(method: str, path: str) -> int:
        return upload_limit if method == "POST" and path.startswith("/munet/v1/tasks/") else message_limit

    app.add_middleware(BodyLimit, limit_for=limit_for)

    @app.exception_handler(MunetError)
    async def munet_error(request: Request, e: MunetError) -> JSONResponse:
        return JSONResponse({"error": e.message, "code": e.code.name}, status_code=HTTP_STATUS.get(e.code, 500))

    def guard(admin_call: bool) -> Callable[[Request], None]:
        def check(request: Request) -> None:
            need = tokens.accepted(admin_token, predict_token, admin_call)
            if not need:
                return
            token = tokens.from_header(request.headers.get("authorization"))
            route = f"{request.method} {request.url.path}"
            if token is None:
                raise Unauthenticated(f"{route} needs a token: send 'Authorization: Bearer <token>'")
            if not tokens.matches(token, need):
                kind = "admin" if admin_call and admin_token else "predict"
                raise PermissionDenied(f"the token is not valid for {route} (needs the {kind} token)")

        return check

    def writable(request: Request) -> None:
        if read_only:
            raise FailedPrecondition(
                f"this server is a read-only replica ({read_only}); send {request.method} {request.url.path} to the primary"
            )

    predict_auth, admin_auth, change = Depends(guard(False)), Depends(guard(True)), Depends(writable)

    # ---- Open Inference Protocol -----------------------------------------------------------------
    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> JSONResponse:
        ok = service.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", dependencies=[predict_auth])
    def server_metadata() -> dict[str, Any]:
        return {"name": "munet-server", "version": __version__, "extensions": ["munet"]}

    @app.get("/v2/models", dependencies=[predict_auth])
    def models() -> dict[str, Any]:
        """Every task (a munet extension; OIP itself lists no models)."""
        s = service.system
        out = [{"name": n, "versions": _versions(n), "platform": "munet", "ready": True} for n in sorted(s.tasks)]
        out += [{"name": n, "versions": [], "platform": "munet", "ready": False} for n in sorted(s.damaged)]
        return {"models": sorted(out, key=lambda m: m["name"])}

    def _versions(task: str) -> list[str]:
        return [str(v.version) for v in service.system.versions(task)]

    @app.get("/v2/models/{task}", dependencies=[predict_auth])
    @app.get("/v2/models/{task}/versions/{version}", dependencies=[predict_auth])
    def model_metadata(task: str, version: str = "") -> dict[str, Any]:
        s = service.system
        e = s.entry(_ref(task, version))
        return {
            "name": task,
            "versions": _versions(task),
            "served_version": str(s.entry(task).record.version),
            "platform": "munet",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "probability", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "index", "datatype": "INT64", "shape": [-1, -1]},
            ],
            "parameters": {
                "labels": e.record.class_names,
                "image_size": int(e.path.hparams["ds_image_size"]),
                "max_images": service.config.max_predict_images,
            },
        }

    @app.get("/v2/models/{task}/ready", dependencies=[predict_auth])
    def model_ready(task: str) -> JSONResponse:
        s = service.system
        if task not in s.tasks and task not in s.damaged:
            raise NotFound(f"task {task!r} does not exist")
        ok = task in s.tasks
        return JSONResponse({"name": task, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{task}/infer", dependencies=[predict_auth])
    @app.post("/v2/models/{task}/versions/{version}/infer", dependencies=[predict_auth])
    def infer(task: str, body: dict[str, Any], version: str = "") -> dict[str, Any]:
        encoded, raw = _images(body)
        params = body.get("parameters") or {}
        top_k = params.get("top_k", 1)
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise InvalidArgument(f"parameters.top_k must be an integer, got {top_k!r}")
        ref = _ref(task, version)
        served = str(service.system.entry(ref).record.version)
        preds = service.predictor.predict(ref, encoded, raw, top_k)
        n, k = len(preds), len(preds[0]) if preds else 0
        out = {
            "model_name": task,
            "model_version": served,
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [n, k], "data": [s.name for r in preds for s in r]},
                {"name": "probability", "datatype": "FP32", "shape": [n, k], "data": [s.probability for r in preds for s in r]},
                {"name": "index", "datatype": "INT64", "shape": [n, k], "data": [s.index for r in preds for s in r]},
            ],
        }
        if "id" in body:
            out["id"] = body["id"]
        return out

    # ---- munet routes: what OIP lacks -------------------------------------------------------------
    @app.get("/munet/v1/system", dependencies=[predict_auth])
    def system() -> dict[str, Any]:
        s = service.system
        return {
            "version": __version__,
            "root_model": s.root.config.model_name,
            "device": str(s.device),
            "tasks": len(s.tasks),
            "components": len(s.pool),
            "params": sum(c.num_params for c in s.pool.values()),
            "residency": dataclasses.asdict(s.residency.stats()),  # --max-resident-mb: layers in memory and on disk
        }

    @app.get("/munet/v1/tasks", dependencies=[predict_auth])
    def tasks() -> dict[str, Any]:
        s = service.system
        return {"tasks": [_json(convert.task_info(s, n, sharers=False)) for n in sorted({*s.tasks, *s.damaged})]}

    @app.get("/munet/v1/tasks/{task}", dependencies=[predict_auth])
    def task(task: str) -> dict[str, Any]:
        return _json(convert.task_info(service.system, task))

    @app.get("/munet/v1/tasks/{task}/candidates", dependencies=[predict_auth])
    def candidates(task: str) -> dict[str, Any]:
        """Every candidate the task's search tried: what the dashboard plots."""
        keys = ("generation", "parent", "kind", "validation_accuracy", "score", "accepted", "params_added", "seconds")
        history = service.system.entry(task).record.metrics.get("history", [])
        return {"candidates": [{k: h.get(k) for k in keys} for h in history]}

    @app.get("/munet/v1/graph.svg", dependencies=[predict_auth])
    def graph() -> Response:
        """The system as a picture: the same SVG as `munet graph`."""
        s = service.system
        infos = [TaskInfo.from_pb(convert.task_info(s, n, sharers=False)) for n in sorted(s.tasks)]
        return Response(system_svg(infos, f"{s.root.config.model_name}: {len(infos)} tasks"), media_type="image/svg+xml")

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(PAGE)

    # A task's later life. Registered before POST /munet/v1/tasks/{task}, which would take "a:improve".
    @app.post("/munet/v1/tasks/{task}:improve", dependencies=[admin_auth, change], status_code=202)
    def improve(task: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Search again for a task with what later tasks added (muNet's next task iteration): the
        operation, at once (202); it publishes a new version only if that beats the served one.
        Body (optional): budget fields (seconds, generations, ...) and seed."""
        body = dict(body or {})
        seed = body.pop("seed", None)
        unknown = sorted(set(body) - set(convert.BUDGET_FIELDS))
        if unknown:
            raise InvalidArgument(f"unknown fields {unknown}; give budget fields ({', '.join(convert.BUDGET_FIELDS)}) or seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise InvalidArgument(f"seed must be an integer, got {seed!r}")
        return _json(convert.operation(service.improve_task(task, body, seed)))

    @app.get("/munet/v1/tasks/{task}/versions", dependencies=[predict_auth])
    def versions(task: str) -> dict[str, Any]:
        info = convert.task_info(service.system, task)
        return {"served_version": info.served_version, "versions": [_json(v) for v in info.versions]}

    @app.post("/munet/v1/tasks/{task}/versions/{version}:serve", dependencies=[admin_auth, change])
    def serve_version(task: str, version: int) -> dict[str, Any]:
        """Serve this stored version from now on (a rollback, or forward again)."""
        service.set_task_version(task, version)
        return _json(convert.task_info(service.system, task))

    @app.get("/munet/v1/tasks/{task}/export", dependencies=[admin_auth])
    def export(task: str, version: str = "") -> StreamingResponse:
        """The task (or its stored `version`) as a standalone model, what `munet export` writes: a tar
        of model.onnx, model.safetensors, model.json and their SHA256SUMS."""
        ref = _ref(task, version)
        chunks = service.export_archive(ref)  # written first: an unknown task is a 404, not a cut stream
        filename = ref.replace("@", "-v")
        return StreamingResponse(
            chunks,
            media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="{filename}.tar"'},
        )

    @app.delete("/munet/v1/tasks/{task}/versions/{version}", dependencies=[admin_auth, change])
    def delete_version(task: str, version: int) -> dict[str, Any]:
        d = service.delete_task_version(task, version)
        return {"freed_components": d.freed_components, "params_freed": d.params_freed}

    @app.delete("/munet/v1/tasks/{task}", dependencies=[admin_auth, change])
    def delete(task: str) -> dict[str, Any]:
        d = service.delete_task(task)
        return {"freed_components": d.freed_components, "params_freed": d.params_freed}

    @app.post("/munet/v1/tasks/{task}", dependencies=[admin_auth, change], status_code=202)
    def add_task(
        task: str,
        images: UploadFile = File(description="a zip of an ImageFolder tree: one folder per class"),  # noqa: B008
        seconds: float | None = Form(None),
        seed: int = Form(0),
    ) -> dict[str, Any]:
        """Upload a zipped ImageFolder and start learning it: the operation, at once (202)."""
        with tempfile.TemporaryFile() as spool:
            limit = service.config.upload.max_bytes
            size = 0
            while block := images.file.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise ResourceExhausted(f"the upload is over {limit:,} bytes, the limit of one upload")
                spool.write(block)
            spool.seek(0)
            try:
                archive = zipfile.ZipFile(spool)
            except zipfile.BadZipFile:
                raise InvalidArgument(f"{images.filename or 'the upload'} is not a zip archive") from None
            with archive:
                class_names, members = _image_folder(archive)
                budget = service.config.default_budget
                if seconds is not None:
                    budget = dataclasses.replace(budget, seconds=seconds)
                spec = AddTaskSpec(name=task, class_names=class_names, budget=budget, seed=seed)
                examples = ((archive.read(m), label) for m, label in members)
                job = service.add_task(spec, examples, alive=lambda: True)
        return _json(convert.operation(job))

    @app.get("/munet/v1/operations", dependencies=[predict_auth])
    def operations(task: str = "") -> dict[str, Any]:
        return {"operations": [_json(convert.operation(j)) for j in service.operations.list(task=task, state="")]}

    @app.get("/munet/v1/operations/{name}", dependencies=[predict_auth])
    def operation(name: str) -> dict[str, Any]:
        return _json(convert.operation(service.operations.get(name)))

    @app.post("/munet/v1/operations/{name}:cancel", dependencies=[admin_auth, change])
    def cancel(name: str) -> dict[str, Any]:
        return _json(convert.operation(service.operations.cancel(name)))

    @app.get("/munet/v1/snapshot", dependencies=[admin_auth])
    def snapshot() -> StreamingResponse:
        """The whole system as a tar archive (what `munet snapshot FILE` writes)."""
        chunks: Iterator[bytes] = service.stream_snapshot()
        return StreamingResponse(
            chunks,
            media_type="application/x-tar",
            headers={"Content-Disposition": 'attachment; filename="munet-snapshot.tar"'},
        )

    return app


def _ref(task: str, version: str) -> str:
    """An OIP model name and version ("" or a number) -> the engine's "task" or "task@N"."""
    if not version:
        return task
    if not version.isdigit() or int(version) < 1:
        raise InvalidArgument(f"model version {version!r} must be a number from 1")
    return f"{task}@{int(version)}"


def _mount_docs(app: FastAPI) -> None:
    """The OpenAPI page at /docs, with Swagger UI's files from the swagger-ui-bundle package (offline)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="munet-server API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )


def _images(body: dict[str, Any]) -> tuple[list[bytes], list[RawPixels]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument('give one input: {"name": "image", "datatype": "BYTES", "shape": [N], "data": [...]}')
    t = inputs[0]
    dtype, data, shape = t.get("datatype"), t.get("data"), t.get("shape")
    if not isinstance(data, list) or not isinstance(shape, list):
        raise InvalidArgument("the input needs `shape` and `data` lists")
    if dtype == "BYTES":
        if shape != [len(data)]:
            raise InvalidArgument(f"a BYTES input of {len(data)} images has shape [{len(data)}], not {shape}")
        out = []
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise InvalidArgument(f"image {i}: BYTES data in JSON are base64 strings")
            try:
                out.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"image {i}: not valid base64") from None
        return out, []
    if dtype == "UINT8":
        if len(shape) != 4 or shape[3] not in (1, 3, 4) or any(not isinstance(d, int) or d <= 0 for d in shape):
            raise InvalidArgument(f"a UINT8 input has shape [N, H, W, C] with C in 1, 3, 4; got {shape}")
        n, h, w, c = shape
        if len(data) != n * h * w * c:
            raise InvalidArgument(f"shape {shape} needs {n * h * w * c} values; got {len(data)}")
        try:
            flat = bytes(data)
        except (TypeError, ValueError):
            raise InvalidArgument("UINT8 data must be integers in [0, 255]") from None
        step = h * w * c
        return [], [RawPixels(h, w, c, flat[i * step : (i + 1) * step]) for i in range(n)]
    raise InvalidArgument(f"datatype {dtype!r}: send encoded images as BYTES (base64) or pixels as UINT8")


def _image_folder(archive: zipfile.ZipFile) -> tuple[list[str], list[tuple[str, int]]]:
    """A zipped ImageFolder: class folders (under at most one wrapping folder), images inside; hidden
    files and __MACOSX skipped. (class names, [(member, label)])."""
    files = []
    for info in archive.infolist():
        p = PurePosixPath(info.filename)
        if info.is_dir() or any(map(skipped, p.parts)):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
    tops = {p.parts[0] for p in files if len(p.parts) > 1}
    strip = 1 if len(tops) == 1 and all(len(p.parts) > 2 for p in files) else 0  # one wrapping folder
    by_class: dict[str, list[str]] = {}
    for p in files:
        parts = p.parts[strip:]
        if len(parts) < 2:
            raise InvalidArgument(f"{p} is not inside a class folder; zip one folder per class")
        by_class.setdefault(parts[0], []).append(str(p))
    if len(by_class) < 2:
        raise InvalidArgument(f"the zip has {len(by_class)} class folders with images; a task needs at least 2")
    names = sorted(by_class)
    if set(names) <= SPLIT_NAMES:
        raise InvalidArgument(
            f"the zip holds the splits {', '.join(names)}, not class folders; zip the train/ folder alone"
        )
    members = [(m, label) for label, n in enumerate(names) for m in sorted(by_class[n])]
    return names, members

