"""Leases and leader election on a real etcd (etcd's v3election service)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spear.errors import InvalidArgument
from spear.store.etcd import EtcdKV
from spear.store.etcd_election import Candidate, CandidateState, Lease, leader_value, observe
from spear.store.etcd_server import EtcdProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TTL_S = 2
CANDIDATE = Path(__file__).with_name("etcd_candidate.py")


@contextlib.asynccontextmanager
async def client(endpoints: list[str]) -> AsyncIterator[EtcdKV]:
    kv = await EtcdKV.connect(endpoints, namespace="unused/")
    try:
        yield kv
    finally:
        await kv.aclose()


def fresh_name() -> str:
    return f"e{secrets.token_hex(4)}"


async def test_one_leads_and_the_other_takes_over_when_its_lease_is_revoked(
    etcd_endpoint: str,
) -> None:
    name = fresh_name()
    async with (
        client([etcd_endpoint]) as a,
        client([etcd_endpoint]) as b,
        Lease.keep(a.client, TTL_S) as lease_a,
        Lease.keep(b.client, TTL_S) as lease_b,
    ):
        asked = time.monotonic()
        assert await leader_value(a.client, name) is None
        assert time.monotonic() - asked < 1  # an answer, not a failure to retry
        first = Candidate(a.client, name, b"A", lease_a)
        second = Candidate(b.client, name, b"B", lease_b)
        async with first:
            await asyncio.wait_for(first.elected.wait(), 5)
            assert first.leader_key is not None and second.leader_key is None
            key, rev = first.leader_key
            assert key.startswith(b"spear/election/" + name.encode() + b"/") and rev > 0
            async with second:
                assert first.leading and second.state is CandidateState.CAMPAIGNING
                assert await leader_value(b.client, name) == b"A"

                seen: list[bytes] = []

                async def watch_leaders() -> None:
                    async for value in observe(b.client, name):
                        seen.append(value)

                async def observed(values: list[bytes]) -> None:
                    deadline = time.monotonic() + 5
                    while seen != values and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)  # polling the observer's list, with a deadline
                    assert seen == values

                watcher = asyncio.ensure_future(watch_leaders())
                await observed([b"A"])  # the observer is live: it reports the leader there is
                started = time.monotonic()
                await lease_a.revoke()
                await asyncio.wait_for(second.elected.wait(), 5)
                takeover_s = time.monotonic() - started
                assert first.deposed.is_set() and not first.leading
                assert first.state is CandidateState.DEPOSED
                assert second.leading
                assert await leader_value(a.client, name) == b"B"
                await observed([b"A", b"B"])
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                assert takeover_s < 1.0, f"takeover after a revoke took {takeover_s:.2f}s"
        assert await leader_value(a.client, name) is None  # resigned: nobody leads


async def test_resign_hands_over_at_once(etcd_endpoint: str) -> None:
    name = fresh_name()
    async with (
        client([etcd_endpoint]) as kv,
        Lease.keep(kv.client, 30) as la,
        Lease.keep(kv.client, 30) as lb,
    ):
        first = Candidate(kv.client, name, b"A", la)
        second = Candidate(kv.client, name, b"B", lb)
        async with first:
            await asyncio.wait_for(first.elected.wait(), 5)
            async with second:
                await first.resign()
                await asyncio.wait_for(second.elected.wait(), 2)  # far below the 30 s TTL
                assert first.state is CandidateState.CLOSED


async def test_a_killed_leader_process_is_replaced_within_its_ttl(etcd_endpoint: str) -> None:
    name = fresh_name()
    proc = subprocess.Popen(
        [sys.executable, str(CANDIDATE), etcd_endpoint, name, "process"],
        stdout=subprocess.PIPE,
        env=os.environ,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == b"leading"
        async with client([etcd_endpoint]) as kv, Lease.keep(kv.client, TTL_S) as lease:
            assert await leader_value(kv.client, name) == b"process"
            async with Candidate(kv.client, name, b"here", lease) as me:
                # The process keeps its lease alive: no takeover while it lives.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(me.elected.wait(), TTL_S * 1.5)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = time.monotonic()
                await asyncio.wait_for(me.elected.wait(), TTL_S + 3)
                takeover_s = time.monotonic() - killed
                assert await leader_value(kv.client, name) == b"here"
        assert takeover_s <= TTL_S + 1.5, f"takeover took {takeover_s:.2f}s"
        sys.stderr.write(f"takeover after SIGKILL: {takeover_s:.2f}s (TTL {TTL_S}s)\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_leader_cut_off_from_etcd_steps_down_within_its_ttl(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    try:
        assert etcd.endpoint is not None
        async with client([etcd.endpoint]) as kv, Lease.keep(kv.client, TTL_S) as lease:
            kv.client.timeout_s = 1.0
            async with Candidate(kv.client, fresh_name(), b"me", lease) as me:
                await asyncio.wait_for(me.elected.wait(), 5)
                etcd.kill()
                cut = time.monotonic()
                await asyncio.wait_for(me.deposed.wait(), TTL_S + 1)
                assert time.monotonic() - cut <= TTL_S  # before etcd could elect anyone else
                assert not me.leading and lease.lost.is_set()
                assert me.state is CandidateState.DEPOSED
    finally:
        etcd.stop()


async def test_bad_names_and_ttls_are_refused(etcd_endpoint: str) -> None:
    async with client([etcd_endpoint]) as kv:
        with pytest.raises(InvalidArgument):
            async with Lease.keep(kv.client, 0):
                pass
        async with Lease.keep(kv.client, 5) as lease:
            for bad in ("", "a/b"):
                with pytest.raises(InvalidArgument):
                    Candidate(kv.client, bad, b"", lease)
            once = Candidate(kv.client, fresh_name(), b"", lease)
            async with once:
                pass
            with pytest.raises(InvalidArgument):
                async with once:
                    pass
