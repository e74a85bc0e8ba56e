"""The gRPC server of a SPEARlet: spear.v1.Spearlet over any `NodeAPI`, plus the standard
grpc.health.v1 and server reflection services beside it (grpc.aio: transport/serving.py).

`serve_spearlet(node, "127.0.0.1:0")` starts one on a Spearlet and reports the address it
bound; `SpearletServer` wraps any `NodeAPI` (a node that forwards or proxies, too).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

from spear._logging import logger
from spear.core.artifacts import ArtifactStore
from spear.core.node import Spearlet
from spear.errors import InvalidArgument, ResourceExhausted, SpearError
from spear.node.inprocess import InProcessNode
from spear.node.namespaced import scoped
from spear.node.paging import objects_page, page_size, tasks_page
from spear.node.quotas import QuotaFile, TaskSlots
from spear.transport import _convert as cv
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import (
    CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
)
from spear.transport.aio_server import GrpcServer
from spear.transport.auth import AUTH_DIR, check_may_run
from spear.transport.services import ServiceBase
from spear.transport.serving import Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from spear.core.models import FunctionSpec, Task, TaskResult
    from spear.node.api import BatchNode, NodeAPI
    from spear.node.cluster import ClusterNode

SERVICE_NAME = "spear.v1.Spearlet"
_RESOLVED_KEPT = 256  # resolved specs kept (SpearletService._resolve)


def _result_chunks(result: TaskResult) -> Iterator[pb.ResultChunk]:
    """A result on the wire: the task in the first chunk, its output across all."""
    for i, piece in enumerate(_chunks(result.output)):
        task = cv.task_to_wire(result.task) if i == 0 else None
        yield pb.ResultChunk(task=task, data=piece)


def _chunks(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class SpearletService(ServiceBase):
    """spear.v1.Spearlet: converts messages at the boundary and calls the `NodeAPI`."""

    SERVICE = pb.DESCRIPTOR.services_by_name["Spearlet"]

    def __init__(
        self,
        api: NodeAPI,
        artifacts: ArtifactStore,
        object_max_bytes: int,
        slots: TaskSlots | None = None,
    ) -> None:
        self.node_api = api
        self.artifacts = artifacts
        self.object_max_bytes = object_max_bytes
        self.slots = slots
        # Specs of uploaded modules as resolved here, by (the spec's bytes, the module's
        # path): a client calls the same spec again and again, and its conversion and the
        # path's replacement were ~20 us of every call.
        self._resolved: OrderedDict[tuple[bytes, str], FunctionSpec] = OrderedDict()

    @property
    def api(self) -> NodeAPI:
        """The node as the call being served may see it: its namespace's part."""
        return scoped(self.node_api, self.slots)

    # -- tasks -----------------------------------------------------------------------

    async def _resolve(self, request: pb.SubmitTaskRequest) -> FunctionSpec:
        if request.artifact_digest and request.HasField("spec"):
            # (the module must be here still: NotFound has the client upload it again)
            path = str(self.artifacts.path(request.artifact_digest))
            key = (request.spec.SerializeToString(deterministic=True), path)
            resolved = self._resolved.get(key)
            if resolved is None:
                resolved = dataclasses.replace(cv.spec_from_wire(request.spec), artifact=path)
                self._resolved[key] = resolved
                if len(self._resolved) > _RESOLVED_KEPT:
                    self._resolved.popitem(last=False)  # (the least recently used)
            else:
                self._resolved.move_to_end(key)
            check_may_run(resolved.runtime)
            return resolved
        spec = cv.spec_from_wire(cv.optional(request, "spec"))
        check_may_run(spec.runtime)
        if request.artifact_object:
            data, _ = await self.api.get_object(request.artifact_object)
            digest = hashlib.sha256(data).hexdigest()
            found = self.artifacts.find(digest)
            if found is None:

                async def one() -> AsyncIterator[bytes]:
                    yield data

                name = spec.artifact or request.artifact_object
                found = await self.artifacts.store(digest, name, len(data), one())
            return dataclasses.replace(spec, artifact=str(found))
        return spec

    async def _submit(self, request: pb.SubmitTaskRequest, *, wait: bool) -> Task:
        spec = await self._resolve(request)
        if request.idempotency_key:  # (a retried submit: the same task, node/idempotency.py)
            key = request.idempotency_key
            handle = await self.api.submit(spec, stdin=request.stdin or None, idempotency_key=key)
            return await self.api.wait(handle.id) if wait else handle.task
        if wait:
            task = await self.api.run(spec, stdin=request.stdin or None)
            logger.debug("task {} ran ({})", task.id, spec.artifact)
            return task
        handle = await self.api.submit(spec, stdin=request.stdin or None)
        logger.debug("task {} submitted ({})", handle.id, spec.artifact)
        return handle.task

    async def submit_task(self, message: pb.SubmitTaskRequest) -> pb.TaskInfo:
        return cv.task_to_wire(await self._submit(message, wait=message.wait))

    async def submit_tasks(self, message: pb.SubmitTasksRequest) -> pb.SubmitTasksResponse:
        """A batch: every task's spec in, every task's record (or refusal) out, in order."""
        # (nodes in this process have one; a namespace's view scopes it)
        run_many = (
            cast("BatchNode", self.api).run_many if hasattr(self.node_api, "run_many") else None
        )
        from spear.transport.trace_metadata import has_own_traceparents, in_trace

        traced = has_own_traceparents(message.tasks)  # (each task its own trace: one by one)
        if run_many is not None and message.tasks and all(r.wait for r in message.tasks):
            if not traced:
                return await _run_many(self._resolve, run_many, message)
        outcomes: list[Task | SpearError] = []
        for request in message.tasks:
            try:
                with in_trace(request.traceparent):
                    outcomes.append(await self._submit(request, wait=False))
            except SpearError as exc:
                outcomes.append(exc)
        waited: list[pb.SubmitOutcome] = []
        for request, outcome in zip(message.tasks, outcomes, strict=True):
            if isinstance(outcome, SpearError):
                waited.append(_refused_pb(outcome))
                continue
            task = await self.api.wait(outcome.id) if request.wait else outcome
            waited.append(_outcome_pb(task))
        return pb.SubmitTasksResponse(outcomes=waited)

    async def get_task(self, message: pb.GetTaskRequest) -> pb.TaskInfo:
        return cv.task_to_wire(await self.api.task(message.task_id))

    async def list_tasks(self, message: pb.ListTasksRequest) -> pb.ListTasksResponse:
        state = cv.state_from_wire(message.state)
        size = page_size(message.page_size, message.limit or None)
        found, token = await tasks_page(self.api, state, size, message.page_token)
        tasks = [cv.task_to_wire(t) for t in found]
        return pb.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def watch_task(self, message: pb.WatchTaskRequest) -> AsyncIterator[pb.TaskInfo]:
        async for task in self.api.watch(message.task_id):
            yield cv.task_to_wire(task)

    async def cancel_task(self, message: pb.CancelTaskRequest) -> pb.TaskInfo:
        task = await self.api.cancel(message.task_id, message.reason or "cancelled")
        logger.info("task {} cancelled by a client: {}", task.id, task.reason)
        return cv.task_to_wire(task)

    async def get_result(self, message: pb.GetResultRequest) -> AsyncIterator[pb.ResultChunk]:
        result = await self.api.result(message.task_id, wait=message.wait)
        for chunk in _result_chunks(result):
            yield chunk

    async def run_task(self, request: pb.SubmitTaskRequest) -> AsyncIterator[pb.ResultChunk]:
        """The task run, and its result streamed back (client.call on a node before
        CallTask)."""
        result, ran_at = await self._call(request)
        for i, chunk in enumerate(_result_chunks(result)):
            if i == 0 and ran_at:
                chunk.ran_at = ran_at  # (the client may call there next: Client.call)
            yield chunk

    async def call_task(self, request: pb.SubmitTaskRequest) -> pb.ResultChunk:
        """The task run, and its result in one reply (client.call): its whole output when
        that fits one chunk, else `fetch_output` (the client reads it with GetResult)."""
        result, ran_at = await self._call(request)
        reply = pb.ResultChunk(task=cv.task_to_wire(result.task), ran_at=ran_at or "")
        if len(result.output) <= CHUNK_BYTES:
            reply.data = result.output
        else:
            reply.fetch_output = True
        return reply

    async def _call(self, request: pb.SubmitTaskRequest) -> tuple[TaskResult, str | None]:
        """RunTask's and CallTask's run: the result, and the member that ran it when this
        node forwarded it (None: it ran here)."""
        spec = await self._resolve(request)
        result = await self.api.call(spec, stdin=request.stdin or None)
        logger.debug("task {} ran ({})", result.task.id, spec.artifact)
        forwarded_to = getattr(self.node_api, "forwarded_address", None)  # (a member's)
        ran_at = forwarded_to(result.task.id) if forwarded_to is not None else None
        return result, ran_at

    async def stream_logs(self, message: pb.StreamLogsRequest) -> AsyncIterator[pb.LogChunk]:
        async for chunk in self.api.logs(
            message.task_id, tuple(message.streams), follow=message.follow
        ):
            for i in range(0, max(len(chunk.data), 1), CHUNK_BYTES):
                piece = chunk.data[i : i + CHUNK_BYTES]
                yield pb.LogChunk(stream=chunk.stream, data=piece, offset=chunk.offset + i)

    async def exchange_stream(
        self, messages: AsyncIterator[pb.StreamMessage]
    ) -> AsyncIterator[pb.StreamMessage]:
        first = await anext(messages, None)
        submit = None if first is None else cv.optional(first, "submit")
        if submit is None:
            raise InvalidArgument("a stream exchange starts with a message submitting the task")
        spec = await self._resolve(submit)
        async with self.api.start_task(spec, stdin=submit.stdin or None) as task:
            logger.debug("task {} submitted with a caller stream ({})", task.id, spec.artifact)
            yield pb.StreamMessage(task=cv.task_to_wire(task.task))

            async def pump_in() -> None:
                async for message in messages:
                    if message.close:
                        break
                    await task.send(message.data)  # an empty message is a message too
                await task.close()

            # A plain asyncio task: an anyio task group must not span this generator's yields.
            inbound = asyncio.ensure_future(pump_in())
            try:
                async for data in task.messages():
                    yield pb.StreamMessage(data=data)
                final = await task.wait()
            finally:
                inbound.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await inbound
            yield pb.StreamMessage(task=cv.task_to_wire(final), close=True)

    # -- artifacts -------------------------------------------------------------------

    async def upload_artifact(self, messages: AsyncIterator[pb.ArtifactChunk]) -> pb.ArtifactRef:
        first = await anext(messages, None)
        if first is None:
            raise InvalidArgument("an artifact upload needs at least one message")

        async def data() -> AsyncIterator[bytes]:
            yield first.data
            async for chunk in messages:
                yield chunk.data

        path = await self.artifacts.store(first.digest, first.name, first.size, data())
        logger.info("artifact sha256:{} stored as {}", first.digest, path)
        return pb.ArtifactRef(digest=first.digest)

    async def has_artifact(self, message: pb.ArtifactRef) -> pb.HasArtifactResponse:
        return pb.HasArtifactResponse(present=self.artifacts.find(message.digest) is not None)

    # -- the node --------------------------------------------------------------------

    async def get_node_info(self, message: pb.GetNodeInfoRequest) -> pb.NodeInfo:
        return cv.node_to_wire(await self.api.node_info())

    # -- objects ---------------------------------------------------------------------

    async def put_object(self, messages: AsyncIterator[pb.ObjectChunk]) -> pb.ObjectInfo:
        first = await anext(messages, None)
        if first is None or not first.key:
            raise InvalidArgument("an object upload starts with a message naming its key")
        parts = [first.data]
        size = len(first.data)
        async for chunk in messages:
            size += len(chunk.data)
            if size > self.object_max_bytes:
                raise ResourceExhausted(
                    f"object exceeds the limit of {self.object_max_bytes} bytes"
                )
            parts.append(chunk.data)
        info = await self.api.put_object(
            first.key, b"".join(parts), expected_version=cv.optional(first, "expected_version")
        )
        return cv.object_to_wire(info)

    async def get_object(self, message: pb.GetObjectRequest) -> AsyncIterator[pb.ObjectChunk]:
        data, info = await self.api.get_object(message.key)
        for i, piece in enumerate(_chunks(data)):
            yield pb.ObjectChunk(
                key=message.key, data=piece, info=cv.object_to_wire(info) if i == 0 else None
            )

    async def list_objects(self, message: pb.ListObjectsRequest) -> pb.ListObjectsResponse:
        size = page_size(message.page_size)
        found, token = await objects_page(self.api, message.prefix, size, message.page_token)
        objects = [cv.object_to_wire(o) for o in found]
        return pb.ListObjectsResponse(objects=objects, next_page_token=token)

    async def delete_object(self, message: pb.DeleteObjectRequest) -> pb.DeleteObjectResponse:
        deleted = await self.api.delete_object(message.key, force=message.force)
        return pb.DeleteObjectResponse(deleted=deleted)

    async def add_object_ref(self, message: pb.ObjectKeyRequest) -> pb.ObjectInfo:
        return cv.object_to_wire(await self.api.add_object_ref(message.key))

    async def remove_object_ref(self, message: pb.ObjectKeyRequest) -> pb.ObjectInfo:
        return cv.object_to_wire(await self.api.remove_object_ref(message.key))

    async def pin_object(self, message: pb.ObjectKeyRequest) -> pb.ObjectInfo:
        return cv.object_to_wire(await self.api.pin_object(message.key))

    async def unpin_object(self, message: pb.ObjectKeyRequest) -> pb.ObjectInfo:
        return cv.object_to_wire(await self.api.unpin_object(message.key))

    async def delete_tasks(self, message: pb.DeleteTasksRequest) -> pb.DeleteTasksResponse:
        gone = await self.api.delete_tasks(
            list(message.task_ids),
            older_than_s=cv.optional(message, "older_than_s"),
            keep=cv.optional(message, "keep"),
        )
        if gone:
            logger.info("deleted {} finished task(s) at a client's request", len(gone))
        return pb.DeleteTasksResponse(task_ids=gone)


