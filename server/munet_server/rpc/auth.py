"""Token auth as a server interceptor. Two levels, and any token that is configured protects something:

- admin RPCs (AddTask, ImproveTask, Cancel, Delete, versions, Export, Snapshot, Restore) need the
  admin token, or the predict token when that is the only one configured (a predict token alone must
  not leave the store open);
- every other munet RPC (Predict, ListTasks, DescribeTask, operations) and the inference protocol's
  (ModelInfer, metadata) need the predict token when one is set; the admin token is accepted wherever
  the predict token is.
Health, reflection and the inference protocol's ServerLive and ServerReady stay open (load balancers
and grpcurl probe them).

Tokens travel as `authorization: Bearer <token>` metadata and are compared in constant time.
Unauthenticated: no token sent. PermissionDenied: a token that is not good enough for the call.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from munet_proto import inference
from munet_proto.v1 import munet_pb2 as pb
from munet_server import tokens

SERVICE = f"/{pb.DESCRIPTOR.services_by_name['Munet'].full_name}/"  # "/munet.v1.Munet/"
INFERENCE = f"/{inference.SERVICE}/"
OPEN_METHODS = frozenset({INFERENCE + "ServerLive", INFERENCE + "ServerReady"})
ADMIN_METHODS = frozenset(
    SERVICE + m
    for m in (
        "AddTask",
        "ImproveTask",
        "CancelOperation",
        "DeleteTask",
        "SetTaskVersion",
        "DeleteTaskVersion",
        "ExportTask",
        "Snapshot",
        "StreamSnapshot",
        "Restore",
        "StreamRestore",
    )
)


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return tokens.from_header(value.decode() if isinstance(value, bytes) else value)
    return None


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, admin_token: str, predict_token: str) -> None:
        self.admin = admin_token
        self.predict = predict_token

    def _required(self, method: str) -> list[str]:
        """The tokens accepted for `method`; empty: open (health and reflection always are)."""
        if not method.startswith((SERVICE, INFERENCE)) or method in OPEN_METHODS:
            return []
        return tokens.accepted(self.admin, self.predict, admin_call=method in ADMIN_METHODS)

    def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        accepted = self._required(method)
        if not accepted:
            return continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _deny(
                continuation(handler_call_details),
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method.rsplit('/', 1)[-1]} needs a token: send 'authorization: Bearer <token>'",
            )
        if not tokens.matches(token, accepted):
            kind = "admin" if method in ADMIN_METHODS and self.admin else "predict"
            return _deny(
                continuation(handler_call_details),
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token is not valid for {method.rsplit('/', 1)[-1]} (needs the {kind} token)",
            )
        return continuation(handler_call_details)


# What a read-only replica refuses: the calls that change the system.
MUTATING_METHODS = frozenset(
    SERVICE + m
    for m in (
        "AddTask",
        "ImproveTask",
        "CancelOperation",
        "DeleteTask",
        "SetTaskVersion",
        "DeleteTaskVersion",
        "Restore",
        "StreamRestore",
    )
)


class ReadOnly(grpc.ServerInterceptor):
    """A replica serves (Predict, ListTasks, snapshots, exports) and refuses changes, naming its source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in MUTATING_METHODS:
            return continuation(handler_call_details)
        return _deny(
            continuation(handler_call_details),
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this server is a read-only replica ({self.source}); send {method.rsplit('/', 1)[-1]} to the primary",
        )


def _deny(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    def abort(request_or_iterator: object, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    if handler is None or (not handler.request_streaming and not handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_stream_rpc_method_handler(abort)
