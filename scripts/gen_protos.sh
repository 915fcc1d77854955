#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC modules (committed, so neither server nor client needs grpcio-tools).
# The source stays at protos/munet/v1/munet.proto (proto package munet.v1); the virtual include path maps
# it to munet_proto/v1/ so that the generated code imports `munet_proto.v1`, our distinct import name.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -Imunet_proto/v1=protos/munet/v1 \
  --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/munet/v1/munet.proto
