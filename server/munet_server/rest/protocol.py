"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's binary tensor data,
classification, model configuration and repository index extensions; what the routes answer comes
from `munet_server.oip`, the same as the gRPC inference service's.

An infer request, images as BYTES (base64 strings in JSON, raw bytes in binary tensor data):
    {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["iVBOR...", "..."]}],
     "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
or pixels as UINT8 [N, H, W, C], C 1 or 3. Without `outputs`, every output comes back.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from munet_server.errors import InvalidArgument
from munet_server.oip import model
from munet_server.oip.infer import infer as run_infer
from munet_server.rest import infer_body
from munet_server.rest.bodies import json_object, read_json
from munet_server.rest.context import predict_auth, service
from munet_server.service import MunetService

router = APIRouter()
guarded = [Depends(predict_auth)]

_TENSOR = {"type": "object", "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "enum": ["BYTES", "UINT8"]},
    "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
    "parameters": {"type": "object"}}}  # fmt: skip
INFER_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": _TENSOR},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string", "enum": list(model.OUTPUTS)}, "parameters": {"type": "object"}}}},
            "parameters": {"type": "object", "properties": {"top_k": {"type": "integer", "minimum": 1},
                                                            "binary_data_output": {"type": "boolean"}}},
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
    return model.server_metadata()


@router.get("/v2/models", dependencies=guarded)
def models(svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    """Every task (a munet extension; see also Triton's POST /v2/repository/index)."""
    s = svc.system
    out = [
        {"name": n, "versions": model.versions(svc, n), "platform": model.PLATFORM, "ready": True}
        for n in s.tasks
    ]
    out += [{"name": n, "versions": [], "platform": model.PLATFORM, "ready": False} for n in s.damaged]
    return {"models": sorted(out, key=lambda m: m["name"])}


@router.post("/v2/repository/index", dependencies=guarded)
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Triton's repository index; the body ({"ready": true}: only tasks that answer) is optional."""
    body = json_object(await read_json(request, optional=True) or {}, "the index request")
    ready_only = body.get("ready", False)
    return model.repository_index(service(request), ready_only is True)


@router.get("/v2/models/{task}", dependencies=guarded)
@router.get("/v2/models/{task}/versions/{version}", dependencies=guarded)
def model_metadata(task: str, version: str = "", svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    return model.metadata(svc, task, version)


@router.get("/v2/models/{task}/config", dependencies=guarded)
@router.get("/v2/models/{task}/versions/{version}/config", dependencies=guarded)
def model_config(task: str, version: str = "", svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    return model.config(svc, task, version)


@router.get("/v2/models/{task}/ready", dependencies=guarded)
@router.get("/v2/models/{task}/versions/{version}/ready", dependencies=guarded)
def model_ready(task: str, version: str = "", svc: MunetService = Depends(service)) -> JSONResponse:  # noqa: B008
    ok = model.ready(svc, task, version)
    return JSONResponse({"name": task, "ready": ok}, status_code=200 if ok else 503)


@router.post("/v2/models/{task}/infer", dependencies=guarded, openapi_extra={"requestBody": INFER_BODY})
@router.post(
    "/v2/models/{task}/versions/{version}/infer",
    dependencies=guarded,
    openapi_extra={"requestBody": INFER_BODY},
)
async def infer(task: str, request: Request, version: str = "") -> Response:
    encoding = request.headers.get("content-encoding", "identity")
    if encoding != "identity":
        raise InvalidArgument(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")
    body = await request.body()
    header_length = request.headers.get(infer_body.HEADER_LENGTH)
    content, headers = await run_in_threadpool(_infer, service(request), task, version, body, header_length)
    return Response(content, headers=headers)


def _infer(
    svc: MunetService, task: str, version: str, body: bytes, header_length: str | None
) -> tuple[bytes, dict]:
    req = infer_body.parse(body, header_length, task, version)
    return infer_body.encode(run_infer(svc, req))
