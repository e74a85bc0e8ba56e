"""etcd's v3 API over grpclib, with failover between the members of a cluster.

The messages are generated from etcd's own protos (tools/gen_etcd_protos.py ->
_etcd_gen/, protobuf's C implementation); the calls are made here, by route, on grpclib's
channels like every other gRPC call spear makes. Only this module and the KV and election
wrappers beside it touch the generated code. One `EtcdClient` holds a grpclib channel per
endpoint and talks to one member at a time, moving to the next when that member cannot be
reached or has no leader.

What is retried, and where (etcd's clientv3 follows the same rule): a request that never
left (the connection was refused or could not be made) or that etcd refused before
applying it ("no leader") is safe to send to another member, whatever it does. A read is
safe to send again after any failure. A write whose fate is unknown (the connection broke
or timed out after it was sent) is not retried: the caller gets `Unavailable` and decides.
Every call has one deadline (`timeout_s`) across its attempts, with a short back-off
between rounds, so a member election (about a second) is ridden out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from spear.errors import StorageError, Unavailable
from spear.store._etcd_gen import rpc_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

T = TypeVar("T")

# etcd's "no leader" and friends: refused before anything was applied (rpctypes). Told by
# their whole text: "election: no leader" is an answer (nobody leads), not a failure.
_NOT_APPLIED = tuple(
    f"etcdserver: {m}" for m in ("no leader", "not capable", "leader changed", "too many requests")
)
# etcd's transient errors whose outcome is unknown; the election service (a client inside
# etcd) passes them on with code UNKNOWN, so they are told by their text.
_TRANSIENT = ("etcdserver: request timed out", "etcdserver: unhealthy cluster", *_NOT_APPLIED)
# Streams ask the member to end them when it loses its leader (clientv3's WithRequireLeader),
# so a watch on a member cut off from the cluster fails over instead of going silent.
REQUIRE_LEADER = {"hasleader": "true"}
_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.5)


class EndpointFailed(Exception):
    """One attempt on one member failed; `retry` says whether another member may be tried."""

    def __init__(self, detail: str, retry: bool) -> None:
        super().__init__(detail)
        self.retry = retry


def classify(exc: BaseException, *, idempotent: bool) -> EndpointFailed | None:
    """How a failed attempt counts: None when it is not a transport failure at all."""
    # Refused, or an OSError that is no broken connection (unreachable host, no route):
    # raised while connecting, so nothing was sent.
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError)
    ):
        return EndpointFailed(f"cannot connect ({exc})", retry=True)
    if isinstance(exc, GRPCError):
        message = exc.message or ""
        if exc.status is Status.UNAVAILABLE:
            unapplied = any(m in message for m in _NOT_APPLIED)
            return EndpointFailed(f"unavailable ({message})", retry=idempotent or unapplied)
        if exc.status is Status.DEADLINE_EXCEEDED:
            return EndpointFailed(f"timed out ({message})", retry=idempotent)
        if any(m in message for m in _TRANSIENT):
            unapplied = any(m in message for m in _NOT_APPLIED)
            return EndpointFailed(f"transient ({message})", retry=idempotent or unapplied)
        return None
    if isinstance(exc, StreamTerminatedError | ProtocolError | ConnectionError):
        return EndpointFailed(f"connection lost ({exc})", retry=idempotent)
    if isinstance(exc, TimeoutError):
        return EndpointFailed("timed out", retry=idempotent)
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
    """A connection to an etcd cluster through any of `endpoints` (`HOST:PORT` each)."""

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
        self._channels: dict[str, Channel] = {}
        self._current = 0
        self._closed = False

    @property
    def current(self) -> str:
        """The member the next request goes to."""
        return self.endpoints[self._current]

    def channel(self, endpoint: str) -> Channel:
        if self._closed:
            raise StorageError("the etcd connection is closed")
        channel = self._channels.get(endpoint)
        if channel is None:
            host, _, port = endpoint.rpartition(":")
            channel = self._channels[endpoint] = Channel(host.strip("[]"), int(port))
        return channel

    def failed_over(self, endpoint: str) -> None:
        """`endpoint` failed: later requests start at the next member."""
        if self.endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    async def call(
        self,
        operation: str,
        attempt: Callable[[Channel, float | None], Awaitable[T]],
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
                    return await _in_a_task_of_its_own(attempt(self.channel(endpoint), per_attempt))
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
        metadata: dict[str, str] | None = None,
    ) -> T:
        """One unary RPC (`route` as '/etcdserverpb.KV/Range') with failover."""

        async def attempt(channel: Channel, budget_s: float | None) -> T:
            async with channel.request(
                route,
                Cardinality.UNARY_UNARY,
                type(request),
                response_type,
                timeout=budget_s,
                metadata=metadata,
            ) as stream:
                await stream.send_message(request, end=True)
                response = await stream.recv_message()
            if response is None:
                raise StreamTerminatedError("no response")
            return response

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

        async def attempt(channel: Channel, budget_s: float | None) -> int:
            async with channel.request(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                Cardinality.STREAM_STREAM,
                pb.LeaseKeepAliveRequest,
                pb.LeaseKeepAliveResponse,
                timeout=budget_s,
            ) as stream:
                await stream.send_message(pb.LeaseKeepAliveRequest(ID=lease_id), end=True)
                response = await stream.recv_message()
            if response is None:
                raise StreamTerminatedError("no keep-alive response")
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
        error (StreamTerminatedError): the caller resumes elsewhere (`StreamResumer`)."""
        unary = route.endswith("/Observe")
        async with self.channel(endpoint).request(
            route,
            Cardinality.UNARY_STREAM if unary else Cardinality.STREAM_STREAM,
            type(request),
            response_type,
            metadata=REQUIRE_LEADER,
        ) as stream:
            await _in_a_task_of_its_own(stream.send_message(request, end=unary))

            async def responses() -> AsyncIterator[T]:
                while True:
                    response = await _in_a_task_of_its_own(stream.recv_message())
                    if response is None:
                        raise StreamTerminatedError(f"{route} ended")
                    yield response

            yield responses()

    async def aclose(self) -> None:
        """Close every channel. Safe to call twice."""
        self._closed = True
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.close()


async def _in_a_task_of_its_own(call: Awaitable[T]) -> T:
    """Await `call` in a task of its own. When a connection closes, grpclib wakes the calls
    waiting on it with a plain asyncio cancel of their task (`grpclib.utils.Wrapper`), then
    raises its own error there and never takes the cancel back. Left in the caller's task,
    that stray cancel makes anyio's cancel scopes above it let their own cancellations
    through as if they came from outside: an SMS whose election campaign was cut off with
    its etcd member stopped standing for good. A cancel of the caller still reaches the
    call (asyncio cancels the task it awaits)."""
    return await asyncio.ensure_future(call)


def _storage_error(operation: str, exc: BaseException) -> StorageError:
    detail = exc.message if isinstance(exc, GRPCError) and exc.message else str(exc)
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
