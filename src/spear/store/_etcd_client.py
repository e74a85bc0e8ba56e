"""etcd's v3 API over grpc.aio, with failover between the members of a cluster.

The messages are generated from etcd's own protos (tools/gen_etcd_protos.py ->
_etcd_gen/, protobuf's C implementation); the calls are made here, by route, on grpc.aio
channels (serialized with the messages' own `SerializeToString`/`FromString`), the stack
spear's other clients use (issue 17, item 6: one gRPC stack). Only this module and the KV
and election wrappers beside it touch the generated code. One `EtcdClient` holds a channel
per endpoint and talks to one member at a time, moving to the next when that member cannot
be reached or has no leader.

What is retried, and where (etcd's clientv3 follows the same rule): a request that never
left (the connection was refused or could not be made) or that etcd refused before
applying it ("no leader") is safe to send to another member, whatever it does. A read is
safe to send again after any failure. A write whose fate is unknown (the connection broke
or timed out after it was sent) is not retried: the caller gets `Unavailable` and decides.
Every call has one deadline (`timeout_s`) across its attempts, with a short back-off
between rounds, so a member election (about a second) is ridden out. A caller's cancel
cancels its RPC at etcd; `aclose` closes every channel, and a call it cuts off ends with
`StorageError` (see `_awaited`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import grpc
import grpc.aio

from spear.errors import StorageError, Unavailable
from spear.store._etcd_gen import rpc_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

T = TypeVar("T")

# etcd's "no leader" and friends: refused before anything was applied (rpctypes). Told by
# their whole text: "election: no leader" is an answer (nobody leads), not a failure.
_NOT_APPLIED = tuple(
    f"etcdserver: {m}" for m in ("no leader", "not capable", "leader changed", "too many requests")
)
# etcd's transient errors whose outcome is unknown; the election service (a client inside
# etcd) passes them on with code UNKNOWN, so they are told by their text.
_TRANSIENT = ("etcdserver: request timed out", "etcdserver: unhealthy cluster", *_NOT_APPLIED)
# grpc's UNAVAILABLE when no connection could be made (refused, no route, no such host):
# the request never left, whatever it was.
_NEVER_SENT = ("failed to connect to all addresses", "DNS resolution failed")
# Streams ask the member to end them when it loses its leader (clientv3's WithRequireLeader),
# so a watch on a member cut off from the cluster fails over instead of going silent.
REQUIRE_LEADER = {"hasleader": "true"}
_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.5)
# What grpc.aio reports for a write on a call the server had already ended (grpc/grpc#36066).
_WRITE_LOST = "Internal error from Core"
_CHANNEL_OPTIONS = (
    # etcd bounds requests itself (--max-request-bytes) and a range's answer may be large:
    # no limit of grpc's own on either (grpclib had none; clientv3 sets none either).
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # A connection per client, not one shared by every channel to the same member: the
    # lease thread's refreshes (etcd_lease_thread.py) travel on a connection of their own.
    ("grpc.use_local_subchannel_pool", 1),
    # A member that comes back is reconnected within a second, not after grpc's
    # exponential back-off (up to two minutes) has run out.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class EndpointFailed(Exception):
    """One attempt on one member failed; `retry` says whether another member may be tried."""

    def __init__(self, detail: str, retry: bool) -> None:
        super().__init__(detail)
        self.retry = retry


class StreamEnded(ConnectionError):
    """A held stream (or a keep-alive) that the member ended without an error status."""


def classify(exc: BaseException, *, idempotent: bool) -> EndpointFailed | None:
    """How a failed attempt counts: None when it is not a transport failure at all."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code, message = exc.code(), exc.details() or ""
        unapplied = any(m in message for m in _NOT_APPLIED)
        if code is grpc.StatusCode.UNAVAILABLE:
            if any(m in message for m in _NEVER_SENT):
                return EndpointFailed(f"cannot connect ({message})", retry=True)
            return EndpointFailed(f"unavailable ({message})", retry=idempotent or unapplied)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return EndpointFailed(f"timed out ({message})", retry=idempotent)
        if any(m in message for m in _TRANSIENT):
            return EndpointFailed(f"transient ({message})", retry=idempotent or unapplied)
        return None
    if isinstance(exc, ConnectionError):  # StreamEnded: it was sent, its fate is unknown
        return EndpointFailed(f"connection lost ({exc})", retry=idempotent)
    return None


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix` (etcd's rule)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key


class EtcdClient:
    """A connection to an etcd cluster through any of `endpoints` (`HOST:PORT` each).

    Its channels are grpc.aio's, made on first use on the event loop that uses them (the
    lease thread makes a client of its own on its own loop)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 5.0,
    ) -> None:
        if not endpoints:
            raise StorageError("no etcd endpoint given")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[tuple[grpc.aio.Channel, str], Any] = {}
        self._current = 0
        self._closed = False

    @property
    def current(self) -> str:
        """The member the next request goes to."""
        return self.endpoints[self._current]

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        if self._closed:
            raise StorageError("the etcd connection is closed")
        channel = self._channels.get(endpoint)
        if channel is None:
            # (etcd is served in plaintext, as spear configures and starts it)
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(
                endpoint, options=_CHANNEL_OPTIONS
            )
        return channel

    def method(
        self, channel: grpc.aio.Channel, route: str, request_type: type[Any], response_type: type[T]
    ) -> Any:
        """grpc.aio's callable for `route` on `channel` (made once): unary, unary-stream
        (Observe) or stream-stream (Watch, LeaseKeepAlive), as etcd's service defines it."""
        key = (channel, route)
        found = self._methods.get(key)
        if found is None:
            if route.endswith("/Observe"):
                kind = channel.unary_stream
            elif route.endswith(("/Watch", "/LeaseKeepAlive")):
                kind = channel.stream_stream
            else:
                kind = channel.unary_unary
            found = self._methods[key] = kind(
                route,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,  # type: ignore[attr-defined]
            )
        return found

    def failed_over(self, endpoint: str) -> None:
        """`endpoint` failed: later requests start at the next member."""
        if self.endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    async def call(
        self,
        operation: str,
        attempt: Callable[[grpc.aio.Channel, float | None], Awaitable[T]],
        *,
        idempotent: bool,
        timeout_s: float | None = None,
        wait: bool = False,
        attempt_timeout_s: float | None = None,
    ) -> T:
        """`attempt(channel, timeout)` on the current member, failing over within one deadline.

        `wait` is for calls that block by design (an election campaign): no deadline, and
        every member is tried again and again until one answers or the caller cancels.
        Raises `Unavailable` when no member could serve it in time (or a write's fate is
        unknown), `StorageError` for any other error etcd returned.
        """
        budget = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if wait else time.monotonic() + budget
        failures: list[str] = []
        round_ = 0
        while True:
            for _ in range(len(self.endpoints)):
                endpoint = self.current
                per_attempt = None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    per_attempt = min(remaining, attempt_timeout_s or self.attempt_timeout_s)
                try:
                    return await attempt(self.channel(endpoint), per_attempt)
                except Exception as exc:
                    failed = classify(exc, idempotent=idempotent)
                    if failed is None:
                        raise _storage_error(operation, exc) from exc
                    failures = [*failures[-len(self.endpoints) :], f"{endpoint}: {failed}"]
                    self.failed_over(endpoint)
                    if not failed.retry:
                        raise Unavailable(
                            f"etcd {operation} failed, outcome unknown: {endpoint}: {failed}"
                        ) from exc
            pause = _BACKOFF_S[min(round_, len(_BACKOFF_S) - 1)] * (0.5 + random.random())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                pause = min(pause, remaining)
            await anyio.sleep(pause)  # back-off between rounds of members
            round_ += 1
        last = "; ".join(failures[-len(self.endpoints) :]) or "no time left"
        raise Unavailable(f"etcd {operation} failed on every endpoint: {last}")

    async def unary(
        self,
        operation: str,
        route: str,
        request: Any,
        response_type: type[T],
        *,
        idempotent: bool,
        timeout_s: float | None = None,
        wait: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> T:
        """One unary RPC (`route` as '/etcdserverpb.KV/Range') with failover."""
        pairs = tuple(metadata.items()) if metadata else None

        async def attempt(channel: grpc.aio.Channel, budget_s: float | None) -> T:
            method = self.method(channel, route, type(request), response_type)
            return await _awaited(method(request, timeout=budget_s, metadata=pairs))

        return await self.call(
            operation, attempt, idempotent=idempotent, timeout_s=timeout_s, wait=wait
        )

    # -- the calls spear makes ------------------------------------------------------------

    async def range(self, request: pb.RangeRequest) -> pb.RangeResponse:
        return await self.unary(
            "get", "/etcdserverpb.KV/Range", request, pb.RangeResponse, idempotent=True
        )

    async def put(self, request: pb.PutRequest) -> pb.PutResponse:
        return await self.unary(
            "put", "/etcdserverpb.KV/Put", request, pb.PutResponse, idempotent=False
        )

    async def delete_range(self, request: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        return await self.unary(
            "delete",
            "/etcdserverpb.KV/DeleteRange",
            request,
            pb.DeleteRangeResponse,
            idempotent=False,
        )

    async def txn(self, request: pb.TxnRequest, operation: str = "txn") -> pb.TxnResponse:
        return await self.unary(
            operation, "/etcdserverpb.KV/Txn", request, pb.TxnResponse, idempotent=False
        )

    async def lease_grant(self, ttl_s: int) -> pb.LeaseGrantResponse:
        # Not idempotent strictly, but a lease granted twice costs one orphan that expires.
        return await self.unary(
            "lease grant",
            "/etcdserverpb.Lease/LeaseGrant",
            pb.LeaseGrantRequest(TTL=ttl_s),
            pb.LeaseGrantResponse,
            idempotent=True,
        )

    async def lease_revoke(self, lease_id: int) -> None:
        with contextlib.suppress(StorageError):  # already gone (expired): nothing to revoke
            await self.unary(
                "lease revoke",
                "/etcdserverpb.Lease/LeaseRevoke",
                pb.LeaseRevokeRequest(ID=lease_id),
                pb.LeaseRevokeResponse,
                idempotent=True,
            )

    async def lease_keepalive(self, lease_id: int, within_s: float) -> int:
        """Refresh a lease once; its remaining TTL in seconds (<= 0: the lease is gone).

        Each member gets a third of `within_s`: one that cannot reach its raft leader
        stalls, and the refresh must land elsewhere before the lease runs out."""
        route = "/etcdserverpb.Lease/LeaseKeepAlive"

        async def attempt(channel: grpc.aio.Channel, budget_s: float | None) -> int:
            method = self.method(
                channel, route, pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
            )
            # One request, then the send side closes (grpc does both, from the iterator).
            call = method(iter((pb.LeaseKeepAliveRequest(ID=lease_id),)), timeout=budget_s)
            try:
                response = await _awaited(call.read())
            finally:
                call.cancel()  # (a no-op once etcd has ended it)
            if response is grpc.aio.EOF:
                raise StreamEnded("no keep-alive response")
            return int(response.TTL)

        return await self.call(
            "lease keep-alive",
            attempt,
            idempotent=True,
            timeout_s=within_s,
            attempt_timeout_s=max(0.2, within_s / 3),
        )

    @contextlib.asynccontextmanager
    async def stream(
        self, endpoint: str, route: str, request: Any, response_type: type[T]
    ) -> AsyncIterator[AsyncIterator[T]]:
        """A held stream (a watch, an election's Observe) on one member: its responses.

        The member is asked to end it when it loses its raft leader, and its end is an
        error (StreamEnded, or the status it ended with): the caller resumes elsewhere
        (`StreamResumer`). Leaving the block cancels the call."""
        method = self.method(self.channel(endpoint), route, type(request), response_type)
        metadata = tuple(REQUIRE_LEADER.items())
        unary = route.endswith("/Observe")
        call = method(request, metadata=metadata) if unary else method(metadata=metadata)
        try:
            if not unary:  # the send side stays open: etcd ends a watch its client half-closes
                await _write(call, request)

            async def responses() -> AsyncIterator[T]:
                while True:
                    response = await _awaited(call.read())
                    if response is grpc.aio.EOF:
                        raise StreamEnded(f"{route} ended")
                    yield response

            yield responses()
        finally:
            call.cancel()

    async def aclose(self) -> None:
        """Close every channel (their calls in flight end). Safe to call twice."""
        self._closed = True
        channels, self._channels = self._channels, {}
        self._methods = {}
        for channel in channels.values():
            await channel.close()


async def _write(call: Any, request: Any) -> None:
    """Send `request` on a streaming call. A call that ended before it could be sent
    (the member unreachable, or it refused) raises its status; grpc.aio loses that status
    when a write races the end (grpc/grpc#36066: "Internal error from Core"), which is
    reported as the stream's end, to resume elsewhere, as a lost connection is."""
    try:
        await _awaited(call.write(request))
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        if isinstance(exc, grpc.aio.AioRpcError) and exc.details() != _WRITE_LOST:
            raise
        code, details = await call.code(), await call.details()
        if code is grpc.StatusCode.INTERNAL and details == _WRITE_LOST:
            raise StreamEnded(f"ended before its request was sent ({details})") from None
        raise grpc.aio.AioRpcError(
            code, await call.initial_metadata(), await call.trailing_metadata(), details
        ) from None


async def _awaited(step: Awaitable[T]) -> T:
    """Await a grpc.aio call (or a read or write of one) so that a cancel stays a cancel
    and only a cancel.

    grpc.aio catches a cancel of the task awaiting a call, cancels the RPC and raises a
    new, bare CancelledError: the message anyio's cancel scopes know their own cancel by
    is lost, and the scope lets it through as if it came from outside (found: `Lease.keep`
    revoking its lease, whose keep-alive was mid-refresh, cancelled its own block). So the
    call runs in a task of its own behind `asyncio.shield`: the caller's cancel is raised
    in the caller as asyncio delivered it, and then cancels the RPC. grpc.aio also ends
    the calls of a channel being closed (`aclose`) with a CancelledError in a task nobody
    cancelled: that is the error it is, `StorageError`.

    (grpclib needed a task of its own for the opposite reason: it woke calls on a lost
    connection with a real cancel of the caller's task that it never took back.)"""
    inner = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling() > 0:
            inner.cancel()  # the caller's cancel is the RPC's too
            raise
        raise StorageError("the etcd connection is closed") from None


def _storage_error(operation: str, exc: BaseException) -> StorageError:
    detail = str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        detail = exc.details() or exc.code().name
    return StorageError(f"etcd {operation} failed: {detail}")


class StreamResumer:
    """When a held stream breaks: move to the next member, pause after each full round,
    give up with `Unavailable` once no member has served it for the client's timeout."""

    def __init__(self, client: EtcdClient, operation: str) -> None:
        self.client = client
        self.operation = operation
        self._failing_since: float | None = None
        self._failures = 0

    def served(self) -> None:
        """The stream works again (a member answered)."""
        self._failing_since, self._failures = None, 0

    async def failed(self, endpoint: str, exc: Exception) -> None:
        """Account for `exc` on `endpoint`; raises when it is not a transport failure or
        when time is up, returns when the caller should open the stream again."""
        failed = classify(exc, idempotent=True)
        if failed is None:
            if isinstance(exc, StorageError):
                raise exc
            raise StorageError(f"etcd {self.operation} failed: {exc}") from exc
        self.client.failed_over(endpoint)
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        if now - self._failing_since >= self.client.timeout_s:
            raise Unavailable(f"etcd {self.operation} lost every endpoint: {failed}") from exc
        self._failures += 1
        if self._failures >= len(self.client.endpoints):  # a full round failed: back off
            await anyio.sleep(_BACKOFF_S[min(self._failures, len(_BACKOFF_S)) - 1])
