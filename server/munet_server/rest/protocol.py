"""The Open Inference Protocol (KServe v2) over HTTP: health, server and model metadata, infer.

OIP infer request, images as BYTES (base64 strings in JSON):
    {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["iVBOR...", "..."]}],
     "parameters": {"top_k": 3}}
or raw pixels as UINT8 with shape [N, H, W, C], C 1 or 3. The response holds `label` (BYTES),
`probability` (FP32) and `index` (INT64), each of shape [N, top_k], most probable first; `infer`
goes through the same Predictor (and its dynamic batcher) as gRPC's Predict.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from munet_server import __version__
from munet_server.errors import InvalidArgument, NotFound
from munet_server.rest.bodies import json_object, read_json
from munet_server.rest.context import predict_auth, service
from munet_server.serve.predictor import RawPixels
from munet_server.service import MunetService

router = APIRouter()
guarded = [Depends(predict_auth)]

INFER_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "datatype": {"type": "string", "enum": ["BYTES", "UINT8"]},
                "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"}}}},
            "parameters": {"type": "object", "properties": {"top_k": {"type": "integer", "minimum": 1}}},
        },
    }}},
}  # fmt: skip


@router.get("/v2/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
def ready(svc: MunetService = Depends(service)) -> JSONResponse:  # noqa: B008
    ok = svc.ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/v2", dependencies=guarded)
def server_metadata() -> dict[str, Any]:
    return {"name": "munet-server", "version": __version__, "extensions": ["munet"]}


@router.get("/v2/models", dependencies=guarded)
def models(svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    """Every task (a munet extension; OIP itself lists no models)."""
    s = svc.system
    out = [{"name": n, "versions": _versions(svc, n), "platform": "munet", "ready": True} for n in sorted(s.tasks)]
    out += [{"name": n, "versions": [], "platform": "munet", "ready": False} for n in sorted(s.damaged)]
    return {"models": sorted(out, key=lambda m: m["name"])}


def _versions(svc: MunetService, task: str) -> list[str]:
    return [str(v.version) for v in svc.system.versions(task)]


@router.get("/v2/models/{task}", dependencies=guarded)
@router.get("/v2/models/{task}/versions/{version}", dependencies=guarded)
def model_metadata(task: str, version: str = "", svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    s = svc.system
    e = s.entry(task_ref(task, version))
    return {
        "name": task,
        "versions": _versions(svc, task),
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
            "max_images": svc.config.max_predict_images,
        },
    }


@router.get("/v2/models/{task}/ready", dependencies=guarded)
def model_ready(task: str, svc: MunetService = Depends(service)) -> JSONResponse:  # noqa: B008
    s = svc.system
    if task not in s.tasks and task not in s.damaged:
        raise NotFound(f"task {task!r} does not exist")
    ok = task in s.tasks
    return JSONResponse({"name": task, "ready": ok}, status_code=200 if ok else 503)


@router.post("/v2/models/{task}/infer", dependencies=guarded, openapi_extra={"requestBody": INFER_BODY})
@router.post("/v2/models/{task}/versions/{version}/infer", dependencies=guarded, openapi_extra={"requestBody": INFER_BODY})
async def infer(task: str, request: Request, version: str = "") -> dict[str, Any]:
    body = json_object(await read_json(request), "the infer request")
    return await run_in_threadpool(_infer, service(request), task, version, body)


def _infer(svc: MunetService, task: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
    encoded, raw = _images(body)
    params = json_object(body.get("parameters", {}), "parameters")
    top_k = params.get("top_k", 1)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InvalidArgument(f"parameters.top_k must be an integer from 1, got {top_k!r}")
    ref = task_ref(task, version)
    served = str(svc.system.entry(ref).record.version)
    preds = svc.predictor.predict(ref, encoded, raw, top_k)
    n, k = len(preds), len(preds[0]) if preds else 0
    out: dict[str, Any] = {
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


def task_ref(task: str, version: str) -> str:
    """An OIP model name and version ("" or a number) -> the engine's "task" or "task@N"."""
    return f"{task}@{version_number(version)}" if version else task


def version_number(version: str) -> int:
    """A version as a path names it: ASCII digits from 1, no sign, no leading zero."""
    if not (version.isascii() and version.isdigit()) or version.startswith("0"):
        raise InvalidArgument(f"version {version!r} must be a number from 1, in ASCII digits")
    return int(version)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _images(body: dict[str, Any]) -> tuple[list[bytes], list[RawPixels]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument('give one input: {"name": "image", "datatype": "BYTES", "shape": [N], "data": [...]}')
    t = inputs[0]
    dtype, data, shape = t.get("datatype"), t.get("data"), t.get("shape")
    if not isinstance(data, list) or not isinstance(shape, list):
        raise InvalidArgument("the input needs `shape` and `data` lists")
    if dtype == "BYTES":
        if shape != [len(data)] or not _is_int(shape[0]):
            raise InvalidArgument(f"a BYTES input of {len(data)} images has shape [{len(data)}], not {shape}")
        return [_base64(i, item) for i, item in enumerate(data)], []
    if dtype == "UINT8":
        return [], _pixels(shape, data)
    raise InvalidArgument(f"datatype {dtype!r}: send encoded images as BYTES (base64) or pixels as UINT8")


def _base64(i: int, item: Any) -> bytes:
    if not isinstance(item, str):
        raise InvalidArgument(f"image {i}: BYTES data in JSON are base64 strings")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"image {i}: not valid base64") from None


def _pixels(shape: list[Any], data: list[Any]) -> list[RawPixels]:
    if len(shape) != 4 or not all(_is_int(d) and d > 0 for d in shape) or shape[3] not in (1, 3):
        raise InvalidArgument(f"a UINT8 input has shape [N, H, W, C] with C 1 or 3; got {shape}")
    n, h, w, c = shape
    if len(data) != n * h * w * c:
        raise InvalidArgument(f"shape {shape} needs {n * h * w * c} values; got {len(data)}")
    if not all(type(v) is int for v in data):  # bool is an int subclass: type(), not isinstance
        raise InvalidArgument("UINT8 data must be integers in [0, 255]")
    try:
        flat = bytes(data)
    except ValueError:
        raise InvalidArgument("UINT8 data must be integers in [0, 255]") from None
    step = h * w * c
    return [RawPixels(h, w, c, flat[i * step : (i + 1) * step]) for i in range(n)]
