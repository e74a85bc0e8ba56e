"""The standard services every server of ours carries beside its own: grpc.health.v1
(Check and Watch) and server reflection (v1 and v1alpha) over our descriptors, from
grpcio-health-checking's and grpcio-reflection's aio servicers, served through the same
guard as spear's methods (transport/aio_server.py; health needs no credential,
`auth.OPEN_METHODS`; reflection a reader's)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from spear.transport.services import ServedMethod, served

if TYPE_CHECKING:
    from collections.abc import Sequence

HEALTH_SERVICE = "grpc.health.v1.Health"
_REFLECTION_V1 = "grpc.reflection.v1"
_REFLECTION_V1ALPHA = "grpc.reflection.v1alpha"


class Health:
    """What health checks answer for `services` and for the server as a whole (""):
    SERVING, or NOT_SERVING after `set_serving(False)` (a node draining)."""

    def __init__(self, services: Sequence[str]) -> None:
        from grpc_health.v1 import health

        self.services = ["", *services]
        self.servicer = health.aio.HealthServicer()
        self._changing: set[asyncio.Task[None]] = set()

    def methods(self) -> dict[str, ServedMethod]:
        from grpc_health.v1 import health_pb2

        descriptor = health_pb2.DESCRIPTOR.services_by_name["Health"]
        return served(descriptor, lambda m: getattr(self.servicer, m.route.rsplit("/", 1)[1]))

    def set_serving(self, serving: bool) -> None:
        """Answer SERVING or NOT_SERVING from now on (the servicer's watchers are told in a
        task of the running loop: a call made after this one sees the change)."""
        asyncio.get_running_loop()  # (a health change belongs to a running server)
        task = asyncio.ensure_future(self.set(serving))
        self._changing.add(task)
        task.add_done_callback(self._changing.discard)

    async def set(self, serving: bool) -> None:
        """Answer SERVING or NOT_SERVING from now on (watchers told at once)."""
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.services:
            await self.servicer.set(name, status)


def reflection_methods(service_names: Sequence[str]) -> dict[str, ServedMethod]:
    """Server reflection (v1 and v1alpha: the same messages on the wire) listing
    `service_names`, health and itself, over our descriptors and the standard ones."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    names = [*service_names, HEALTH_SERVICE, *(f"{p}.ServerReflection" for p in _PACKAGES)]
    servicer = reflection.aio.ReflectionServicer(names, pool=_descriptor_pool())
    descriptor = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    v1alpha = served(descriptor, lambda m: servicer.ServerReflectionInfo)
    methods = dict(v1alpha)
    for route, method in v1alpha.items():
        methods[route.replace(_REFLECTION_V1ALPHA, _REFLECTION_V1, 1)] = method
    return methods


_PACKAGES = (_REFLECTION_V1, _REFLECTION_V1ALPHA)


def _descriptor_pool() -> Any:
    """Our protos (`_gen/descriptors.binpb`), health's, and reflection's in both versions
    (grpcio-reflection ships v1alpha's; v1's is the same file in another package)."""
    from importlib import resources

    from google.protobuf import descriptor_pb2, descriptor_pool  # type: ignore[import-untyped]
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    pool = descriptor_pool.DescriptorPool()
    raw = resources.files("spear.transport._gen").joinpath("descriptors.binpb").read_bytes()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        pool.Add(proto)
    pool.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(reflection_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(_renamed(reflection_pb2.DESCRIPTOR.serialized_pb, _REFLECTION_V1ALPHA, _REFLECTION_V1))
    return pool


def _renamed(serialized: bytes, package: str, to: str) -> Any:
    """A file's descriptor moved from `package` to `to` (its types' references too)."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    proto.name = f"{to.replace('.', '/')}/reflection.proto"
    proto.package = to
    old, new = f".{package}.", f".{to}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    return proto
