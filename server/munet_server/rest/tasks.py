"""`/munet/v1` routes for tasks, what the Open Inference Protocol lacks: list, describe, add from a
zipped ImageFolder, improve, versions, export, delete, and the system as a picture. Bodies are the
proto3 JSON mapping of the gRPC messages."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from google.protobuf.json_format import MessageToDict
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from munet_client.graph import system_svg
from munet_client.types import TaskInfo
from munet_server import __version__
from munet_server.errors import InvalidArgument, ResourceExhausted
from munet_server.ingest.zipfolder import ZipFolder
from munet_server.oip.model import task_ref, version_number
from munet_server.rest.bodies import json_object, read_json
from munet_server.rest.context import admin_auth, predict_auth, service, writable
from munet_server.rpc import convert
from munet_server.service import MunetService
from munet_server.spec import AddTaskSpec
from munet_server.store.task_metrics import TaskMetrics

router = APIRouter(prefix="/munet/v1")
reader = [Depends(predict_auth)]
changer = [Depends(admin_auth), Depends(writable)]
SKIPPED_SHOWN = 20  # skipped file names listed in an upload's answer; the count is always given

ADD_TASK_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {"type": "string", "format": "binary", "description": "a zip of an ImageFolder tree: one folder per class"},
            "seconds": {"type": "number", "exclusiveMinimum": 0}, "seed": {"type": "integer"},
        },
    }}},
}  # fmt: skip


def as_json(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


@router.get("/system", dependencies=reader)
def system(svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    s = svc.system
    return {
        "version": __version__,
        "root_model": s.root.config.model_name,
        "device": str(s.device),
        "tasks": len(s.tasks),
        "components": len(s.pool),
        "params": sum(c.num_params for c in s.pool.values()),
        "residency": dataclasses.asdict(s.residency.stats()),  # --max-resident-mb: layers in memory and on disk
    }


@router.get("/improvement", dependencies=reader)
def improvement(svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    """Idle improvement: on or off, the tasks whose rounds run now, and the order of the tasks next in line."""
    return svc.improvement_queue()


@router.get("/tasks", dependencies=reader)
def tasks(svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    s = svc.system
    improving = svc.operations.improving()
    infos = [convert.task_info(s, n, sharers=False, improving=n in improving) for n in sorted({*s.tasks, *s.damaged})]
    return {"tasks": [as_json(i) for i in infos]}


@router.get("/tasks/{task}", dependencies=reader)
def task(task: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    return as_json(convert.task_info(svc.system, task, improving=task.split("@")[0] in svc.operations.improving()))


@router.get("/tasks/{task}/candidates", dependencies=reader)
def candidates(task: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    """Every candidate the task's search tried: what the dashboard plots."""
    keys = ("generation", "parent", "kind", "validation_accuracy", "score", "accepted", "params_added", "seconds")
    history = TaskMetrics.of(svc.system.entry(task).record).history
    return {"candidates": [{k: h.get(k) for k in keys} for h in history]}


@router.get("/graph.svg", dependencies=reader)
def graph(svc: MunetService = Depends(service)) -> Response:  # noqa: B008
    """The system as a picture: the same SVG as `munet graph`."""
    s = svc.system
    infos = [TaskInfo.from_pb(convert.task_info(s, n, sharers=False)) for n in sorted(s.tasks)]
    return Response(system_svg(infos, f"{s.root.config.model_name}: {len(infos)} tasks"), media_type="image/svg+xml")


