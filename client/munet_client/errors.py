"""One exception type for every failed call, carrying the gRPC status name and the server's message."""

from __future__ import annotations

import grpc


class MunetError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> MunetError:
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        name = code.name if code is not None else "UNKNOWN"
        if name == "UNAVAILABLE":
            details = f"cannot reach the server ({details}); is munet-server running at that address?"
        return cls(name, details or "")
