#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC modules (committed, so neither server nor client needs grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/munet/v1/munet.proto
