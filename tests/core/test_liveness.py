"""Node liveness as leases in the leader SMS's memory, checkpointed in batches (real KVs)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest
from test_sms import TIMINGS, Clock, node

from spear.core.cluster import NodeHealth, NodeRecord
from spear.core.liveness import BATCH
from spear.core.models import Resources
from spear.core.sms import MetadataServer
from spear.store.etcd import EtcdKV
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from spear.store.kv import KV

GiB = 1024**3


@pytest.fixture(params=["leveldb", "etcd"])
async def kv(
    request: pytest.FixtureRequest, tmp_path: Path, etcd_endpoint: str
) -> AsyncIterator[KV]:
    if request.param == "leveldb":
        store: KV = LevelDBKV.open(str(tmp_path / "sms.ldb"))
    else:
        store = await EtcdKV.connect([etcd_endpoint], namespace=f"live-{secrets.token_hex(4)}/")
    try:
        yield store
    finally:
        await store.aclose()


async def stored(kv: KV, name: str) -> tuple[NodeRecord, int]:
    import json

    entry = await kv.get("nodes/" + name)
    assert entry is not None
    return NodeRecord.from_json(json.loads(entry.value)), entry.version


async def test_a_heartbeat_writes_nothing_and_a_checkpoint_writes_it(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    _, version = await stored(kv, "a")
    clock.now += 1
    beat = await sms.heartbeat("a", "a-1", Resources(500, GiB), 3, 1)
    assert beat is not None and beat.last_heartbeat == clock.now
    assert (await stored(kv, "a"))[1] == version  # no KV write for the heartbeat
    # Reads through this SMS see the heartbeat at once.
    seen = await sms.node("a")
    assert seen.free == Resources(500, GiB) and seen.last_heartbeat == clock.now
    assert [n.name for n in await sms.nodes(live_only=True)] == ["a"]
    assert await sms.checkpoint() == 1
    record, newer = await stored(kv, "a")
    assert newer > version and record.last_heartbeat == clock.now and record.running_tasks == 3
    assert await sms.checkpoint() == 0  # nothing changed since


async def test_checkpoints_batch_many_nodes_into_few_commits(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    count = 2 * BATCH + 7
    for i in range(count):
        await sms.register(node(f"n{i:03d}"))
    clock.now += 1
    for i in range(count):
        assert await sms.heartbeat(f"n{i:03d}", f"n{i:03d}-1", Resources(1, 1), i, 0)
    before = sms.liveness.checkpoints
    assert await sms.checkpoint() == count
    assert sms.liveness.checkpoints - before == 3  # ceil(count / BATCH) commits
    for i in (0, BATCH, count - 1):
        record, _ = await stored(kv, f"n{i:03d}")
        assert record.running_tasks == i and record.last_heartbeat == clock.now


async def test_the_sweeper_judges_by_the_leases_in_memory(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    await sms.register(node("b"))
    for _ in range(5):  # a speaks every second (memory only); b is silent
        clock.now += 1
        await sms.heartbeat("a", "a-1", Resources(1, 1), 0, 0)
    assert await sms.sweep() == [("b", NodeHealth.UNHEALTHY)]
    clock.now += 6
    changes = dict(await sms.sweep())
    assert changes == {"a": NodeHealth.UNHEALTHY, "b": NodeHealth.DEAD}
    # A heartbeat brings an unhealthy node back (through the KV: its health changes).
    assert await sms.heartbeat("a", "a-1", Resources(1, 1), 0, 0) is not None
    record, _ = await stored(kv, "a")
    assert record.health is NodeHealth.HEALTHY and record.last_heartbeat == clock.now


async def test_a_new_leader_starts_from_the_checkpoint_with_a_full_grace(kv: KV) -> None:
    clock = Clock()
    old = MetadataServer(kv, TIMINGS, clock)
    await old.register(node("a"))
    clock.now += 1
    await old.heartbeat("a", "a-1", Resources(7, 7), 2, 0)
    await old.checkpoint()
    clock.now += 1
    await old.heartbeat("a", "a-1", Resources(8, 8), 3, 0)  # not checkpointed: lost
    new = MetadataServer(kv, TIMINGS, clock)
    clock.now += 2.5  # 3.5 s since the checkpointed beat, but the new leader just began
    new.take_over()
    clock.now += 2.5
    assert (await new.node("a")).free == Resources(7, 7)
    assert await new.sweep() == []
    assert await new.heartbeat("a", "a-1", Resources(9, 9), 0, 0) is not None


async def test_a_record_removed_under_the_leader_is_forgotten_at_the_checkpoint(kv: KV) -> None:
    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    await kv.delete("nodes/a")
    assert await sms.heartbeat("a", "a-1", Resources(1, 1), 0, 0) is not None  # (memory)
    assert await sms.checkpoint() == 0
    assert await kv.get("nodes/a") is None  # not written back
    assert await sms.heartbeat("a", "a-1", Resources(1, 1), 0, 0) is None  # register again


async def test_the_leader_answers_reads_from_memory_once_it_holds_every_record(kv: KV) -> None:
    import json

    clock = Clock()
    sms = MetadataServer(kv, TIMINGS, clock)
    await sms.register(node("a"))
    assert not sms.liveness.complete
    assert [n.name for n in await sms.nodes()] == ["a"]  # scanned once, then held
    assert sms.liveness.complete
    # Only the leader writes node records, so it need not read them back: a record put
    # behind its back is not seen by it (a new leader, reading the KV, would see it).
    await kv.put("nodes/b", json.dumps(node("b").to_json()).encode())
    assert [n.name for n in await sms.nodes()] == ["a"]
    assert (await sms.node("a")).name == "a"
    await sms.register(node("c"))
    assert [n.name for n in await sms.nodes()] == ["a", "c"]
    sms.take_over()
    assert [n.name for n in await sms.nodes()] == ["a", "b", "c"]


# -- the lease table itself (core/liveness.py), its mutation run's survivors -------------


async def test_a_checkpoint_keeps_each_leases_version_so_the_next_is_one_commit(kv: KV) -> None:
    import json

    from spear.core.liveness import Liveness

    live = Liveness()
    records = {}
    for name in ("a", "b"):
        records[name] = node(name)
        version = await kv.put("nodes/" + name, json.dumps(records[name].to_json()).encode())
        records[name] = (records[name], version)
    live.load(list(records.values()))
    assert live.complete and live.checkpoints == 0 and len(live) == 2
    assert live.record("zz") is None and live.record("a") == records["a"][0]
    rewritten: list[str] = []

    async def rewrite(name: str) -> NodeRecord | None:
        rewritten.append(name)
        return live.record(name)

    def flush() -> object:
        return live.flush(kv, "nodes/".__add__, lambda r: json.dumps(r.to_json()).encode(), rewrite)

    for beat in (1, 2):  # each checkpoint one commit on the versions the last one wrote
        renewed = live.renew("a", "a-1", 1000.0 + beat, Resources(7, 9), 2, 7)
        assert renewed is not None and renewed.queued_tasks == 7 and renewed.running_tasks == 2
        assert (renewed.free, renewed.last_heartbeat) == (Resources(7, 9), 1000.0 + beat)
        assert await flush() == 1 and live.checkpoints == beat and rewritten == []
        assert (await stored(kv, "a"))[0].queued_tasks == 7
    # Another writer changed a's record: the batch's versions no longer match, so each
    # record is rewritten on its own; b, removed meanwhile, is forgotten.
    await kv.put("nodes/a", json.dumps(node("a").to_json()).encode())
    await kv.delete("nodes/b")
    live.renew("a", "a-1", 1003.0, Resources(1, 1), 0, 0)
    live.renew("b", "b-1", 1003.0, Resources(1, 1), 0, 0)

    async def rewrite_gone_b(name: str) -> NodeRecord | None:
        rewritten.append(name)
        return None if name == "b" else live.record(name)

    written = await live.flush(
        kv, "nodes/".__add__, lambda r: json.dumps(r.to_json()).encode(), rewrite_gone_b
    )
    assert written == 1 and sorted(rewritten) == ["a", "b"] and live.checkpoints == 3
    assert live.record("b") is None and len(live) == 1
    assert [r.name for r in live.records()] == ["a"]


async def test_a_checkpoint_after_a_load_is_made_on_the_versions_loaded(kv: KV) -> None:
    import json

    from spear.core.liveness import Liveness

    record = node("a")
    version = await kv.put("nodes/a", json.dumps(record.to_json()).encode())
    live = Liveness()
    live.load([(record, version)])
    await kv.put("nodes/a", json.dumps(node("a", cpu=1).to_json()).encode())  # (moved on)
    live.renew("a", "a-1", 1001.0, Resources(1, 1), 0, 0)
    rewritten: list[str] = []

    async def rewrite(name: str) -> NodeRecord | None:
        rewritten.append(name)
        return live.record(name)

    encode = lambda r: json.dumps(r.to_json()).encode()  # noqa: E731
    assert await live.flush(kv, "nodes/".__add__, encode, rewrite) == 1
    assert rewritten == ["a"]  # (not written over the newer record blindly)
    assert (await stored(kv, "a"))[0].capacity == Resources(1, 4 * GiB)


async def test_records_moved_on_after_a_checkpoint_are_each_rewritten_at_the_next(
    kv: KV,
) -> None:
    import json

    from spear.core.liveness import Liveness

    encode = lambda r: json.dumps(r.to_json()).encode()  # noqa: E731
    live = Liveness()
    loaded = [(node(n), await kv.put("nodes/" + n, encode(node(n)))) for n in "abc"]
    live.load(loaded)
    rewritten: list[str] = []

    async def rewrite(name: str) -> NodeRecord | None:
        rewritten.append(name)
        return live.record(name)

    def renew_all(now: float) -> None:
        for n in "abc":
            live.renew(n, f"{n}-1", now, Resources(1, 1), 0, 0)

    renew_all(1001.0)
    assert await live.flush(kv, "nodes/".__add__, encode, rewrite) == 3 and rewritten == []
    for n in "ab":  # another writer, after that checkpoint
        await kv.put("nodes/" + n, encode(node(n, cpu=1)))
    renew_all(1002.0)
    assert await live.flush(kv, "nodes/".__add__, encode, rewrite) == 3
    assert sorted(rewritten) == ["a", "b", "c"]  # (the batch as a whole did not match)