class SpearletServer(GrpcServer):
    """spear.v1.Spearlet, health and reflection on one port. `start` reports the address."""

    def __init__(
        self,
        api: NodeAPI,
        artifacts: ArtifactStore,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        object_max_bytes: int = 1024**3,
        extra_services: Sequence[ServiceBase] = (),
        security: Security,
        slots: TaskSlots | None = None,
    ) -> None:
        """`extra_services`: more services on the same port (`ServiceBase`s: SpearletPeer,
        SpearletVectors); `security`: who may call (transport/serving.py:
        `Security.for_data_dir(...)`)."""
        self.api = api
        super().__init__(
            SpearletService(api, artifacts, object_max_bytes, slots),
            extra_services,
            name=SERVICE_NAME,
            security=security,
            max_message_bytes=max_message_bytes,
        )


async def serve_spearlet(
    node: Spearlet | InProcessNode | ClusterNode,
    listen: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    extra_services: Sequence[ServiceBase] = (),
    security: Security | None = None,
) -> SpearletServer:
    """Serve a started node on `listen`; `.address` of the result is the bound address.

    Callers must authenticate: by default with a token of the node's data dir (its owner's
    is `DATA/auth/owner.token`), or a cluster certificate when `DATA/tls` has one."""
    api = InProcessNode(node) if isinstance(node, Spearlet) else node
    settings = api.node.settings
    if security is None:
        security = Security.for_data_dir(settings.data_dir)
    api.max_message_bytes = max_message_bytes
    artifacts = ArtifactStore(settings.data_dir / "artifacts", settings.object_max_bytes)
    slots = TaskSlots(QuotaFile(settings.data_dir / AUTH_DIR))
    server = SpearletServer(
        api,
        artifacts,
        max_message_bytes=max_message_bytes,
        object_max_bytes=settings.object_max_bytes,
        extra_services=extra_services,
        security=security,
        slots=slots,
    )
    if api.node.services.subtasks is not None:  # children hold their namespace's slots too
        api.node.services.subtasks.use_quota(slots)
    # Callers' trace contexts made current in their calls (docs/observability.md).
    server.traced = api.node.services.tracing is not None
    api.address = await server.start(listen)
    return server


