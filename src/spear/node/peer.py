"""SPEARlet to SPEARlet: the ForwardTask(s) service (peer.proto) and the pool of clients a
node keeps for the other nodes it forwards to or proxies for.

ForwardTasks takes a batch: the receiver accepts, in order, the tasks that fit its free
room now and refuses the rest (`refused`: the sender's view was stale, it places them
again); nothing is recorded for a refused task, so none is lost or run twice. With `wait`
it also takes the rest that could run here into a bounded backlog, and runs them all as
one `run_many` (waves as room appears, records written together); the answer carries
each one's end and result: a forwarded call costs one hop, not a hop to submit and
another to fetch the result, and a batch one hop, not one per wave."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING

import anyio

from spear.core.forwarding import BatchAnswer, Forwarded
from spear.core.models import Runtime
from spear.errors import InvalidArgument, NotFound, SpearError, Unavailable, error_from_code
from spear.node.client import Client
from spear.node.traced_forwarding import ForwardSpans
from spear.tracing.base import current_traceparent
from spear.transport import _convert as cv
from spear.transport import _sms_convert as sc
from spear.transport._gen.pb import peer_pb2, sms_pb2
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import (
    DEFAULT_MAX_MESSAGE_BYTES,
    client_errors,
    received_error_code,
)
from spear.transport.channels import NO_CREDENTIALS, Credentials
from spear.transport.services import ServiceBase, Stub

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from spear.core.artifacts import ArtifactStore
    from spear.core.cluster import NodeRecord
    from spear.core.models import FunctionSpec, Resources, Task
    from spear.core.scheduler import Scheduler
    from spear.node.inprocess import InProcessNode
    from spear.tracing.base import Tracing
    from spear.transport.aio_client import AioChannel
    from spear.transport.services import ServedMethod

PEER_SERVICE_NAME = "spear.v1.SpearletPeer"
FORWARD_TASKS = f"/{PEER_SERVICE_NAME}/ForwardTasks"
SERVICE = peer_pb2.DESCRIPTOR.services_by_name["SpearletPeer"]


class PeerService(ServiceBase):
    """spear.v1.SpearletPeer: adopt a task another node forwards."""

    SERVICE = SERVICE

    def __init__(
        self, scheduler: Scheduler, artifacts: ArtifactStore, local: InProcessNode | None = None
    ) -> None:
        self.scheduler = scheduler
        self.artifacts = artifacts
        self.local = local  # (reads a waited task's result)

    def aio_methods(self) -> dict[str, ServedMethod]:
        """ForwardTasks alone, as the members' grpc.aio port serves it (node/peer_aio.py)."""
        return {FORWARD_TASKS: self.served()[FORWARD_TASKS]}

    async def forward_task(self, message: peer_pb2.ForwardTaskRequest) -> pb.TaskInfo:
        task, spec = self._received(message)
        adopted = await self.scheduler.adopt(task, spec, message.stdin or None)
        return cv.task_to_wire(adopted)

    async def list_cluster_nodes(
        self, message: sms_pb2.ListNodesRequest
    ) -> sms_pb2.ListNodesResponse:
        nodes = await self.scheduler.cluster.nodes(live_only=message.live_only)
        return sms_pb2.ListNodesResponse(nodes=[sc.node_to_wire(n) for n in nodes])

    def _received(
        self, message: peer_pb2.ForwardTaskRequest | pb.ForwardedTask
    ) -> tuple[Task, FunctionSpec]:
        return self._received_many([message])[0]

    def _received_many(
        self, messages: Sequence[peer_pb2.ForwardTaskRequest | pb.ForwardedTask]
    ) -> list[tuple[Task, FunctionSpec]]:
        """Each forwarded task, and the spec it runs with here (the module as uploaded
        here); tasks that share a spec and a module share the one spec."""
        if not all(m.HasField("task") for m in messages):
            raise InvalidArgument("a forwarded task needs its task")
        tasks = cv.tasks_from_wire(m.task for m in messages)
        local: dict[tuple[int, str], FunctionSpec] = {}  # (by the shared spec's id)
        received = []
        for message, task in zip(messages, tasks, strict=True):
            spec = task.spec
            if digest := message.artifact_digest:
                here = local.get((id(spec), digest))
                if here is None:
                    path = self.artifacts.path(digest)
                    here = local[id(spec), digest] = dataclasses.replace(spec, artifact=str(path))
                spec = here
            received.append((task, spec))
        return received

    async def forward_tasks(self, message: pb.ForwardTasksRequest) -> pb.ForwardTasksResponse:
        received = self._received_many(message.tasks)
        scheduler = self.scheduler
        accepted_now = scheduler.accept_forwarded(
            [spec for _, spec in received], backlog=message.wait
        )
        accepted = [i for i, ok in enumerate(accepted_now.taken) if ok]
        outcomes = [pb.ForwardOutcome(refused=True) for _ in received]
        # (the first ones taken were promised room: see Scheduler.keep_promise)
        promises = {i: j for j, i in enumerate(accepted[: len(accepted_now.promised)])}

        def admitted(i: int) -> None:
            if (j := promises.get(i)) is not None:
                scheduler.keep_promise(accepted_now, j)

        try:
            if message.wait:
                await self._run_waited(message, received, accepted, outcomes, admitted)
            else:
                await self._adopt(message, received, accepted, outcomes, admitted)
        finally:
            scheduler.settle_forwarded(accepted_now)
        free = scheduler.node.controller.free - scheduler.promised
        return pb.ForwardTasksResponse(outcomes=outcomes, free=_resources_pb(free))

    async def _adopt(
        self,
        message: pb.ForwardTasksRequest,
        received: Sequence[tuple[Task, FunctionSpec]],
        accepted: Sequence[int],
        outcomes: list[pb.ForwardOutcome],
        admitted: Callable[[int], None],
    ) -> None:
        controller = self.scheduler.node.controller
        for i in accepted:
            task, spec = received[i]
            try:
                started = await controller.submit(  # (as forwarded: its attempts go on)
                    spec, stdin=message.tasks[i].stdin or None, task_id=task.id, previous=task
                )
            except SpearError as exc:
                outcomes[i] = _error(exc)
                continue
            finally:  # (its room is the controller's now, or it will not run here)
                admitted(i)
            self.scheduler.note(started, "adopted", started.node or "")
            outcomes[i] = pb.ForwardOutcome(task=_task_pb(started))

    async def _run_waited(
        self,
        message: pb.ForwardTasksRequest,
        received: Sequence[tuple[Task, FunctionSpec]],
        accepted: Sequence[int],
        outcomes: list[pb.ForwardOutcome],
        admitted: Callable[[int], None],
    ) -> None:
        """Run the accepted tasks to their ends: those without stdin as one `run_many`
        (records written together), the others one by one beside it; `admitted(i)` as
        each one's room is reserved."""
        controller = self.scheduler.node.controller
        plain = [i for i in accepted if not message.tasks[i].stdin]
        with_stdin = [i for i in accepted if message.tasks[i].stdin]
        if len(plain) == 1:  # one task: the quickest path, run in this call's task
            with_stdin, plain = plain + with_stdin, []
        ended: dict[int, Task] = {}

        async def many() -> None:
            refusals: dict[str, SpearError] = {}
            index = {received[i][0].id: i for i in plain}
            tasks = await controller.run_many(
                [received[i][1] for i in plain],
                task_ids=[received[i][0].id for i in plain],
                refusals=refusals,
                hooks_later=True,  # (as `one` below)
                parents=None
                if controller.tracing is None
                else [received[i][0].traceparent for i in plain],
                on_admitted=lambda task: admitted(index[task.id]),
            )
            for i, task in zip(plain, tasks, strict=True):
                refused = refusals.get(task.id)
                if refused is None:
                    ended[i] = task
                else:  # a bad module: refused as a single forwarded task is
                    outcomes[i] = _error(refused)

        async def one(i: int) -> None:
            task, spec = received[i]
            if task.traceparent:  # its spans join its trace (docs/observability.md)
                current_traceparent.set(task.traceparent)
            try:
                stdin = message.tasks[i].stdin or None
                # Answered once its end is recorded: keeping its result (a commit with
                # the SMS) goes on after the answer, off the forwarded call's path.
                ended[i] = await controller.run(
                    spec,
                    stdin=stdin,
                    task_id=task.id,
                    hooks_later=True,
                    on_created=lambda _task: admitted(i),  # (its room reserved by now, or queued)
                )
            except SpearError as exc:
                outcomes[i] = _error(exc)

        async with anyio.create_task_group() as tg:
            if plain:
                tg.start_soon(many)
            for i in with_stdin:
                tg.start_soon(one, i)
        for i, task in ended.items():
            output = b""
            if message.output and self.local is not None:
                output = await self.local.output(task.id)
            outcomes[i] = pb.ForwardOutcome(task=_task_pb(task), output=output)


