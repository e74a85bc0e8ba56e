"""Client failover (node/failover.py), each rule on its own: which node a client asks next,
which failures it retries, how long it waits, and `persist` for writes that must not be
dropped after one try. The same against real nodes: tests/transport/test_full_disk_failover.py
and test_idempotent_submit.py.

Written for mutation testing: each test states one behaviour exactly.
"""

from __future__ import annotations

import random

import anyio
import pytest

from spear.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidArgument,
    NoSpace,
    NotFound,
    ResourceExhausted,
    StorageError,
    Unavailable,
)
from spear.node import failover
from spear.node.failover import Failover, persist


def test_addresses_are_a_comma_separated_list_tried_in_turn() -> None:
    chosen = Failover(" a:1 , b:2,,c:3 ,")
    assert chosen.addresses == ("a:1", "b:2", "c:3") and chosen.address == "a:1"
    assert [chosen.next_address() for _ in range(4)] == ["b:2", "c:3", "a:1", "b:2"]
    assert chosen.address == "b:2"
    one = Failover("a:1")
    assert [one.next_address(), one.address] == ["a:1", "a:1"]


@pytest.mark.parametrize("addresses", ["", " ", ",", " , ,"])
def test_no_address_is_refused(addresses: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Failover(addresses)
    assert str(caught.value) == "a node address is HOST:PORT, got nothing"


def test_retries_are_counted_and_never_negative() -> None:
    assert Failover("a:1").retries == failover.DEFAULT_RETRIES == 4
    assert Failover("a:1", retries=0).retries == 0
    with pytest.raises(InvalidArgument) as caught:
        Failover("a:1", retries=-1)
    assert str(caught.value) == "retries must not be negative"


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (Unavailable("down"), True),
        (StorageError("etcd"), True),
        (NoSpace("disk full"), True),  # (nothing was written; another node may have room)
        (DeadlineExceeded("slow"), False),  # (it may still be running there)
        (ResourceExhausted("busy"), False),
        (Conflict("version"), False),
        (NotFound("no such task"), False),
    ],
)
def test_only_a_node_that_failed_is_asked_again_while_retries_last(
    error: Exception, retried: bool
) -> None:
    chosen = Failover("a:1,b:2", retries=2)
    assert [chosen.should_retry(error, attempt) for attempt in range(4)] == (  # type: ignore[arg-type]
        [retried, retried, False, False]
    )


def test_the_wait_doubles_from_a_tenth_of_a_second_to_two_with_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    monkeypatch.setattr(random, "random", lambda: 1.0)
    assert [Failover.backoff_s(a) for a in range(7)] == pytest.approx(ceilings)
    monkeypatch.setattr(random, "random", lambda: 0.0)  # (at least half the ceiling)
    assert [Failover.backoff_s(a) for a in range(7)] == pytest.approx([c / 2 for c in ceilings])


async def test_persist_retries_a_failing_server_then_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(anyio, "sleep", sleep)
    monkeypatch.setattr(random, "random", lambda: 1.0)
    calls = []

    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise (Unavailable if len(calls) == 1 else StorageError)("not yet")
        return "written"

    assert await persist(flaky) == "written" and calls == [0, 1, 2]
    assert waits == pytest.approx([0.1, 0.2])

    calls.clear()
    waits.clear()

    async def down() -> str:
        calls.append(len(calls))
        raise Unavailable("down")

    with pytest.raises(Unavailable, match="down"):
        await persist(down, retries=3)
    assert len(calls) == 3 and waits == pytest.approx([0.1, 0.2])  # (no wait after the last)
    calls.clear()
    with pytest.raises(Unavailable):
        await persist(down)  # (six tries unless told)
    assert len(calls) == 6

    calls.clear()

    async def refused() -> str:
        calls.append(len(calls))
        raise Conflict("not a failure of the server")

    with pytest.raises(Conflict):
        await persist(refused)
    assert calls == [0]  # (not retried)
    assert await persist(lambda: _now("at once")) == "at once"


async def _now(value: str) -> str:
    return value
