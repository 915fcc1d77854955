"""Request bodies read after the route's guards: JSON parsed off the event loop (a large body must not
stall health checks and other callers), errors that say where the body is wrong without echoing it."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from munet_server.errors import InvalidArgument


async def read_json(request: Request, optional: bool = False) -> Any:
    """The body as JSON whatever its content type (clients of the protocol send none); bounded by
    the BodyLimit middleware before it gets here."""
    raw = await request.body()
    if not raw.strip():
        if optional:
            return None
        raise InvalidArgument(f"{request.method} {request.url.path} needs a JSON body")
    return await run_in_threadpool(parse_json, raw)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"the body is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError:
        raise InvalidArgument("the body is not valid JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise InvalidArgument("the body is not valid JSON: it nests too deeply") from None


def json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