def _error(exc: SpearError) -> pb.ForwardOutcome:
    return pb.ForwardOutcome(error=pb.Error(code=exc.code, message=str(exc)))


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
        self._channels: dict[str, tuple[AioChannel, Stub]] = {}
        self._sent: dict[tuple[str, str], tuple[tuple[int, int], str]] = {}
        self.tracing: Tracing | None = None  # a traced node's (node/assembly.py)
        # Forward over grpc.aio to peers that serve it (set by node/peer_aio.py); per node
        # address and incarnation, its grpc.aio channel (None: it serves none).
        self.use_aio = False
        self._aio: dict[tuple[str, str], AioChannel | None] = {}

    def client(self, address: str) -> Client:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = Client(
                address, credentials=self._credentials, max_message_bytes=self._max, retries=0
            )
        return client

    def _peer(self, address: str) -> Stub:
        found = self._channels.get(address)
        if found is None:
            from spear.transport.aio_client import AioChannel

            channel = AioChannel.to(address, self._credentials, max_message_bytes=self._max)
            stub = Stub(channel, SERVICE)
            found = self._channels[address] = (channel, stub)
        return found[1]

    async def forward_batch(
        self,
        node: NodeRecord,
        tasks: Sequence[tuple[Task, bytes | None]],
        *,
        wait: bool = False,
        output: bool = False,
    ) -> BatchAnswer:
        """Hand `tasks` to `node` in one ForwardTasks call (each module uploaded first,
        once per node); with `wait`, answered once the accepted ones have finished (with
        their results if `output`)."""
        spans = None if self.tracing is None else ForwardSpans(self.tracing, node.name, tasks)
        if spans is not None:  # (each task sent naming its forward span)
            tasks = spans.tasks
        infos = cv.tasks_to_wire([task for task, _ in tasks])  # (each with its spec)
        with spans.open() if spans else contextlib.nullcontext():
            metadata = None if spans is None else spans.metadata
            request = await self._batch_request(node, tasks, infos, wait, output)
            try:
                answer = await self._forward(
                    node, request, deadline_s=None if wait else 30, metadata=metadata
                )
            except NotFound as exc:
                # A module the node had lost (removed by hand): none of the batch was
                # taken (the receiver finds every module first), so sent again whole.
                if not self._lost_upload(node.address, exc):
                    raise
                request = await self._batch_request(node, tasks, infos, wait, output)
                answer = await self._forward(
                    node, request, deadline_s=None if wait else 30, metadata=metadata
                )
        if len(answer.outcomes) != len(tasks):
            raise Unavailable(f"node {node.name} answered {len(answer.outcomes)} of {len(tasks)}")
        return BatchAnswer(
            outcomes=tuple(
                _outcome(o, task.spec) for o, (task, _) in zip(answer.outcomes, tasks, strict=True)
            ),
            free=cv.resources_from_wire(answer.free),
        )

    async def _batch_request(
        self,
        node: NodeRecord,
        tasks: Sequence[tuple[Task, bytes | None]],
        infos: list[pb.TaskInfo],
        wait: bool,
        output: bool,
    ) -> pb.ForwardTasksRequest:
        """The ForwardTasks request for `tasks`, each module uploaded to `node` first."""
        requests = []
        digests: dict[str, str] = {}
        for (task, stdin), info in zip(tasks, infos, strict=True):
            spec = task.spec
            digest = digests.get(spec.artifact)
            if digest is None:
                digest = ""
                if spec.runtime is Runtime.WASM:
                    digest = await self._uploaded(node.address, spec.artifact)
                digests[spec.artifact] = digest
            requests.append(pb.ForwardedTask(task=info, artifact_digest=digest, stdin=stdin or b""))
        return pb.ForwardTasksRequest(
            tasks=requests, wait=wait, output=output, from_node=self.own_name
        )

    def _lost_upload(self, address: str, error: BaseException) -> bool:
        """Whether `error` is the node at `address` saying it lost a module sent to it:
        then every module sent there is forgotten as sent, to be uploaded again."""
        if not self.client(address)._lost_upload(error):
            return False
        for key in [key for key in self._sent if key[0] == address]:
            del self._sent[key]
        return True

    async def _forward(
        self,
        node: NodeRecord,
        request: pb.ForwardTasksRequest,
        *,
        deadline_s: float | None,
        metadata: dict[str, str] | None,
    ) -> pb.ForwardTasksResponse:
        """One ForwardTasks call: on `node`'s second port where it serves one (grpc.aio
        there), else on its node port (grpc.aio as well)."""
        aio = await self._aio_channel(node) if self.use_aio else None
        if aio is not None:
            call = aio.unary(
                FORWARD_TASKS,
                pb.ForwardTasksRequest.SerializeToString,
                pb.ForwardTasksResponse.FromString,
            )
            answered: pb.ForwardTasksResponse = await call(
                request, deadline_s=deadline_s, metadata=metadata
            )
            return answered
        received_error_code.set(None)
        with client_errors(node.address):
            answer: pb.ForwardTasksResponse = await self._peer(node.address).forward_tasks(
                request, timeout=deadline_s, metadata=metadata
            )
        return answer

    async def warm(self, node: NodeRecord) -> None:
        """Open now the channels a first forward to `node` would open (to its node port,
        then to its peer port), so that forward does not wait for their handshakes. With
        `peer_transport = "node-port"` only the node port's client is opened: forwards go
        over it."""
        if not self.use_aio:  # (the node's info: the channel its uploads go over)
            await self.client(node.address).node_info()
            return
        aio = await self._aio_channel(node)  # (asks the node's info first, the same way)
        if aio is not None:
            await aio.ready()

    async def _aio_channel(self, node: NodeRecord) -> AioChannel | None:
        """The grpc.aio channel to `node`'s peer port, which its NodeInfo names (asked once
        per incarnation: a restarted node serves on another port); None if it has none."""
        key = (node.address, node.incarnation)
        if key in self._aio:
            return self._aio[key]
        peer_address = (await self.client(node.address).node_info()).peer_address
        if key in self._aio:  # (made by another forward while this one asked)
            return self._aio[key]
        for old in [k for k in self._aio if k[0] == node.address]:  # an earlier incarnation
            stale = self._aio.pop(old)
            if stale is not None:
                await stale.aclose()
        from spear.transport.aio_client import AioChannel

        found = self._aio[key] = (
            AioChannel(peer_address, self._credentials, max_message_bytes=self._max)
            if peer_address
            else None
        )
        return found

    async def _uploaded(self, address: str, path: str) -> str:
        """The digest of the module at `path`, uploaded to `address` unless it was sent
        there already unchanged ("" if there is no such file: the receiver says so). A
        stat (short) instead of hashing the file on a thread per forward: ~0.2 ms less."""
        try:
            st = os.stat(path)
        except OSError:
            return ""
        stamp = (st.st_mtime_ns, st.st_size)
        sent = self._sent.get((address, path))
        if sent is not None and sent[0] == stamp:
            return sent[1]
        digest = await self.client(address).upload(path)
        if len(self._sent) >= 10_000:
            self._sent.clear()
        self._sent[(address, path)] = (stamp, digest)
        return digest

    async def cluster_nodes(self, address: str) -> list[NodeRecord]:
        """The cluster's nodes, asked of the SPEARlet at `address`."""
        received_error_code.set(None)
        with client_errors(address):
            answer = await self._peer(address).list_cluster_nodes(
                sms_pb2.ListNodesRequest(), timeout=10
            )
        return [sc.node_from_wire(n) for n in answer.nodes]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        for channel, _ in self._channels.values():
            await channel.aclose()
        aio = [c for c in self._aio.values() if c is not None]
        self._clients.clear()
        self._channels.clear()
        self._aio.clear()
        for made in aio:
            await made.aclose()


def _outcome(o: pb.ForwardOutcome, spec: FunctionSpec) -> Forwarded:
    if o.HasField("error"):
        return Forwarded(error=error_from_code(o.error.code, o.error.message))
    if o.refused or not o.HasField("task"):
        return Forwarded(refused=True)
    return Forwarded(task=cv.task_from_wire(o.task, spec), output=o.output)


def _task_pb(task: Task) -> pb.TaskInfo:
    """A task taken here, for the answer: without its spec (the sender has it)."""
    return cv.task_to_wire(task, with_spec=False)


def _resources_pb(free: Resources) -> pb.Resources:
    return cv.resources_to_wire(free)
