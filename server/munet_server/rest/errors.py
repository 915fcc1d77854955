"""One error body for every HTTP answer that is not a success: `{"error": message, "code": NAME}` (the
protocol's `{"error"}` plus the gRPC code's name), with the status mapped from the gRPC code, and
failures classified as the gRPC servicer does (a full disk, an incident id), so both doors answer alike. A request is never
echoed back, and an unexpected failure is logged with an incident id that the answer names."""

from __future__ import annotations

import logging
import uuid

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from munet_server.errors import MunetError, disk_full

log = logging.getLogger("munet.http")

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
_CODE_OF_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
}  # fmt: skip


def error_response(status: int, message: str, code: str = "") -> JSONResponse:
    return JSONResponse({"error": message, "code": code or _CODE_OF_STATUS.get(status, "INTERNAL")}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(MunetError)
    async def munet_error(request: Request, e: MunetError) -> JSONResponse:
        return error_response(HTTP_STATUS.get(e.code, 500), e.message, e.code.name)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, "; ".join(_describe(err) for err in e.errors()[:5]))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /docs for the routes"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs for the routes"
        return error_response(e.status_code, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        full = disk_full(e, request.app.state.munet.service.config.store)  # as the gRPC servicer classifies
        if full is not None:
            return error_response(HTTP_STATUS[full.code], full.message, full.code.name)
        incident = uuid.uuid4().hex[:8]
        log.exception("%s %s failed (incident %s)", request.method, request.url.path, incident)
        return error_response(500, f"internal error ({type(e).__name__}); incident {incident} in the server log")


def _describe(err: dict) -> str:
    """A validation error's place and reason, never the value that was sent."""
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid"))
