#!/usr/bin/env bash
# Regenerate the protocol code (committed, so neither server nor client needs grpcio-tools).
# munet.v1: the source stays at protos/munet/v1/munet.proto; the virtual include path maps it to
# munet_proto/v1/ so that the generated code imports `munet_proto.v1`, our distinct import name.
# inference (the Open Inference Protocol): protos/inference/grpc_predict_v2.proto is KServe's, as
# published (kserve/kserve docs/predict-api/v2, commit aaac4e2), with triton_repository.proto beside
# it; they become one descriptor set that the server loads into a private pool (munet_proto.inference).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -Imunet_proto/v1=protos/munet/v1 \
  --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/munet/v1/munet.proto
.venv/bin/python -m grpc_tools.protoc -Iprotos/inference \
  --descriptor_set_out=protos/munet_proto/inference/inference.binpb \
  protos/inference/grpc_predict_v2.proto protos/inference/triton_repository.proto
