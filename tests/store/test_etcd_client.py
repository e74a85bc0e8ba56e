"""The etcd client's rules: what may be sent to another member, key ranges, closed and
unreachable clients (the behaviour against real members is in test_etcd_cluster.py)."""

from __future__ import annotations

import socket

import grpc
import grpc.aio
import pytest

from spear.errors import StorageError, Unavailable
from spear.store._etcd_client import StreamEnded, classify, prefix_range_end
from spear.store.etcd import EtcdKV

Code = grpc.StatusCode


def status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A failed call as grpc.aio raises it."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


# grpc's words for a member it could not connect to (refused, no route): nothing was sent.
_REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    "Failed to connect to remote host: Connection refused"
)


@pytest.mark.parametrize(
    ("exc", "read", "write"),
    [
        (status(Code.UNAVAILABLE, _REFUSED), True, True),  # never sent
        (status(Code.UNAVAILABLE, "DNS resolution failed for etcd-9:2379"), True, True),
        (status(Code.UNAVAILABLE, "etcdserver: no leader"), True, True),  # not applied
        (status(Code.UNAVAILABLE, "etcdserver: leader changed"), True, True),
        (status(Code.UNAVAILABLE, "Socket closed"), True, False),  # sent: fate unknown
        (status(Code.UNAVAILABLE, "recvmsg:Connection reset by peer"), True, False),
        (StreamEnded("/etcdserverpb.Watch/Watch ended"), True, False),
        (status(Code.UNKNOWN, "etcdserver: request timed out"), True, False),
        (status(Code.UNAVAILABLE, "etcdserver: request timed out"), True, False),
        (status(Code.DEADLINE_EXCEEDED, "Deadline Exceeded"), True, False),
    ],
)
def test_what_may_go_to_another_member(exc: BaseException, read: bool, write: bool) -> None:
    as_read, as_write = classify(exc, idempotent=True), classify(exc, idempotent=False)
    assert as_read is not None and as_write is not None
    assert (as_read.retry, as_write.retry) == (read, write)


@pytest.mark.parametrize(
    "exc",
    [
        status(Code.INVALID_ARGUMENT, "etcdserver: key is not provided"),
        status(Code.UNKNOWN, "election: no leader"),  # an answer: nobody leads
        status(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
        status(Code.NOT_FOUND, "etcdserver: requested lease not found"),
        status(Code.CANCELLED, "Locally cancelled by application!"),
        ValueError("a bug of ours"),
    ],
)
def test_errors_etcd_meant_are_not_failovers(exc: BaseException) -> None:
    assert classify(exc, idempotent=True) is None


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"spear/") == b"spear0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"  # nothing above: every key
    assert prefix_range_end(b"") == b"\x00"


async def test_several_unreachable_endpoints_are_one_unavailable_line() -> None:
    with socket.socket() as one, socket.socket() as two:  # bound, never listening
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        endpoints = [f"127.0.0.1:{s.getsockname()[1]}" for s in (one, two)]
        with pytest.raises(Unavailable) as caught:
            await EtcdKV.connect(endpoints, timeout_s=1)
    message = str(caught.value)
    assert "\n" not in message and "every endpoint" in message
    assert all(e in message for e in endpoints)


async def test_a_closed_kv_says_so(etcd_endpoint: str) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace="closed/")
    await kv.aclose()
    await kv.aclose()  # twice is fine
    with pytest.raises(StorageError, match="closed"):
        await kv.get("k")


async def test_a_dead_first_endpoint_is_passed_over(etcd_endpoint: str) -> None:
    with socket.socket() as dead:  # bound, never listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        first = f"127.0.0.1:{dead.getsockname()[1]}"
        kv = await EtcdKV.connect([first, etcd_endpoint], namespace="pass-over/", timeout_s=5)
        try:
            assert kv.client.current == etcd_endpoint  # the check already moved on
            version = await kv.put("k", b"v")  # refused connections are safe to move on from
            assert (await kv.get("k")).version == version  # type: ignore[union-attr]
        finally:
            await kv.delete("k")
            await kv.aclose()
