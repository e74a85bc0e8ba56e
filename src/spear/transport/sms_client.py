"""The Cluster seam over gRPC: a SPEARlet's client of the metadata server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from spear.core.cluster import Cluster
from spear.transport import _convert as cv
from spear.transport import _sms_convert as sc
from spear.transport import _speedups
from spear.transport._gen.spear import v1
from spear.transport._status import (
    DEFAULT_MAX_MESSAGE_BYTES,
    client_errors,
    received_error_code,
)
from spear.transport.channels import NO_CREDENTIALS, Credentials, close_channel, open_channel
from spear.transport.serving import parse_listen

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from spear.core.cluster import (
        NodeRecord,
        ObjectLocation,
        Placement,
        PlacementQuery,
    )
    from spear.core.models import Resources, Task, TaskState

T = TypeVar("T")


class SmsClient(Cluster):
    """Calls spear.v1.MetadataServer at `address` (HOST:PORT); errors are spear's own."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        _speedups.install()
        host, port = parse_listen(address)
        self.address = address
        self._timeout = timeout_s
        self._channel = open_channel(
            host, port, credentials=credentials, max_message_bytes=max_message_bytes
        )
        self._stub = v1.MetadataServerStub(self._channel)

    async def _call(self, call: Awaitable[T]) -> T:
        received_error_code.set(None)
        with client_errors(f"SMS {self.address}"):
            return await call

    def _opts(self) -> dict[str, Any]:
        return {"timeout": self._timeout}

    async def register(self, node: NodeRecord) -> NodeRecord:
        req = v1.RegisterNodeRequest(node=sc.node_to_wire(node))
        return sc.node_from_wire(await self._call(self._stub.register_node(req, **self._opts())))

    async def heartbeat(
        self, name: str, incarnation: str, free: Resources, running: int, queued: int
    ) -> NodeRecord | None:
        req = v1.HeartbeatRequest(
            name=name,
            incarnation=incarnation,
            free=cv.resources_to_wire(free),
            running_tasks=running,
            queued_tasks=queued,
        )
        resp = await self._call(self._stub.heartbeat(req, **self._opts()))
        return sc.node_from_wire(resp.node) if resp.known else None

    async def deregister(self, name: str, incarnation: str) -> bool:
        req = v1.DeregisterNodeRequest(name=name, incarnation=incarnation)
        resp = await self._call(self._stub.deregister_node(req, **self._opts()))
        return resp.deregistered

    async def node(self, name: str) -> NodeRecord:
        req = v1.GetNodeRequest(name=name)
        return sc.node_from_wire(await self._call(self._stub.get_node(req, **self._opts())))

    async def nodes(self, *, live_only: bool = False) -> list[NodeRecord]:
        req = v1.ListNodesRequest(live_only=live_only)
        resp = await self._call(self._stub.list_nodes(req, **self._opts()))
        return [sc.node_from_wire(n) for n in resp.nodes]

    async def find_nodes(self, query: PlacementQuery) -> Placement:
        req = sc.query_to_wire(query)
        return sc.placement_from_wire(await self._call(self._stub.find_nodes(req, **self._opts())))

    async def report_task(self, task: Task) -> Task:
        req = v1.ReportTaskRequest(task=cv.task_to_wire(task))
        return cv.task_from_wire(await self._call(self._stub.report_task(req, **self._opts())))

    async def report_tasks(self, tasks: Sequence[Task]) -> None:
        req = v1.ReportTasksRequest(tasks=[cv.task_to_wire(t) for t in tasks])
        await self._call(self._stub.report_tasks(req, **self._opts()))

    async def task(self, task_id: str) -> Task:
        req = v1.LookupTaskRequest(task_id=task_id)
        return cv.task_from_wire(await self._call(self._stub.lookup_task(req, **self._opts())))

    async def tasks(
        self, state: TaskState | None = None, limit: int | None = None, node: str | None = None
    ) -> list[Task]:
        req = v1.ListClusterTasksRequest(
            state=cv.state_to_wire(state), limit=limit or 0, node=node or ""
        )
        resp = await self._call(self._stub.list_cluster_tasks(req, **self._opts()))
        return [cv.task_from_wire(t) for t in resp.tasks]

    async def put_object_location(self, location: ObjectLocation) -> ObjectLocation:
        req = sc.location_to_wire(location)
        resp = await self._call(self._stub.put_object_location(req, **self._opts()))
        return sc.location_from_wire(resp)

    async def remove_object_location(self, key: str, node: str) -> bool:
        req = v1.RemoveObjectLocationRequest(key=key, node=node)
        resp = await self._call(self._stub.remove_object_location(req, **self._opts()))
        return resp.removed

    async def locate_object(self, key: str) -> list[ObjectLocation]:
        req = v1.LocateObjectRequest(key=key)
        resp = await self._call(self._stub.locate_object(req, **self._opts()))
        return [sc.location_from_wire(x) for x in resp.locations]

    async def verify_token(self, token: str) -> v1.VerifyTokenResponse:
        """What the SMS knows of `token` (transport/cluster_tokens.py)."""
        req = v1.VerifyTokenRequest(token=token)
        return await self._call(self._stub.verify_token(req, **self._opts()))

    async def aclose(self) -> None:
        await close_channel(self._channel)
