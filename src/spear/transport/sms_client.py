"""The Cluster seam over gRPC: a SPEARlet's client of the metadata server.

Given several SMS addresses (`HOST:PORT,HOST:PORT,...`: the SMS processes sharing one
etcd), it follows the leader: a follower's NotLeader refusal names the leader, which the
client calls from then on; an SMS that does not answer is skipped for the next address;
once every address was tried it backs off and tries again, within the call's timeout.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio

from spear.core.cluster import Cluster
from spear.core.sms_leader import leader_named_in
from spear.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotLeader,
    SpearError,
    Unavailable,
    error_from_code,
)
from spear.transport import _convert as cv
from spear.transport import _object_convert as oc
from spear.transport import _sms_convert as sc
from spear.transport._convert import optional
from spear.transport._gen.pb import sms_pb2
from spear.transport._status import (
    DEFAULT_MAX_MESSAGE_BYTES,
    client_errors,
    received_error_code,
)
from spear.transport.channels import NO_CREDENTIALS, Credentials
from spear.transport.services import Stub
from spear.transport.serving import parse_listen

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence

    from spear.core.cluster import (
        NodeRecord,
        ObjectLocation,
        Placement,
        PlacementQuery,
    )
    from spear.core.models import Resources, Task, TaskState
    from spear.core.object_index import ObjectRecord
    from spear.core.object_leases import Event as WatchEvent
    from spear.transport.aio_client import AioChannel

T = TypeVar("T")

SERVICE = sms_pb2.DESCRIPTOR.services_by_name["MetadataServer"]


class ObjectCommit(NamedTuple):
    """One commit of CommitObjects: as `SmsClient.commit_object`'s arguments."""

    key: str
    node: str
    address: str
    size: int
    expected_version: int | None
    value: bytes | None = None


def _commit_request(commit: ObjectCommit) -> sms_pb2.CommitObjectRequest:
    """`commit` on the wire (its fields are CommitObjectRequest's, by name)."""
    return sms_pb2.CommitObjectRequest(**commit._asdict())


_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 0.5


