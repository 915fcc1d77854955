"""`/munet/v1` routes for operations (list, get, cancel) and the whole system's snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from munet_server.rest.context import admin_auth, predict_auth, service, writable
from munet_server.rest.tasks import as_json
from munet_server.rpc import convert
from munet_server.service import MunetService

router = APIRouter(prefix="/munet/v1")


@router.get("/operations", dependencies=[Depends(predict_auth)])
def operations(task: str = "", svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    return {"operations": [as_json(convert.operation(j)) for j in svc.operations.list(task=task, state="")]}


@router.get("/operations/{name}", dependencies=[Depends(predict_auth)])
def operation(name: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    return as_json(convert.operation(svc.operations.get(name)))


@router.post("/operations/{name}:cancel", dependencies=[Depends(admin_auth), Depends(writable)])
def cancel(name: str, svc: MunetService = Depends(service)) -> dict[str, Any]:  # noqa: B008
    return as_json(convert.operation(svc.operations.cancel(name)))


@router.get("/snapshot", dependencies=[Depends(admin_auth)])
def snapshot(svc: MunetService = Depends(service)) -> StreamingResponse:  # noqa: B008
    """The whole system as a tar archive (what `munet snapshot FILE` writes)."""
    chunks: Iterator[bytes] = svc.stream_snapshot()
    return StreamingResponse(
        chunks, media_type="application/x-tar", headers={"Content-Disposition": 'attachment; filename="munet-snapshot.tar"'}
    )
