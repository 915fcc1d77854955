"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`, KServe v2, with
Triton's RepositoryIndex and ModelConfig) on the server's gRPC port, beside munet.v1: the same
tokens, limits, batcher and answers as Predict. Requests and answers convert to `munet_server.oip`."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from munet_proto import inference as pb
from munet_server.errors import InvalidArgument
from munet_server.oip import model, tensors
from munet_server.oip.infer import InferRequest, parameter_int, requested
from munet_server.oip.infer import infer as run_infer
from munet_server.oip.tensors import Datatype, Tensor
from munet_server.rpc.servicer import time_left, unary
from munet_server.service import MunetService

INPUT_TYPES = (Datatype.BYTES, Datatype.UINT8)


class InferenceServicer:
    def __init__(self, service: MunetService) -> None:
        self.service = service

    @unary
    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    @unary
    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.service.ready())

    @unary
    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=model.ready(self.service, request.name, request.version))

    @unary
    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**model.server_metadata())

    @unary
    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        meta = model.metadata(self.service, request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=meta["inputs"],
            outputs=meta["outputs"],
        )

    @unary
    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ModelConfigResponse(config=model.config(self.service, request.name, request.version))

    @unary
    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.RepositoryIndexResponse(models=model.repository_index(self.service, request.ready))

    @unary
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        resp = run_infer(self.service, infer_request(request), time_left(context), context.add_callback)
        return pb.ModelInferResponse(
            model_name=resp.model,
            model_version=resp.version,
            id=resp.id,
            outputs=[{"name": t.name, "datatype": t.datatype.value, "shape": t.shape} for _, t in resp.outputs],
            raw_output_contents=[t.to_bytes() for _, t in resp.outputs],
        )


def handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    methods = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in pb.METHODS.items()
    }
    return grpc.method_handlers_generic_handler(pb.SERVICE, methods)


def parameters(params: Any) -> dict[str, Any]:
    """A map of InferParameter -> plain values (bool, int or str)."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def infer_request(r: Any) -> InferRequest:
    if r.raw_input_contents and len(r.raw_input_contents) != len(r.inputs):
        raise InvalidArgument(f"{len(r.raw_input_contents)} raw_input_contents for {len(r.inputs)} inputs; give one each")
    inputs = [_input(t, r.raw_input_contents[i] if r.raw_input_contents else None) for i, t in enumerate(r.inputs)]
    wanted = [requested(o.name, parameters(o.parameters)) for o in r.outputs]
    top_k = parameter_int(parameters(r.parameters), "top_k", 1, 1)
    return InferRequest(r.model_name, r.model_version, inputs, wanted, top_k, r.id)


def _input(t: Any, raw: bytes | None) -> Tensor:
    dtype = tensors.datatype(t.datatype, INPUT_TYPES)
    shape = tensors.shape_of(list(t.shape), f"input {t.name!r}")
    if raw is not None:
        return tensors.from_bytes(t.name, dtype, shape, raw)
    if dtype is Datatype.BYTES:
        items = list(t.contents.bytes_contents)
        if len(items) != tensors.elements(shape):
            raise InvalidArgument(f"input {t.name!r}: shape {list(shape)} needs {tensors.elements(shape)} elements, got {len(items)}")
        return Tensor(t.name, dtype, shape, items)
    values = list(t.contents.uint_contents)
    if len(values) != tensors.elements(shape) or any(v > 255 for v in values):
        raise InvalidArgument(
            f"input {t.name!r}: UINT8 [{', '.join(map(str, shape))}] needs {tensors.elements(shape)} values in uint_contents, each 0-255"
        )
    return Tensor(t.name, dtype, shape, np.asarray(values, dtype=np.uint8))