def parse_sms_addresses(addresses: str | Sequence[str]) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` (or a list of them) -> the addresses, each checked."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out = [a.strip() for a in items if a.strip()]
    if not out:
        raise InvalidArgument(f"no SMS address in {addresses!r} (expected HOST:PORT[,...])")
    for address in out:
        parse_listen(address)
    return list(dict.fromkeys(out))


class SmsClient(Cluster):
    """Calls spear.v1.MetadataServer at `address` (HOST:PORT, or several comma-separated:
    it follows their leader); errors are spear's own."""

    def __init__(
        self,
        address: str | Sequence[str],
        *,
        timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        self.addresses = parse_sms_addresses(address)
        self.address = self.addresses[0]  # the one calls go to now: the leader, if known
        self._timeout = timeout_s
        self._max_message_bytes = max_message_bytes
        self._credentials = credentials
        self._channels: dict[str, tuple[AioChannel, Stub]] = {}
        self.failovers = 0  # times a call moved to another address

    def _stub(self, address: str) -> Stub:
        opened = self._channels.get(address)
        if opened is None:
            from spear.transport.aio_client import AioChannel

            channel = AioChannel.to(
                address,
                self._credentials,
                max_message_bytes=self._max_message_bytes,
                name=f"SMS {address}",
            )
            opened = (channel, Stub(channel, SERVICE))
            self._channels[address] = opened
        return opened[1]

    def _move_to(self, address: str) -> None:
        if address not in self.addresses:
            self.addresses.append(address)
        self.address = address
        self.failovers += 1

    async def _call(self, call: Callable[[Stub], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self._timeout
        tried: set[str] = set()
        backoff = _BACKOFF_FIRST_S
        while True:
            address = self.address
            received_error_code.set(None)
            try:
                with client_errors(f"SMS {address}"):
                    return await call(self._stub(address))
            except DeadlineExceeded:
                raise
            except NotLeader as exc:
                leader = leader_named_in(exc)
                tried.add(address)
                if leader and leader not in tried:
                    self._move_to(leader)
                    continue
                if time.monotonic() >= deadline:
                    raise
                error: Unavailable = exc
            except Unavailable as exc:
                if len(self.addresses) == 1 or time.monotonic() >= deadline:
                    raise
                tried.add(address)
                error = exc
            untried = [a for a in self.addresses if a not in tried]
            if untried:
                self._move_to(untried[0])
                continue
            # Every address refused or failed: an election is under way, or all are down.
            if time.monotonic() + backoff >= deadline:
                raise error
            await anyio.sleep(backoff)
            backoff = min(2 * backoff, _BACKOFF_MAX_S)
            tried.clear()

    def _opts(self) -> dict[str, Any]:
        return {"timeout": self._timeout}

    async def register(self, node: NodeRecord) -> NodeRecord:
        req = sms_pb2.RegisterNodeRequest(node=sc.node_to_wire(node))
        return sc.node_from_wire(
            await self._call(lambda stub: stub.register_node(req, **self._opts()))
        )

    async def heartbeat(
        self, name: str, incarnation: str, free: Resources, running: int, queued: int
    ) -> NodeRecord | None:
        req = sms_pb2.HeartbeatRequest(
            name=name,
            incarnation=incarnation,
            free=cv.resources_to_wire(free),
            running_tasks=running,
            queued_tasks=queued,
        )
        resp = await self._call(lambda stub: stub.heartbeat(req, **self._opts()))
        return sc.node_from_wire(resp.node) if resp.known else None

    async def deregister(self, name: str, incarnation: str) -> bool:
        req = sms_pb2.DeregisterNodeRequest(name=name, incarnation=incarnation)
        resp: sms_pb2.DeregisterNodeResponse = await self._call(
            lambda stub: stub.deregister_node(req, **self._opts())
        )
        return resp.deregistered

    async def node(self, name: str) -> NodeRecord:
        req = sms_pb2.GetNodeRequest(name=name)
        return sc.node_from_wire(await self._call(lambda stub: stub.get_node(req, **self._opts())))

    async def nodes(self, *, live_only: bool = False) -> list[NodeRecord]:
        req = sms_pb2.ListNodesRequest(live_only=live_only)
        resp = await self._call(lambda stub: stub.list_nodes(req, **self._opts()))
        return [sc.node_from_wire(n) for n in resp.nodes]

    async def find_nodes(self, query: PlacementQuery) -> Placement:
        req = sc.query_to_wire(query)
        return sc.placement_from_wire(
            await self._call(lambda stub: stub.find_nodes(req, **self._opts()))
        )

    async def report_task(self, task: Task) -> Task:
        req = sms_pb2.ReportTaskRequest(task=cv.task_to_wire(task))
        return cv.task_from_wire(
            await self._call(lambda stub: stub.report_task(req, **self._opts()))
        )

    async def report_tasks(self, tasks: Sequence[Task]) -> None:
        wire: list[Any] = cv.tasks_to_wire(tasks)
        req = sms_pb2.ReportTasksRequest(tasks=wire)
        await self._call(lambda stub: stub.report_tasks(req, **self._opts()))

    async def task(self, task_id: str) -> Task:
        req = sms_pb2.LookupTaskRequest(task_id=task_id)
        return cv.task_from_wire(
            await self._call(lambda stub: stub.lookup_task(req, **self._opts()))
        )

    async def tasks(
        self, state: TaskState | None = None, limit: int | None = None, node: str | None = None
    ) -> list[Task]:
        found: list[Task] = []
        token = ""
        while True:  # page after page (core/task_pages.py): any history fits
            left = 0 if limit is None else limit - len(found)
            req = sms_pb2.ListClusterTasksRequest(
                state=cv.state_to_wire(state), limit=left, node=node or "", page_token=token
            )
            resp = await self._call(
                lambda stub, r=req: stub.list_cluster_tasks(r, **self._opts())  # type: ignore[misc]
            )
            found.extend(cv.task_from_wire(t) for t in resp.tasks)
            token = resp.next_page_token
            if not token or (limit is not None and len(found) >= limit):
                return found if limit is None else found[:limit]

    async def put_object_location(self, location: ObjectLocation) -> ObjectLocation:
        req = sc.location_to_wire(location)
        resp = await self._call(lambda stub: stub.put_object_location(req, **self._opts()))
        return sc.location_from_wire(resp)

    async def remove_object_location(self, key: str, node: str) -> bool:
        req = sms_pb2.RemoveObjectLocationRequest(key=key, node=node)
        resp: sms_pb2.RemoveObjectLocationResponse = await self._call(
            lambda stub: stub.remove_object_location(req, **self._opts())
        )
        return resp.removed

    async def locate_object(self, key: str) -> list[ObjectLocation]:
        req = sms_pb2.LocateObjectRequest(key=key)
        resp = await self._call(lambda stub: stub.locate_object(req, **self._opts()))
        return [sc.location_from_wire(x) for x in resp.locations]

    # -- the object index (docs/objects.md) ------------------------------------------

    async def commit_object(
        self,
        key: str,
        node: str,
        address: str,
        size: int,
        expected_version: int | None,
        value: bytes | None = None,
    ) -> ObjectRecord:
        # (`value`: a small value, kept in the index: docs/objects.md)
        req = _commit_request(ObjectCommit(key, node, address, size, expected_version, value))
        return oc.record_from_wire(
            await self._call(lambda stub: stub.commit_object(req, **self._opts()))
        )

    async def commit_objects(
        self, commits: Sequence[ObjectCommit]
    ) -> list[ObjectRecord | SpearError]:
        """Several commits in one call (CommitObjects), each a compare-and-swap of its
        own: per commit, its record or the error that refused it (nothing written)."""
        req = sms_pb2.CommitObjectsRequest(commits=[_commit_request(c) for c in commits])
        answer = await self._call(lambda stub: stub.commit_objects(req, **self._opts()))
        if len(answer.outcomes) != len(commits):
            raise Unavailable(f"the SMS answered {len(answer.outcomes)} of {len(commits)} commits")
        return [
            error_from_code(o.error_code, o.error)
            if o.error_code
            else oc.record_from_wire(o.record)
            for o in answer.outcomes
        ]

    async def lookup_object(self, key: str) -> ObjectRecord:
        req = sms_pb2.LookupObjectRequest(key=key)
        return oc.record_from_wire(
            await self._call(lambda stub: stub.lookup_object(req, **self._opts()))
        )

    async def hold_object(self, key: str, node: str, address: str, version: int) -> None:
        req = sms_pb2.HoldObjectRequest(key=key, node=node, address=address, version=version)
        await self._call(lambda stub: stub.hold_object(req, **self._opts()))

    async def change_object(
        self, key: str, change: str, count: int = 1, expected_version: int | None = None
    ) -> tuple[ObjectRecord, bool]:
        req = sms_pb2.ChangeObjectRequest(
            key=key, change=change, count=count, expected_version=expected_version
        )
        resp = await self._call(lambda stub: stub.change_object(req, **self._opts()))
        return oc.record_from_wire(resp.record), resp.deleted

    async def list_object_records(self, prefix: str = "") -> list[ObjectRecord]:
        req = sms_pb2.ListObjectRecordsRequest(prefix=prefix)
        resp = await self._call(lambda stub: stub.list_object_records(req, **self._opts()))
        return [oc.record_from_wire(r) for r in resp.objects]

    async def announce_objects(
        self, node: str, address: str, held: Sequence[tuple[str, int, int]]
    ) -> tuple[list[str], list[tuple[str, int]]]:
        """(stale keys, adopted (key, new version)s): see core/object_index.py announce."""
        req = sms_pb2.AnnounceObjectsRequest(
            node=node,
            address=address,
            held=[sms_pb2.AnnouncedObject(key=k, version=v, size=n) for k, v, n in held],
        )
        resp = await self._call(lambda stub: stub.announce_objects(req, **self._opts()))
        return list(resp.stale), [(a.key, a.version) for a in resp.adopted]

    async def collect_objects(
        self, grace_s: float, dropped: Sequence[tuple[str, int]] = ()
    ) -> list[ObjectRecord]:
        req = sms_pb2.CollectObjectsRequest(
            grace_s=grace_s,
            dropped=[sms_pb2.AnnouncedObject(key=k, version=v) for k, v in dropped],
        )
        resp = await self._call(lambda stub: stub.collect_objects(req, **self._opts()))
        return [oc.record_from_wire(r) for r in resp.objects]

    async def verify_token(self, token: str) -> sms_pb2.VerifyTokenResponse:
        """What the SMS knows of `token` (transport/cluster_tokens.py)."""
        req = sms_pb2.VerifyTokenRequest(token=token)
        return await self._call(lambda stub: stub.verify_token(req, **self._opts()))

    async def take_task_slot(
        self, namespace: str, task_id: str, *, until_released: bool = False
    ) -> bool:
        """Hold a slot of `namespace`'s cluster-wide task quota for `task_id`
        (core/cluster_quotas.py); False if the namespace has none."""
        req = sms_pb2.TaskSlotRequest(
            namespace=namespace, task_id=task_id, until_released=until_released
        )
        resp: sms_pb2.TaskSlotResponse = await self._call(
            lambda stub: stub.take_task_slot(req, **self._opts())
        )
        return resp.limited

    async def release_task_slot(self, namespace: str, task_id: str) -> None:
        req = sms_pb2.TaskSlotRequest(namespace=namespace, task_id=task_id)
        await self._call(lambda stub: stub.release_task_slot(req, **self._opts()))

    async def delete_cluster_tasks(
        self, task_ids: Sequence[str], namespace: str | None = None
    ) -> list[str]:
        """Forget finished tasks this node deleted (core/sms_retention.py); the ids
        the SMS deleted."""
        req = sms_pb2.DeleteClusterTasksRequest(task_ids=list(task_ids), namespace=namespace or "")
        resp = await self._call(lambda stub: stub.delete_cluster_tasks(req, **self._opts()))
        return list(resp.task_ids)

    async def keep_task_input(self, task_id: str, stdin: bytes) -> None:
        req = sms_pb2.KeepTaskInputRequest(task_id=task_id, stdin=stdin)
        await self._call(lambda stub: stub.keep_task_input(req, **self._opts()))

    def watch_objects(
        self, requests: AsyncIterable[tuple[str, int, int]]
    ) -> tuple[str, AsyncGenerator[WatchEvent]]:
        """(the SMS it goes to, its events) of a watch of the object index: `requests` are
        (node, ping, ack)s, events (pong, lease_s, seq, keys, a commit's new record or
        None) (core/object_leases.py).
        One address, no failover: a broken watch is the caller's to open again."""
        address = self.address
        stub = self._stub(address)

        async def events() -> AsyncGenerator[WatchEvent]:
            messages = (
                sms_pb2.ObjectWatchRequest(node=node, ping=ping, ack=ack)
                async for node, ping, ack in requests
            )
            try:
                with client_errors(f"SMS {address}"):
                    async for event in stub.watch_objects(messages):
                        record = optional(event, "record")
                        yield (
                            event.pong,
                            event.lease_s,
                            event.seq,
                            tuple(event.keys),
                            None if record is None else oc.record_from_wire(record),
                        )
            except NotLeader as exc:
                leader = leader_named_in(exc)
                if leader and leader != address:
                    self._move_to(leader)
                raise

        return address, events()

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.aclose()
