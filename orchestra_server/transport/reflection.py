"""gRPC server reflection under both names clients ask for: `grpc.reflection.v1` and `v1alpha`.

grpcio-reflection implements only v1alpha, while current tools (grpcurl, Postman, grpcui) ask
for v1 first. The two protocols have the same messages with the same field numbers, so the one
implementation answers both; the v1 file descriptor is derived from the v1alpha one (package
and type names renamed) so that v1 itself can be described like every other service.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old_package = proto.package
    proto.name = _V1_FILE
    proto.package = V1_PACKAGE
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old_package}."):
                field.type_name = f".{V1_PACKAGE}." + field.type_name[len(old_package) + 2 :]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}." + method.input_type[len(old_package) + 2 :]
            method.output_type = f".{V1_PACKAGE}." + method.output_type[len(old_package) + 2 :]
    pool.Add(proto)


def enable_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serves reflection for `service_names` (and for both reflection services) under v1 and v1alpha."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    servicer = reflection.ReflectionServicer(
        (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME), pool=pool
    )
    for name in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
            response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )
