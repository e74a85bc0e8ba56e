"""The gRPC server of the metadata server: spear.v1.MetadataServer over `MetadataServer`,
plus grpc.health.v1 and reflection beside it (grpc.aio). `SmsServer.start` reports the
bound address."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.core.namespaces import check_name
from spear.core.task_pages import newest_page, page_size
from spear.errors import InvalidArgument, PermissionDenied
from spear.transport import _convert as cv
from spear.transport import _sms_convert as sc
from spear.transport._convert import optional
from spear.transport._gen.pb import sms_pb2
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES
from spear.transport.aio_server import GrpcServer
from spear.transport.auth import current_principal
from spear.transport.cluster_tokens import verify_at_sms
from spear.transport.object_index_service import ObjectIndexService
from spear.transport.services import ServiceBase

if TYPE_CHECKING:
    from spear.core.cluster_quotas import ClusterTaskSlots
    from spear.core.models import Task
    from spear.core.sms import MetadataServer
    from spear.transport.auth import TokenStore
    from spear.transport.serving import Security

SERVICE_NAME = "spear.v1.MetadataServer"


def _speaks_for(node: str | None) -> None:
    """A member changes only its own records: the name in its certificate is the node's."""
    principal = current_principal.get()
    if principal is not None and principal.via == "certificate" and node != principal.name:
        raise PermissionDenied(f"{principal.name} may not speak for node {node or '(none)'!r}")


def _reports_on(task: Task) -> None:
    # A task not placed yet (queued where it was submitted) names no node.
    if task.node is not None:
        _speaks_for(task.node)