__all__ = ["SERVICE_NAME", "SpearletServer", "SpearletService", "serve_spearlet"]


def _outcome_pb(task: Task) -> pb.SubmitOutcome:
    return pb.SubmitOutcome(task=cv.task_to_wire(task))


def _refused_pb(exc: SpearError) -> pb.SubmitOutcome:
    return pb.SubmitOutcome(error=pb.Error(code=exc.code, message=str(exc)))


async def _run_many(
    resolve: Callable[[pb.SubmitTaskRequest], Awaitable[FunctionSpec]],
    run_many: Callable[..., Awaitable[list[Task | SpearError]]],
    message: pb.SubmitTasksRequest,
) -> pb.SubmitTasksResponse:
    """SubmitTasks with every task waited for: run as one batch (`run_many`: records
    written together, placed as batches in a cluster), answered in order."""
    outcomes: list[Task | SpearError | None] = []
    specs: list[FunctionSpec] = []
    stdins: list[bytes | None] = []
    for request in message.tasks:
        try:
            specs.append(await resolve(request))
            stdins.append(request.stdin or None)
            outcomes.append(None)
        except SpearError as exc:
            outcomes.append(exc)
    ran = iter(await run_many(specs, stdins) if specs else [])
    ended = [next(ran) if outcome is None else outcome for outcome in outcomes]
    wire = iter(cv.tasks_to_wire([t for t in ended if not isinstance(t, SpearError)]))
    answer = [
        _refused_pb(done) if isinstance(done, SpearError) else pb.SubmitOutcome(task=next(wire))
        for done in ended
    ]
    return pb.SubmitTasksResponse(outcomes=answer)
