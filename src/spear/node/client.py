"""`spear.Client`: a node daemon over gRPC, with the same methods as the CLI's commands.

    async with spear.Client("127.0.0.1:7070", token=TOKEN) as client:
        handle = await client.submit(spear.FunctionSpec("hello.wasm", args=("world",)))
        async for chunk in handle.logs():
            print(chunk.data.decode(), end="")
        result = await handle          # TaskResult: the finished task and its stdout

TOKEN is a credential the node accepts (docs/security.md): its owner's is in the node's
`DATA/auth/owner.token`; `spear token create NAME --role ROLE` makes one for anyone else.
A module given by a local path is uploaded to the node (in chunks, once per content: the
node keeps artifacts by sha256); a path that does not exist here is taken as the node's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
from anyio.abc import AsyncResource

from spear.core.models import LogChunk, NodeInfo, ObjectInfo, Runtime, TaskResult, new_task_id
from spear.errors import (
    InvalidArgument,
    NoSpace,
    NotFound,
    PermissionDenied,
    SpearError,
    StorageError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_from_code,
)
from spear.node.api import StreamingTask, TaskHandle, read_own_stdin, run_attached
from spear.node.failover import DEFAULT_RETRIES, Failover
from spear.node.object_route import ObjectRoute
from spear.node.traced_calls import traced_batch, traced_submit
from spear.transport import _convert as cv
from spear.transport._gen.pb import spearlet_pb2 as pb
from spear.transport._status import (
    CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    client_errors,
)
from spear.transport.channels import Credentials
from spear.transport.services import Cardinality, Stub

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from spear.core.models import FunctionSpec, Task, TaskState
    from spear.tracing.base import Tracing
    from spear.transport.aio_client import AioChannel
    from spear.transport.aio_streams import AioCallStream

_T = TypeVar("_T")
SERVICE = pb.DESCRIPTOR.services_by_name["Spearlet"]
_RAN_AT_KEPT = 1024  # specs whose forwarded call's member is remembered (`call`)
_MEMBER_CONNECT_S = 1.0  # how long a call waits for a channel to that member
# What a node says of a module it no longer has (core/artifacts.py: `ArtifactStore.path`).
_LOST_ARTIFACT = re.compile(r"no artifact sha256:([0-9a-f]{64}) on this node")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    try:
        if not sep or not host:
            raise ValueError
        return host.strip("[]"), int(port)
    except ValueError:
        raise InvalidArgument(f"a node address is HOST:PORT, got {address!r}") from None


class _ExchangeStream:
    """A task's caller stream carried by one ExchangeStream call (a `CallerStream`); the
    task's final record, sent at the end, updates the handle's `task`."""

    def __init__(self, address: str, task_id: str, stream: AioCallStream) -> None:
        self._address = address
        self._task_id = task_id
        self._stream = stream
        self._input_closed = False
        self.ended = False
        self.handle: StreamingTask | None = None

    async def send(self, message: bytes | str) -> None:
        if self._input_closed:
            raise InvalidArgument(f"the input of task {self._task_id} is already closed")
        data = message.encode() if isinstance(message, str) else bytes(message)
        with client_errors(self._address):
            await self._stream.send_message(pb.StreamMessage(data=data))

    async def close(self) -> None:
        if self._input_closed:
            return
        self._input_closed = True
        with client_errors(self._address):
            await self._stream.send_message(pb.StreamMessage(close=True), end=True)

    async def receive(self) -> bytes | None:
        if self.ended:
            return None
        with client_errors(self._address):
            message = await self._stream.recv_message()
        if message is None or message.close:
            self.ended = True
            if message is not None and message.HasField("task") and self.handle is not None:
                self.handle.task = cv.task_from_wire(message.task)
            return None
        data: bytes = message.data
        return data


class Client(AsyncResource):
    """A SPEARlet daemon reached over gRPC (implements the `NodeAPI`).

    `token`: the credential to send (a node's owner finds theirs in DATA/auth/owner.token);
    `credentials`: a token and/or the TLS files of a cluster (transport/channels.py).
    `timeout`: seconds each call may take (None: no limit; a wait is one call too).
    `max_message_bytes`: the largest message sent or accepted (the node has its own).

    `address` may name several nodes, `HOST:PORT,HOST:PORT,...`: a call that finds its
    node unavailable (down, unreachable, draining) is tried again on the next one, after
    a back-off (node/failover.py), up to `retries` times; calls that change nothing twice
    (reads, cancel, submits, which carry an idempotency key, and unconditional object
    puts) are retried, others not.

    `tracing` (a `spear.tracing.otel.OtelTracing`, docs/observability.md): each submit,
    run and call is a `spear.submit` span whose context the node's spans join.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        credentials: Credentials | None = None,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = DEFAULT_RETRIES,
        tracing: Tracing | None = None,
    ) -> None:
        self._failover = Failover(address, retries)
        for each in self._failover.addresses:
            _split_address(each)  # (each one checked now, not when failed over to)
        self.address = address = self._failover.address
        if credentials is None:
            credentials = Credentials(token=token)
        elif token is not None:
            credentials = dataclasses.replace(credentials, token=token)
        self._credentials = credentials
        self._host, self._port = _split_address(address)
        self._timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._channel: AioChannel | None = None
        self._stub_: Stub | None = None
        self._uploaded: set[str] = set()
        self._digests: dict[tuple[str, int, int], str] = {}
        # The wire form of the specs sent lately (with the module's name as the node
        # knows it, when it is uploaded): building one costs more than the rest of a call.
        self._wire_specs: dict[tuple[FunctionSpec, bool], Any] = {}
        self._objects = ObjectRoute(credentials)  # object bytes: the transfer service
        # Traces (docs/observability.md): a submit's span, its context sent with the call.
        self.tracing = tracing
        # Forwarded calls (see `call`): the member that ran each spec's last call, and a
        # client per such member; `_follows`: whether this client sends calls there.
        self._ran_at: dict[FunctionSpec, str] = {}
        self._members: dict[str, Client] = {}
        self._refused: set[str] = set()  # members that did not accept this client
        self._follows = True
        # Nodes that answered CallTask with UNIMPLEMENTED (older ones): RunTask there.
        self._streamed_calls: set[str] = set()

    @property
    def _stub(self) -> Stub:
        if self._stub_ is None:
            from spear.transport.aio_client import AioChannel

            self._channel = AioChannel(
                self.address,
                self._credentials,
                max_message_bytes=self._max_message_bytes,
                traced=self.tracing is not None,
            )
            self._stub_ = Stub(self._channel, SERVICE, timeout=self._timeout)
        return self._stub_

    def _errors(self) -> Any:
        return client_errors(self.address)

    async def aclose(self) -> None:
        members, self._members = list(self._members.values()), {}
        for member in members:
            await member.aclose()
        await self._objects.aclose()
        channel, self._channel = self._channel, None
        self._stub_ = None
        if channel is not None:
            await channel.aclose()

    async def _retrying(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()`, again on the next node after a back-off while nodes are unavailable
        (node/failover.py); `call` reads `self._stub` afresh each time."""
        attempt = 0
        uploaded_again = False
        while True:
            try:
                with self._errors():
                    return await call()
            except NotFound as exc:
                if uploaded_again or not self._lost_upload(exc):
                    raise
                uploaded_again = True
                continue  # (at once, to the same node: `call` uploads the module again)
            except (Unavailable, StorageError, NoSpace) as exc:
                if not self._failover.should_retry(exc, attempt):
                    raise
            await self.aclose()  # the next call opens a channel to the next node
            self.address = self._failover.next_address()
            self._host, self._port = _split_address(self.address)
            self._uploaded.clear()  # the next node may lack what this one had
            await anyio.sleep(self._failover.backoff_s(attempt))
            attempt += 1

    # -- artifacts -------------------------------------------------------------------

    def _lost_upload(self, error: BaseException) -> bool:
        """Whether `error` is the node saying it no longer has a module this client
        uploaded to it (its artifacts removed by hand, say): then forgotten as uploaded,
        so that the next request sends it again."""
        digest = self._lost_digest(error)
        if digest is None:
            return False
        self._uploaded.discard(digest)
        return True

    def _lost_digest(self, error: object) -> str | None:
        found = _LOST_ARTIFACT.search(str(error)) if isinstance(error, NotFound) else None
        if found is None or found.group(1) not in self._uploaded:
            return None
        return found.group(1)

    def _digest(self, path: str) -> tuple[str, int] | None:
        """(sha256, size) of a local file, None if `path` is not one (hashed once per
        version of the file)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (path, st.st_mtime_ns, st.st_size)
        digest = self._digests.get(key)
        if digest is None:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            self._digests[key] = digest
        return digest, st.st_size

    def _known_digest(self, path: str) -> tuple[str, int] | None:
        """(sha256, size) of `path` if this version of it was hashed before (one stat)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        digest = self._digests.get((path, st.st_mtime_ns, st.st_size))
        return None if digest is None else (digest, st.st_size)

    async def upload(self, path: str) -> str:
        """Send a local file to the node unless it has it already; returns its sha256."""
        found = await anyio.to_thread.run_sync(self._digest, path)
        if found is None:
            raise NotFound(f"no such file: {path}")
        return await self._upload(path, *found)

    async def _upload(self, path: str, digest: str, size: int) -> str:
        if digest in self._uploaded:
            return digest
        with self._errors():
            present = await self._stub.has_artifact(pb.ArtifactRef(digest=digest))
            if not present.present:
                await self._stub.upload_artifact(self._artifact_chunks(path, digest, size))
        self._uploaded.add(digest)
        return digest

    @staticmethod
    def _artifact_chunks(path: str, digest: str, size: int) -> Iterator[pb.ArtifactChunk]:
        name = os.path.basename(path)
        with open(path, "rb") as f:
            first = True
            while True:
                data = f.read(CHUNK_BYTES)
                if first:
                    yield pb.ArtifactChunk(digest=digest, name=name, size=size, data=data)
                    first = False
                elif data:
                    yield pb.ArtifactChunk(data=data)
                if len(data) < CHUNK_BYTES:
                    return

    async def _request(
        self, spec: FunctionSpec, stdin: bytes | None, wait: bool
    ) -> pb.SubmitTaskRequest:
        """The SubmitTaskRequest for `spec`, its module uploaded first if the node lacks
        it."""
        digest = None
        found = None
        if spec.runtime is Runtime.WASM:
            found = self._known_digest(spec.artifact)
            if found is None:  # hashing a file may take a while: on a thread
                found = await anyio.to_thread.run_sync(self._digest, spec.artifact)
        key = (spec, found is not None)
        wire = self._wire_specs.get(key)
        if found is not None:  # a local module: upload it (once); else a path on the node
            digest = await self._upload(spec.artifact, *found)
            if wire is None:
                wire = cv.spec_to_wire(
                    dataclasses.replace(spec, artifact=os.path.basename(spec.artifact))
                )
        elif wire is None:
            wire = cv.spec_to_wire(spec)
        if len(self._wire_specs) >= 1024:
            self._wire_specs.clear()
        self._wire_specs[key] = wire  # (never changed once made: copied into the request)
        return pb.SubmitTaskRequest(
            spec=wire, artifact_digest=digest, stdin=stdin or b"", wait=wait
        )

    # -- tasks -----------------------------------------------------------------------

    async def submit(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> TaskHandle:
        """Start a task on the node; the handle's `result()` (or `await handle`) waits.

        The submit carries an idempotency key (a new one unless given): retried after a
        lost reply or on another node, it returns the task the first attempt made."""
        key = idempotency_key or new_task_id()

        async def attempt() -> Any:
            request = await self._request(spec, stdin, wait=False)
            request.idempotency_key = key
            return await self._stub.submit_task(request)

        if self.tracing is not None:
            return await traced_submit(self.tracing, "submit", spec, self._submitted(attempt))
        return TaskHandle(self, cv.task_from_wire(await self._retrying(attempt)))

    async def _submitted(self, attempt: Callable[[], Awaitable[Any]]) -> TaskHandle:
        return TaskHandle(self, cv.task_from_wire(await self._retrying(attempt)))

    @property
    def in_process(self) -> bool:
        return False

    async def run(
        self,
        spec: FunctionSpec,
        *,
        stdin: bytes | Literal["inherit"] | None = None,
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
        on_created: Callable[[Task], None] | None = None,
    ) -> Task:
        """Submit a task and return it finished, in one call (with output sinks or
        `on_created`: submitted, its logs relayed as they grow, then waited for)."""
        stdin = read_own_stdin(stdin)
        if stdout or stderr or on_created:
            return await run_attached(
                self, spec, stdin=stdin, stdout=stdout, stderr=stderr, on_created=on_created
            )
        key = new_task_id()

        async def attempt() -> Any:
            request = await self._request(spec, stdin, wait=True)
            request.idempotency_key = key
            return await self._stub.submit_task(request)

        if self.tracing is not None:
            return await traced_submit(self.tracing, "run", spec, self._ran(attempt))
        return cv.task_from_wire(await self._retrying(attempt))

    async def _ran(self, attempt: Callable[[], Awaitable[Any]]) -> Task:
        return cv.task_from_wire(await self._retrying(attempt))

    async def submit_many(
        self, specs: Sequence[FunctionSpec], *, wait: bool = False
    ) -> list[Task | SpearError]:
        """Submit many tasks in one call; each entry is the task, or why it was refused."""
        out = await self._sent_many(specs, wait)
        lost = {
            i: digest for i, outcome in enumerate(out) if (digest := self._lost_digest(outcome))
        }
        if lost:  # modules the node no longer had: forgotten, and sent again with these
            self._uploaded -= set(lost.values())
            again = await self._sent_many([specs[i] for i in lost], wait)
            for i, outcome in zip(lost, again, strict=True):
                out[i] = outcome
        return out

    async def _sent_many(
        self, specs: Sequence[FunctionSpec], wait: bool
    ) -> list[Task | SpearError]:
        requests = [await self._request(spec, None, wait) for spec in specs]
        if self.tracing is not None:  # (each task its own span and trace)
            send = functools.partial(self._submitted_many, requests)
            return await traced_batch(self.tracing, "submit_many", specs, requests, send)
        return await self._submitted_many(requests)

    async def _submitted_many(
        self, requests: list[pb.SubmitTaskRequest]
    ) -> list[Task | SpearError]:
        """SubmitTasks (a batch: every spec out, every record back)."""
        with self._errors():
            answer = await self._stub.submit_tasks(pb.SubmitTasksRequest(tasks=requests))
        out: list[Task | SpearError] = []
        tasks = iter(cv.tasks_from_wire(o.task for o in answer.outcomes if o.HasField("task")))
        for outcome in answer.outcomes:
            if outcome.HasField("task"):
                out.append(next(tasks))
            elif outcome.HasField("error"):
                out.append(error_from_code(outcome.error.code, outcome.error.message))
            else:
                out.append(error_from_code("internal", "no outcome"))
        return out

    @contextlib.asynccontextmanager
    async def start_task(
        self, spec: FunctionSpec, *, stdin: bytes | None = None
    ) -> AsyncIterator[StreamingTask]:
        """Start a task with its caller stream (one bidirectional call for its lifetime):
        `async with client.start_task(spec) as t: await t.send(b"hi"); await t.receive()`."""
        with self._errors():
            async with contextlib.AsyncExitStack() as opened:
                try:
                    stream, first = await self._exchange(opened, spec, stdin)
                except NotFound as exc:
                    if not self._lost_upload(exc):
                        raise
                    await opened.aclose()  # (nothing started: the module sent again)
                    stream, first = await self._exchange(opened, spec, stdin)
                if first is None or not first.HasField("task"):
                    raise SpearError(f"node {self.address} did not start the task")
                task = cv.task_from_wire(first.task)
                exchange = _ExchangeStream(self.address, task.id, stream)
                handle = StreamingTask(self, task, exchange)
                exchange.handle = handle
                try:
                    yield handle
                finally:
                    if not exchange.ended:
                        await stream.cancel()
                    else:  # the node ends the call after its last message: let it
                        while await stream.recv_message() is not None:
                            pass

    async def _exchange(
        self, opened: contextlib.AsyncExitStack, spec: FunctionSpec, stdin: bytes | None
    ) -> tuple[AioCallStream, pb.StreamMessage | None]:
        """An ExchangeStream call opened in `opened`, the task's submit sent, and the
        node's first answer (a spear error if it refused the task)."""
        request = await self._request(spec, stdin, wait=False)
        self._stub  # noqa: B018 - opens the channel
        assert self._channel is not None
        with self._errors():
            stream = await opened.enter_async_context(
                self._channel.request(
                    "/spear.v1.Spearlet/ExchangeStream",
                    Cardinality.STREAM_STREAM,
                    pb.StreamMessage,
                    pb.StreamMessage,
                    timeout=self._timeout,
                )
            )
            await stream.send_message(pb.StreamMessage(submit=request))
            return stream, await stream.recv_message()

    async def task(self, task_id: str) -> Task:
        request = pb.GetTaskRequest(task_id=task_id)
        return cv.task_from_wire(await self._retrying(lambda: self._stub.get_task(request)))

    async def tasks(self, state: TaskState | None = None, limit: int | None = None) -> list[Task]:
        found: list[Task] = []
        token = ""
        while True:  # page after page (node/paging.py): any history fits
            left = 0 if limit is None else limit - len(found)
            request = pb.ListTasksRequest(
                state=cv.state_to_wire(state), limit=left, page_token=token
            )

            def page(r: pb.ListTasksRequest = request) -> Awaitable[pb.ListTasksResponse]:
                listed: Awaitable[pb.ListTasksResponse] = self._stub.list_tasks(r)
                return listed  # (the stub of whichever node is current)

            answer = await self._retrying(page)
            found.extend(cv.task_from_wire(t) for t in answer.tasks)
            token = answer.next_page_token
            if not token or (limit is not None and len(found) >= limit):
                return found if limit is None else found[:limit]

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        with self._errors():
            async for info in self._stub.watch_task(pb.WatchTaskRequest(task_id=task_id)):
                yield cv.task_from_wire(info)

    async def wait(self, task_id: str) -> Task:
        async def watched() -> Task | None:
            last = None
            async for task in self.watch(task_id):
                last = task
            return last

        last = await self._retrying(watched)
        if last is None:  # pragma: no cover - the node always sends the current state
            return await self.task(task_id)
        return last

    async def cancel(self, task_id: str, reason: str = "cancelled") -> Task:
        request = pb.CancelTaskRequest(task_id=task_id, reason=reason)
        return cv.task_from_wire(await self._retrying(lambda: self._stub.cancel_task(request)))

    async def result(self, task_id: str, *, wait: bool = True) -> TaskResult:
        request = pb.GetResultRequest(task_id=task_id, wait=wait)
        return await self._retrying(
            lambda: self._result(self._stub.get_result(request), f"task {task_id}")
        )

    async def call(self, spec: FunctionSpec, *, stdin: bytes | None = None) -> TaskResult:
        """Run a task and return its result, in one call (CallTask; RunTask on an older
        node).

        A call the node forwarded names the member that ran it; the next call of the same
        spec goes to that member directly (one hop instead of two, as Ray's driver reuses
        its lease of a remote worker), while that member answers: see `_member_for`."""
        member = await self._member_for(spec)
        if member is not None:
            try:
                return await member.call(spec, stdin=stdin)
            except (Unauthenticated, PermissionDenied):
                # Not accepted there (nothing ran; a token of this node's, say): this node
                # then, for this member from now on.
                self._refused.add(member.address)
                self._ran_at.pop(spec, None)
            except SpearError:
                self._ran_at.pop(spec, None)  # (it may have run: not sent again)
                raise
        ran_at: list[str] = []
        try:
            answer = await self._called(spec, stdin, ran_at)
        except NotFound as exc:
            if not self._lost_upload(exc):
                raise
            answer = await self._called(spec, stdin, ran_at)  # (the module sent again)
        if ran_at and ran_at[0] and self._follows and ran_at[0] not in self._refused:
            if len(self._ran_at) >= _RAN_AT_KEPT:
                self._ran_at.clear()
            self._ran_at[spec] = ran_at[0]
        return answer

    async def _called(
        self, spec: FunctionSpec, stdin: bytes | None, ran_at: list[str]
    ) -> TaskResult:
        request = await self._request(spec, stdin, wait=True)
        if self.tracing is not None:
            result = self._call(request, spec.artifact, ran_at)
            return await traced_submit(self.tracing, "call", spec, result)
        return await self._call(request, spec.artifact, ran_at)

    async def _call(
        self, request: pb.SubmitTaskRequest, what: str, ran_at: list[str]
    ) -> TaskResult:
        """The task run on this node and its result: CallTask, one reply (the output
        read with GetResult when it did not fit); RunTask's stream on a node without
        CallTask (an older one: UNIMPLEMENTED, nothing ran), remembered for its address."""
        if self.address not in self._streamed_calls:
            try:
                with self._errors():
                    reply = await self._stub.call_task(request)
            except Unimplemented:
                self._streamed_calls.add(self.address)
            else:
                info = cv.optional(reply, "task")
                if info is None:
                    raise SpearError(f"node {self.address} sent no result for {what}")
                task = cv.task_from_wire(info)
                ran_at.append(reply.ran_at)
                if not reply.fetch_output:
                    return TaskResult(task, reply.data)
                return TaskResult(task, (await self.result(task.id, wait=False)).output)
        return await self._result(self._stub.run_task(request), what, ran_at)

    async def _member_for(self, spec: FunctionSpec) -> Client | None:
        """The client of the member that ran the last call of `spec` if this node forwarded
        it there, once connected (None: call this node). A member that cannot be
        connected to is forgotten before anything is sent to it."""
        address = self._ran_at.get(spec)
        if address is None:
            return None
        member = self._members.get(address)
        if member is None:
            member = self._members[address] = Client(
                address,
                credentials=self._credentials,
                timeout=self._timeout,
                max_message_bytes=self._max_message_bytes,
                retries=0,
                tracing=self.tracing,
            )
            member._follows = False  # (it does not send calls on again)
        if await member.connected(_MEMBER_CONNECT_S):
            return member
        self._ran_at.pop(spec, None)
        return None

    async def connected(self, within_s: float) -> bool:
        """Whether the channel to the node is connected, or connects within `within_s`."""
        self._stub  # noqa: B018 - opens the channel
        assert self._channel is not None
        return await self._channel.connected(within_s)

    async def _result(
        self,
        chunks: AsyncIterator[pb.ResultChunk],
        what: str,
        ran_at: list[str] | None = None,
    ) -> TaskResult:
        """The result the chunks carry; `ran_at` gets the first chunk's `ran_at` (RunTask:
        the member that ran a forwarded task)."""
        task: Task | None = None
        parts: list[bytes] = []
        with self._errors():
            async for chunk in chunks:
                info = cv.optional(chunk, "task")
                if info is not None:
                    task = cv.task_from_wire(info)
                    if ran_at is not None:
                        ran_at.append(chunk.ran_at)
                parts.append(chunk.data)
        if task is None:
            raise SpearError(f"node {self.address} sent no result for {what}")
        return TaskResult(task, b"".join(parts))

    async def logs(
        self, task_id: str, streams: Sequence[str] = (), *, follow: bool = False
    ) -> AsyncIterator[LogChunk]:
        request = pb.StreamLogsRequest(task_id=task_id, streams=list(streams), follow=follow)
        with self._errors():
            async for chunk in self._stub.stream_logs(request):
                yield cv.log_from_wire(chunk)

    # -- the node --------------------------------------------------------------------

    async def node_info(self) -> NodeInfo:
        answer = await self._retrying(lambda: self._stub.get_node_info(pb.GetNodeInfoRequest()))
        return cv.node_from_wire(answer)

    # -- objects ---------------------------------------------------------------------

    async def put_object(
        self, key: str, data: bytes, *, expected_version: int | None = None
    ) -> ObjectInfo:
        def chunks() -> Iterator[pb.ObjectChunk]:
            yield pb.ObjectChunk(
                key=key, expected_version=expected_version, data=data[:CHUNK_BYTES]
            )
            for i in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
                yield pb.ObjectChunk(data=data[i : i + CHUNK_BYTES])

        streamed = await self._objects.put(self, key, data, expected_version)
        if streamed is not None:
            return streamed
        if expected_version is not None:  # a conditional put is not retried blindly
            with self._errors():
                return cv.object_from_wire(await self._stub.put_object(chunks()))
        return cv.object_from_wire(await self._retrying(lambda: self._stub.put_object(chunks())))

    async def put_object_file(
        self, key: str, source: str | os.PathLike[str], *, expected_version: int | None = None
    ) -> ObjectInfo:
        """`put_object` of the file `source`, not read into this process where the node
        allows (its object socket on this host takes the file itself; its transfer
        service has it sent with `sendfile`)."""
        path = Path(source)
        done = await self._objects.put_file(self, key, path, expected_version)
        if done is not None:
            return done
        try:
            data = await anyio.Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no such file: {source}") from None
        return await self.put_object(key, data, expected_version=expected_version)

    async def get_object(self, key: str) -> tuple[bytes, ObjectInfo]:
        streamed = await self._objects.get(self, key)
        if streamed is not None:
            return streamed

        async def attempt() -> tuple[bytes, ObjectInfo]:
            info: ObjectInfo | None = None
            parts: list[bytes] = []
            async for chunk in self._stub.get_object(pb.GetObjectRequest(key=key)):
                if chunk.HasField("info"):
                    info = cv.object_from_wire(chunk.info)
                parts.append(chunk.data)
            if info is None:
                raise SpearError(f"node {self.address} sent no object for {key!r}")
            return b"".join(parts), info

        return await self._retrying(attempt)

    async def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        token = ""
        while True:  # page after page (node/paging.py)
            request = pb.ListObjectsRequest(prefix=prefix, page_token=token)

            def page(r: pb.ListObjectsRequest = request) -> Awaitable[pb.ListObjectsResponse]:
                listed: Awaitable[pb.ListObjectsResponse] = self._stub.list_objects(r)
                return listed

            answer = await self._retrying(page)
            found.extend(cv.object_from_wire(o) for o in answer.objects)
            token = answer.next_page_token
            if not token:
                return found

    async def delete_object(self, key: str, *, force: bool = False) -> bool:
        with self._errors():
            answer: pb.DeleteObjectResponse = await self._stub.delete_object(
                pb.DeleteObjectRequest(key=key, force=force)
            )
        return answer.deleted

    async def add_object_ref(self, key: str) -> ObjectInfo:
        with self._errors():
            answer = await self._stub.add_object_ref(pb.ObjectKeyRequest(key=key))
        return cv.object_from_wire(answer)

    async def remove_object_ref(self, key: str) -> ObjectInfo:
        with self._errors():
            answer = await self._stub.remove_object_ref(pb.ObjectKeyRequest(key=key))
        return cv.object_from_wire(answer)

    async def pin_object(self, key: str) -> ObjectInfo:
        with self._errors():
            return cv.object_from_wire(await self._stub.pin_object(pb.ObjectKeyRequest(key=key)))

    async def unpin_object(self, key: str) -> ObjectInfo:
        with self._errors():
            answer = await self._stub.unpin_object(pb.ObjectKeyRequest(key=key))
        return cv.object_from_wire(answer)

    async def delete_tasks(
        self,
        task_ids: Sequence[str] = (),
        *,
        older_than_s: float | None = None,
        keep: int | None = None,
        namespace: str | None = None,
    ) -> list[str]:
        """DeleteTasks, in the namespace of this client's credentials (`namespace` is
        the server's to decide)."""
        request = pb.DeleteTasksRequest(
            task_ids=list(task_ids), older_than_s=older_than_s, keep=keep
        )
        with self._errors():
            answer = await self._stub.delete_tasks(request)
        return list(answer.task_ids)