class MetadataService(ObjectIndexService, ServiceBase):
    """spear.v1.MetadataServer: converts messages at the boundary, calls the SMS logic."""

    SERVICE = sms_pb2.DESCRIPTOR.services_by_name["MetadataServer"]

    def __init__(self, sms: MetadataServer) -> None:
        self.sms = sms

    async def register_node(self, message: sms_pb2.RegisterNodeRequest) -> sms_pb2.NodeRecord:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node.name)  # (unset: a default record, named "")
        return sc.node_to_wire(await self.sms.register(sc.node_from_wire(message.node)))

    async def heartbeat(self, message: sms_pb2.HeartbeatRequest) -> sms_pb2.HeartbeatResponse:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.name)
        record = await self.sms.heartbeat(
            message.name,
            message.incarnation,
            cv.resources_from_wire(optional(message, "free")),
            message.running_tasks,
            message.queued_tasks,
        )
        if record is None:
            return sms_pb2.HeartbeatResponse(known=False)
        return sms_pb2.HeartbeatResponse(known=True, node=sc.node_to_wire(record))

    async def deregister_node(
        self, message: sms_pb2.DeregisterNodeRequest
    ) -> sms_pb2.DeregisterNodeResponse:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.name)
        done = await self.sms.deregister(message.name, message.incarnation)
        return sms_pb2.DeregisterNodeResponse(deregistered=done)

    async def get_node(self, message: sms_pb2.GetNodeRequest) -> sms_pb2.NodeRecord:
        return sc.node_to_wire(await self.sms.node(message.name))

    async def list_nodes(self, message: sms_pb2.ListNodesRequest) -> sms_pb2.ListNodesResponse:
        nodes = await self.sms.nodes(live_only=message.live_only)
        return sms_pb2.ListNodesResponse(nodes=[sc.node_to_wire(n) for n in nodes])

    async def find_nodes(self, message: sms_pb2.FindNodesRequest) -> sms_pb2.FindNodesResponse:
        return sc.placement_to_wire(await self.sms.find_nodes(sc.query_from_wire(message)))

    async def report_task(self, message: sms_pb2.ReportTaskRequest) -> pb.TaskInfo:
        self.sms.leadership.require()  # writes go to the leader only
        if not message.HasField("task"):
            raise InvalidArgument("ReportTask needs a task")
        task = cv.task_from_wire(message.task)
        _reports_on(task)
        return cv.task_to_wire(await self.sms.report_task(task))

    async def report_tasks(
        self, message: sms_pb2.ReportTasksRequest
    ) -> sms_pb2.ReportTasksResponse:
        """ReportTasks: the reports of every task, batched by the member."""
        self.sms.leadership.require()  # writes go to the leader only
        tasks = cv.tasks_from_wire(message.tasks)
        for task in tasks:
            _reports_on(task)
        await self.sms.report_tasks(tasks)
        return sms_pb2.ReportTasksResponse()

    async def lookup_task(self, message: sms_pb2.LookupTaskRequest) -> pb.TaskInfo:
        return cv.task_to_wire(await self.sms.task(message.task_id))

    task_slots: ClusterTaskSlots | None = None  # cluster-wide quotas (set by the assembly)

    async def take_task_slot(self, message: sms_pb2.TaskSlotRequest) -> sms_pb2.TaskSlotResponse:
        self.sms.leadership.require()  # the slots live in the leader
        if self.task_slots is None:
            return sms_pb2.TaskSlotResponse(limited=False)
        limited = await self.task_slots.take(
            check_name(message.namespace), message.task_id, until_released=message.until_released
        )
        return sms_pb2.TaskSlotResponse(limited=limited)

    async def release_task_slot(self, message: sms_pb2.TaskSlotRequest) -> sms_pb2.TaskSlotResponse:
        self.sms.leadership.require()
        if self.task_slots is not None:
            self.task_slots.release(message.namespace, message.task_id)
        return sms_pb2.TaskSlotResponse(limited=self.task_slots is not None)

    async def list_cluster_tasks(
        self, message: sms_pb2.ListClusterTasksRequest
    ) -> sms_pb2.ListClusterTasksResponse:
        state, node = cv.state_from_wire(message.state), message.node or None
        size = page_size(message.page_size, message.limit or None)
        found, token = await newest_page(
            lambda n: self.sms.tasks(state, n, node), size, message.page_token
        )
        tasks = [cv.task_to_wire(t) for t in found]
        return sms_pb2.ListClusterTasksResponse(tasks=tasks, next_page_token=token)

    async def put_object_location(self, message: sms_pb2.ObjectLocation) -> sms_pb2.ObjectLocation:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        loc = await self.sms.put_object_location(sc.location_from_wire(message))
        return sc.location_to_wire(loc)

    async def remove_object_location(
        self, message: sms_pb2.RemoveObjectLocationRequest
    ) -> sms_pb2.RemoveObjectLocationResponse:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        removed = await self.sms.remove_object_location(message.key, message.node)
        return sms_pb2.RemoveObjectLocationResponse(removed=removed)

    async def locate_object(
        self, message: sms_pb2.LocateObjectRequest
    ) -> sms_pb2.LocateObjectResponse:
        found = await self.sms.locate_object(message.key)
        return sms_pb2.LocateObjectResponse(locations=[sc.location_to_wire(x) for x in found])

    tokens: TokenStore | None = None  # the SMS's own (SmsServer sets them)

    async def verify_token(
        self, message: sms_pb2.VerifyTokenRequest
    ) -> sms_pb2.VerifyTokenResponse:
        return verify_at_sms(self.tokens, message.token)

    async def delete_cluster_tasks(
        self, message: sms_pb2.DeleteClusterTasksRequest
    ) -> sms_pb2.DeleteClusterTasksResponse:
        from spear.core.sms_retention import delete_finished_records

        self.sms.leadership.require()  # writes go to the leader only
        principal = current_principal.get()
        node = principal.name if principal is not None and principal.via == "certificate" else None
        namespace = check_name(message.namespace) if message.namespace else None
        gone = await delete_finished_records(
            self.sms.kv, list(message.task_ids), namespace=namespace, node=node
        )
        return sms_pb2.DeleteClusterTasksResponse(task_ids=gone)

    async def keep_task_input(
        self, message: sms_pb2.KeepTaskInputRequest
    ) -> sms_pb2.KeepTaskInputResponse:
        self.sms.leadership.require()  # writes go to the leader only
        if not message.task_id:
            raise InvalidArgument("KeepTaskInput needs a task id")
        await self.sms.keep_task_input(message.task_id, bytes(message.stdin))
        return sms_pb2.KeepTaskInputResponse()


class SmsServer(GrpcServer):
    """spear.v1.MetadataServer, health and reflection on one port."""

    service: MetadataService

    def __init__(
        self,
        sms: MetadataServer,
        *,
        security: Security,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """`security`: who may call; members need a certificate from the cluster's CA."""
        self.sms = sms
        service = MetadataService(sms)
        service.tokens = security.authorizer.tokens if security.authorizer else None
        super().__init__(
            service,
            name=SERVICE_NAME,
            security=security,
            max_message_bytes=max_message_bytes,
        )
