"""SPEARlet to SPEARlet: the ForwardTask service (peer.proto) and the pool of clients a
node keeps for the other nodes it forwards to or proxies for."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import anyio

from spear.core.models import Runtime
from spear.errors import InvalidArgument
from spear.node.client import Client
from spear.transport import _convert as cv
from spear.transport import _sms_convert as sc
from spear.transport._gen.spear import v1
from spear.transport._status import (
    DEFAULT_MAX_MESSAGE_BYTES,
    client_errors,
    received_error_code,
)
from spear.transport.channels import NO_CREDENTIALS, Credentials, close_channel, open_channel
from spear.transport.serving import guard, parse_listen

if TYPE_CHECKING:
    from grpclib.client import Channel
    from grpclib.const import Handler

    from spear.core.artifacts import ArtifactStore
    from spear.core.cluster import NodeRecord
    from spear.core.models import Task
    from spear.core.scheduler import Scheduler

PEER_SERVICE_NAME = "spear.v1.SpearletPeer"


class PeerService(v1.SpearletPeerBase):
    """spear.v1.SpearletPeer: adopt a task another node forwards."""

    def __init__(self, scheduler: Scheduler, artifacts: ArtifactStore) -> None:
        self.scheduler = scheduler
        self.artifacts = artifacts

    def __mapping__(self) -> dict[str, Handler]:
        return {
            name: handler._replace(func=guard(name, handler.func))
            for name, handler in super().__mapping__().items()
        }

    async def forward_task(self, message: v1.ForwardTaskRequest) -> v1.TaskInfo:
        if message.task is None:
            raise InvalidArgument("ForwardTask needs a task")
        task = cv.task_from_wire(message.task)
        spec = task.spec
        if message.artifact_digest:
            path = self.artifacts.path(message.artifact_digest)
            spec = dataclasses.replace(spec, artifact=str(path))
        adopted = await self.scheduler.adopt(task, spec, message.stdin or None)
        return cv.task_to_wire(adopted)

    async def list_cluster_nodes(self, message: v1.ListNodesRequest) -> v1.ListNodesResponse:
        nodes = await self.scheduler.cluster.nodes(live_only=message.live_only)
        return v1.ListNodesResponse(nodes=[sc.node_to_wire(n) for n in nodes])


class Peers:
    """One `spear.Client` (and one ForwardTask stub) per other node, made on first use."""

    def __init__(
        self,
        own_name: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        self.own_name = own_name
        self._max = max_message_bytes
        self._credentials = credentials
        self._clients: dict[str, Client] = {}
        self._channels: dict[str, tuple[Channel, v1.SpearletPeerStub]] = {}

    def client(self, address: str) -> Client:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = Client(
                address, credentials=self._credentials, max_message_bytes=self._max, retries=0
            )
        return client

    def _peer(self, address: str) -> v1.SpearletPeerStub:
        found = self._channels.get(address)
        if found is None:
            host, port = parse_listen(address)
            channel = open_channel(
                host, port, credentials=self._credentials, max_message_bytes=self._max
            )
            found = self._channels[address] = (channel, v1.SpearletPeerStub(channel))
        return found[1]

    async def forward(self, node: NodeRecord, task: Task, stdin: bytes | None) -> Task:
        """Upload the task's module to `node` (unless it has it) and hand the task over."""
        digest = ""
        spec = task.spec
        if spec.runtime is Runtime.WASM and await anyio.Path(spec.artifact).is_file():
            digest = await self.client(node.address).upload(spec.artifact)
        request = v1.ForwardTaskRequest(
            task=cv.task_to_wire(task),
            artifact_digest=digest,
            stdin=stdin or b"",
            from_node=self.own_name,
        )
        received_error_code.set(None)
        with client_errors(node.address):
            info = await self._peer(node.address).forward_task(request, timeout=30)
        return cv.task_from_wire(info)

    async def cluster_nodes(self, address: str) -> list[NodeRecord]:
        """The cluster's nodes, asked of the SPEARlet at `address`."""
        received_error_code.set(None)
        with client_errors(address):
            answer = await self._peer(address).list_cluster_nodes(v1.ListNodesRequest(), timeout=10)
        return [sc.node_from_wire(n) for n in answer.nodes]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        for channel, _ in self._channels.values():
            await close_channel(channel)
        self._clients.clear()
        self._channels.clear()
