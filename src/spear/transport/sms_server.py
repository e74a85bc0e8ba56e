"""The gRPC server of the metadata server: spear.v1.MetadataServer over `MetadataServer`,
plus grpc.health.v1 beside it (grpclib). `SmsServer.start` reports the bound address."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.server import Server

from spear._logging import logger
from spear.errors import InvalidArgument
from spear.transport import _convert as cv
from spear.transport import _sms_convert as sc
from spear.transport import _speedups
from spear.transport._gen.spear import v1
from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES, LimitedCodec
from spear.transport.serving import format_address, guard, listening_socket

if TYPE_CHECKING:
    from grpclib.const import Handler

    from spear.core.sms import MetadataServer

SERVICE_NAME = "spear.v1.MetadataServer"


class MetadataService(v1.MetadataServerBase):
    """spear.v1.MetadataServer: converts messages at the boundary, calls the SMS logic."""

    def __init__(self, sms: MetadataServer) -> None:
        self.sms = sms

    def __mapping__(self) -> dict[str, Handler]:
        # The same guard as the Spearlet service: SpearError -> status + spear-error-code.
        return {
            name: handler._replace(func=guard(name, handler.func))
            for name, handler in super().__mapping__().items()
        }

    async def register_node(self, message: v1.RegisterNodeRequest) -> v1.NodeRecord:
        return sc.node_to_wire(await self.sms.register(sc.node_from_wire(message.node)))

    async def heartbeat(self, message: v1.HeartbeatRequest) -> v1.HeartbeatResponse:
        record = await self.sms.heartbeat(
            message.name,
            message.incarnation,
            cv.resources_from_wire(message.free),
            message.running_tasks,
            message.queued_tasks,
        )
        if record is None:
            return v1.HeartbeatResponse(known=False)
        return v1.HeartbeatResponse(known=True, node=sc.node_to_wire(record))

    async def deregister_node(self, message: v1.DeregisterNodeRequest) -> v1.DeregisterNodeResponse:
        done = await self.sms.deregister(message.name, message.incarnation)
        return v1.DeregisterNodeResponse(deregistered=done)

    async def get_node(self, message: v1.GetNodeRequest) -> v1.NodeRecord:
        return sc.node_to_wire(await self.sms.node(message.name))

    async def list_nodes(self, message: v1.ListNodesRequest) -> v1.ListNodesResponse:
        nodes = await self.sms.nodes(live_only=message.live_only)
        return v1.ListNodesResponse(nodes=[sc.node_to_wire(n) for n in nodes])

    async def find_nodes(self, message: v1.FindNodesRequest) -> v1.FindNodesResponse:
        return sc.placement_to_wire(await self.sms.find_nodes(sc.query_from_wire(message)))

    async def report_task(self, message: v1.ReportTaskRequest) -> v1.TaskInfo:
        if message.task is None:
            raise InvalidArgument("ReportTask needs a task")
        return cv.task_to_wire(await self.sms.report_task(cv.task_from_wire(message.task)))

    async def report_tasks(self, message: v1.ReportTasksRequest) -> v1.ReportTasksResponse:
        await self.sms.report_tasks([cv.task_from_wire(t) for t in message.tasks])
        return v1.ReportTasksResponse()

    async def lookup_task(self, message: v1.LookupTaskRequest) -> v1.TaskInfo:
        return cv.task_to_wire(await self.sms.task(message.task_id))

    async def list_cluster_tasks(
        self, message: v1.ListClusterTasksRequest
    ) -> v1.ListClusterTasksResponse:
        found = await self.sms.tasks(
            cv.state_from_wire(message.state), message.limit or None, message.node or None
        )
        return v1.ListClusterTasksResponse(tasks=[cv.task_to_wire(t) for t in found])

    async def put_object_location(self, message: v1.ObjectLocation) -> v1.ObjectLocation:
        loc = await self.sms.put_object_location(sc.location_from_wire(message))
        return sc.location_to_wire(loc)

    async def remove_object_location(
        self, message: v1.RemoveObjectLocationRequest
    ) -> v1.RemoveObjectLocationResponse:
        removed = await self.sms.remove_object_location(message.key, message.node)
        return v1.RemoveObjectLocationResponse(removed=removed)

    async def locate_object(self, message: v1.LocateObjectRequest) -> v1.LocateObjectResponse:
        found = await self.sms.locate_object(message.key)
        return v1.LocateObjectResponse(locations=[sc.location_to_wire(x) for x in found])


class SmsServer:
    """spear.v1.MetadataServer and health on one port."""

    def __init__(
        self, sms: MetadataServer, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        _speedups.install()
        self.sms = sms
        self.service = MetadataService(sms)
        self._serving = ServiceStatus()
        self._serving.set(True)
        health = Health({self.service: [self._serving]})
        self._server = Server([self.service, health], codec=LimitedCodec(max_message_bytes))
        self.address: str | None = None

    async def start(self, listen: str) -> str:
        """Bind `listen` (port 0 picks a free port) and serve; returns the bound address."""
        sock = listening_socket(listen)
        await self._server.start(sock=sock)
        bound_host, bound_port = sock.getsockname()[:2]
        self.address = format_address(bound_host, bound_port)
        logger.info("serving {} on {}", SERVICE_NAME, self.address)
        return self.address

    async def close(self) -> None:
        """Stop serving. Safe to call twice."""
        if self.address is None:
            return
        self.address = None
        self._server.close()
        await self._server.wait_closed()

    async def __aenter__(self) -> SmsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
