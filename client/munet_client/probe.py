"""`munet-health`: the container's health probe, run every few seconds.

It imports grpc and the health stubs only (the full CLI also loads rich, tqdm and the munet stubs) and
reads the server's own variables: MUNET_PORT, and with MUNET_TLS_CERT it speaks TLS, trusting
MUNET_TLS_CA or else that (self-signed) certificate, for the name MUNET_TLS_SERVER_NAME (localhost).
Exit 0 when the server reports SERVING, else 1 with one line on stderr.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    env = os.environ
    target = env.get("MUNET_HEALTH_TARGET") or f"127.0.0.1:{env.get('MUNET_PORT') or 50051}"
    cert = env.get("MUNET_TLS_CERT")
    if cert:
        with open(env.get("MUNET_TLS_CA") or cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
        name = env.get("MUNET_TLS_SERVER_NAME") or "localhost"
        channel = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=4)
    except grpc.RpcError as e:
        print(f"munet-health: {target}: {e.code().name} {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    if status != "SERVING":
        print(f"munet-health: {target}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
