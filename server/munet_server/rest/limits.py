"""Request bounds for the HTTP door, as gRPC's message limit and upload idle time bound the other one:
a body over its route's limit is refused with 413 before it is read into memory (Content-Length), or as
soon as a streamed body passes the limit; a body that sends nothing for `idle_seconds` is ended with 408."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    pass


class BodyLimit:
    """ASGI middleware; `limit_for(method, path)` gives the route's bound in bytes."""

    def __init__(self, app: Any, limit_for: Callable[[str, str], int], idle_seconds: float = 60.0) -> None:
        self.app = app
        self.limit_for = limit_for
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(send, 413, _too_large(limit), "RESOURCE_EXHAUSTED", close=False)
            return
        seen = 0
        body_done = False
        started = False

        async def limited() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() waits for a disconnect: no idle bound there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_seconds)
            except asyncio.TimeoutError:
                raise _Stalled from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _TooLarge:
            if not started:
                await _refuse(send, 413, _too_large(limit), "RESOURCE_EXHAUSTED", close=False)
        except _Stalled:
            if not started:
                await _refuse(
                    send, 408, f"the request body sent nothing for {self.idle_seconds:g} s; send it again",
                    "DEADLINE_EXCEEDED",
                )  # fmt: skip


def _too_large(limit: int) -> str:
    return f"the request body is over {limit:,} bytes (the limit of this route: --max-message-mb, or the upload limit)"


async def _refuse(send: Send, status: int, error: str, code: str, close: bool = True) -> None:
    """An error answer; `close=False` for a client still sending: the server then reads the rest of
    the body and drops it, so that the client (which sends it all before it reads) gets the answer."""
    body = json.dumps({"error": error, "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
