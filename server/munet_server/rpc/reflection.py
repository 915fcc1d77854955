"""gRPC server reflection (grpcurl, Postman, evans), as v1 and as v1alpha, for munet.v1, health and
the inference protocol. grpcio-reflection serves v1alpha only; v1's messages are v1alpha's field for
field, so the same servicer answers both. Its pool holds every served file, the inference protocol's
included (they live outside protobuf's default pool: munet_proto.inference says why)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from munet_proto import inference

V1 = "grpc.reflection.v1.ServerReflection"


def enable(server: grpc.Server, services: Iterable[str], files: Iterable[descriptor.FileDescriptor]) -> None:
    """Reflection for `services` (and both reflection services), whose definitions are in `files`."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for f in (*files, reflection_pb2.DESCRIPTOR):
        _add(pool, f, added)
    for proto in inference.FILES:
        pool.Add(proto)
    servicer = reflection.ReflectionServicer((*services, inference.SERVICE, reflection.SERVICE_NAME, V1), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": v1}),))


def _add(pool: descriptor_pool.DescriptorPool, f: descriptor.FileDescriptor, added: set[str]) -> None:
    """`f` after its imports (a pool needs a file's dependencies first)."""
    if f.name in added:
        return
    for dep in f.dependencies:
        _add(pool, dep, added)
    proto = descriptor_pb2.FileDescriptorProto()
    f.CopyToProto(proto)
    pool.Add(proto)
    added.add(f.name)
