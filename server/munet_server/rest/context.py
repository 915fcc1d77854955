"""What every HTTP route reads: the service, the tokens and the server's role, kept on `app.state`,
and the guards routes declare (`Depends(predict_auth)`, `Depends(admin_auth)`, `Depends(writable)`).

The guards take no body parameter, so FastAPI runs them before a route reads its body: a request
without a valid token is refused before a byte of its body is read."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from munet_server import tokens
from munet_server.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from munet_server.service import MunetService


@dataclass(frozen=True)
class HttpContext:
    service: MunetService
    admin_token: str = ""
    predict_token: str = ""
    read_only: str = ""  # why changes are refused (a replica's source), or empty on a primary


def context(request: Request) -> HttpContext:
    return request.app.state.munet


def service(request: Request) -> MunetService:
    return context(request).service


def _check(request: Request, admin_call: bool) -> None:
    ctx = context(request)
    need = tokens.accepted(ctx.admin_token, ctx.predict_token, admin_call)
    if not need:
        return
    token = tokens.from_header(request.headers.get("authorization"))
    route = f"{request.method} {request.url.path}"
    if token is None:
        raise Unauthenticated(f"{route} needs a token: send 'Authorization: Bearer <token>'")
    if not tokens.matches(token, need):
        kind = "admin" if admin_call and ctx.admin_token else "predict"
        raise PermissionDenied(f"the token is not valid for {route} (needs the {kind} token)")


def predict_auth(request: Request) -> None:
    _check(request, admin_call=False)


def admin_auth(request: Request) -> None:
    _check(request, admin_call=True)


def writable(request: Request) -> None:
    read_only = context(request).read_only
    if read_only:
        raise FailedPrecondition(
            f"this server is a read-only replica ({read_only}); send {request.method} {request.url.path} to the primary"
        )