# Registered before POST /tasks/{task}, which would take "a:improve".
@router.post("/tasks/{task}:improve", dependencies=changer, status_code=202)
async def improve(task: str, request: Request) -> dict[str, Any]:
    """Search again for a task with what later tasks added (muNet's next task iteration): the
    operation, at once (202); it publishes a new version only if that beats the served one.
    Body (optional): budget fields (seconds, generations, ...) and seed."""
    body = dict(json_object((await read_json(request, optional=True)) or {}, "the body"))
    seed = body.pop("seed", None)
    unknown = sorted(set(body) - set(convert.BUDGET_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown fields {unknown}; give budget fields ({', '.join(convert.BUDGET_FIELDS)}) or seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}")
    op = await run_in_threadpool(service(request).improve_task, task, body, seed)
    return as_json(convert.operation(op))


@router.get("/tasks/{task}/versions", dependencies=reader)
def versions(task: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    info = convert.task_info(svc.system, task)
    return {"served_version": info.served_version, "versions": [as_json(v) for v in info.versions]}


@router.post("/tasks/{task}/versions/{version}:serve", dependencies=changer)
def serve_version(task: str, version: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    """Serve this stored version from now on (a rollback, or forward again)."""
    svc.set_task_version(task, version_number(version))
    return as_json(convert.task_info(svc.system, task))


@router.get("/tasks/{task}/export", dependencies=[Depends(admin_auth)])
def export(task: str, version: str = "", svc: MunetService = Depends(service)) -> StreamingResponse:  # noqa: B008
    """The task (or its stored `version`) as a standalone model, what `munet export` writes: a tar
    of model.onnx, model.safetensors, model.json and their SHA256SUMS."""
    ref = task_ref(task, version)
    chunks = svc.export_archive(ref)  # written first: an unknown task is a 404, not a cut stream
    filename = ref.replace("@", "-v")
    return StreamingResponse(
        chunks, media_type="application/x-tar", headers={"Content-Disposition": f'attachment; filename="{filename}.tar"'}
    )


@router.delete("/tasks/{task}/versions/{version}", dependencies=changer)
def delete_version(task: str, version: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    d = svc.delete_task_version(task, version_number(version))
    return {"freed_components": d.freed_components, "params_freed": d.params_freed}


@router.delete("/tasks/{task}", dependencies=changer)
def delete(task: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    d = svc.delete_task(task)
    return {"freed_components": d.freed_components, "params_freed": d.params_freed}


@router.post("/tasks/{task}", dependencies=changer, status_code=202, openapi_extra={"requestBody": ADD_TASK_BODY})
async def add_task(task: str, request: Request) -> dict[str, Any]:
    """Upload a zipped ImageFolder and start learning it: the operation, at once (202). The answer
    lists the files that were not images (`skipped_files`, the first 20 of `skipped_count`)."""
    svc = service(request)
    form = await request.form(max_files=1, max_fields=8)  # the guards above ran before this read
    try:
        images = form.get("images")
        if not isinstance(images, UploadFile):
            raise InvalidArgument("the form needs a file field `images`: a zip of an ImageFolder (one folder per class)")
        seconds = _form_number(form.get("seconds"), "seconds", float)
        seed = _form_number(form.get("seed"), "seed", int)
        return await run_in_threadpool(_add_task, svc, task, images, seconds, seed)
    finally:
        await form.close()


def _form_number(value: Any, name: str, kind: type) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a form field, not a file")
    try:
        if not value.isascii():
            raise ValueError(value)
        number = kind(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value[:40]!r}") from None
    if kind is float and not 0 < number < float("inf"):
        raise InvalidArgument(f"seconds must be a positive number, got {value[:40]!r}")
    return number


def _add_task(svc: MunetService, task: str, images: UploadFile, seconds: float | None, seed: int | None) -> dict[str, Any]:
    limits = svc.config.upload
    size = images.file.seek(0, 2)  # the form parser spooled the file (to disk past 1 MiB): no second copy
    images.file.seek(0)
    if size > limits.max_bytes:
        raise ResourceExhausted(f"the upload is over {limits.max_bytes:,} bytes, the limit of one upload")
    with ZipFolder.open(images.file, images.filename or "", limits.max_image_bytes) as folder:
        budget = svc.config.default_budget
        if seconds is not None:
            budget = dataclasses.replace(budget, seconds=seconds)
        spec = AddTaskSpec(name=task, class_names=folder.class_names, budget=budget, seed=seed or 0)
        op = svc.add_task(spec, folder.examples(), alive=lambda: True)
        skipped = folder.skipped_files
    return {**as_json(convert.operation(op)), "skipped_files": skipped[:SKIPPED_SHOWN], "skipped_count": len(skipped)}
