"""The Open Inference Protocol's gRPC messages (package `inference`: KServe's grpc_predict_v2.proto and
Triton's repository messages), from the descriptor set scripts/gen_protos.sh writes.

They live in a private descriptor pool: tritonclient and kserve register their own `inference.*`
messages in protobuf's default pool, and a second file with the same names there fails to load, so a
process can hold this server and either client."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"

FILES = descriptor_pb2.FileDescriptorSet.FromString(Path(__file__).with_name("inference.binpb").read_bytes()).file
_pool = descriptor_pool.DescriptorPool()
for _file in FILES:
    _pool.Add(_file)


def _message(name: str) -> type:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferParameter = _message("InferParameter")
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
ModelConfigRequest = _message("ModelConfigRequest")
ModelConfigResponse = _message("ModelConfigResponse")
DATA_TYPE = _pool.FindEnumTypeByName("inference.DataType")

# method -> (request class, response class), as the service declares them
METHODS = {
    m.name: (_message(m.input_type.name), _message(m.output_type.name))
    for m in _pool.FindServiceByName(SERVICE).methods
} | {"RepositoryIndex": (RepositoryIndexRequest, RepositoryIndexResponse),
     "ModelConfig": (ModelConfigRequest, ModelConfigResponse)}  # fmt: skip
