"""A stock grpcio client (run as its own process: grpcio's health protos and spear's
cannot share one protobuf descriptor pool). Prints what it saw as JSON.

    python grpcio_probe.py ADDRESS health SERVICE
    python grpcio_probe.py ADDRESS reflect
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def health(channel: grpc.Channel, service: str) -> dict[str, Any]:
    stub = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
    return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(status)}


def _unary(channel: grpc.Channel, pool: Any, method: str, request: str, reply: str) -> Any:
    request_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(request))
    reply_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(reply))
    call = channel.unary_unary(
        method,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=reply_cls.FromString,
    )
    return request_cls, call


def reflect(channel: grpc.Channel) -> dict[str, Any]:
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    methods = sorted(m.name for m in pool.FindServiceByName("spear.v1.Spearlet").methods)
    # Calls made only from what reflection told us.
    request_cls, call = _unary(
        channel, pool, "/spear.v1.Spearlet/GetNodeInfo", "spear.v1.GetNodeInfoRequest",
        "spear.v1.NodeInfo",
    )  # fmt: skip
    info = call(request_cls(), timeout=10)
    request_cls, call = _unary(
        channel, pool, "/spear.v1.Spearlet/GetTask", "spear.v1.GetTaskRequest",
        "spear.v1.TaskInfo",
    )  # fmt: skip
    error: dict[str, Any] = {}
    try:
        call(request_cls(task_id="nope"), timeout=10)
    except grpc.RpcError as exc:
        error = {
            "status": exc.code().name,
            "message": exc.details(),
            "metadata": dict(exc.trailing_metadata() or ()),
        }
    return {
        "services": services,
        "methods": methods,
        "node": info.name,
        "runtimes": list(info.runtimes),
        "error": error,
    }


class _Token(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sends the node's token (SPEAR_TOKEN) with every call, as any gRPC client would."""

    def __init__(self, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self.metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def main() -> None:
    address, what, *rest = sys.argv[1:]
    with grpc.insecure_channel(address) as plain:
        token = os.environ.get("SPEAR_TOKEN")
        channel = grpc.intercept_channel(plain, _Token(token)) if token else plain
        out = health(channel, rest[0] if rest else "") if what == "health" else reflect(channel)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
