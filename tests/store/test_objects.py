"""The object store on real LevelDB files and value files: versions, OCC, limits, lifecycle."""

from __future__ import annotations

import mmap
import os
import time
from typing import TYPE_CHECKING

import anyio
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear import Conflict, InvalidArgument, LocalNode, NotFound, ResourceExhausted
from spear.store.leveldb import LevelDBKV
from spear.store.objects import ObjectStore
from spear.store.spare_files import SPARE_DIR

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["inline", "files"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ObjectStore]:
    """A store keeping small values inline, and one writing every value to a file (on a
    worker thread, so concurrent puts really interleave between reading and committing)."""
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    try:
        yield ObjectStore(
            kv,
            tmp_path / "objects",
            max_bytes=8 * 1024**2,
            capacity_bytes=32 * 1024**2,
            inline_max=4096 if request.param == "inline" else 0,
        )
    finally:
        await kv.aclose()


def _value_files(root: Path) -> list[Path]:
    """The files of versions (not spares: files no version names, kept to write over)."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and SPARE_DIR not in p.parts]


async def test_put_get_and_versions_that_only_grow(store: ObjectStore) -> None:
    v1 = await store.put("a", b"one")
    value, version = await store.get("a")
    assert bytes(value) == b"one" and version == v1
    v2 = await store.put("a", b"two")
    assert v2 > v1
    assert bytes((await store.get("a"))[0]) == b"two"
    await store.delete("a")
    v3 = await store.put("a", b"three")
    assert v3 > v2  # deleted and created again: never an old version


async def test_a_stale_expected_version_is_a_conflict_and_changes_nothing(
    store: ObjectStore,
) -> None:
    v1 = await store.put("k", b"first")
    v2 = await store.put("k", b"second", expected_version=v1)
    with pytest.raises(Conflict):
        await store.put("k", b"third", expected_version=v1)
    value, version = await store.get("k")
    assert (bytes(value), version) == (b"second", v2)
    with pytest.raises(Conflict):
        await store.put("k", b"x", expected_version=0)  # 0: only if absent
    with pytest.raises(Conflict):
        await store.put("missing", b"x", expected_version=5)
    with pytest.raises(NotFound):
        await store.get("missing")
    assert await store.put("new", b"x", expected_version=0) > 0


async def test_refs_and_pins_keep_the_version(store: ObjectStore) -> None:
    v = await store.put("k", b"v")
    await store.add_ref("k")
    await store.pin("k")
    await store.unpin("k")
    info = await store.info("k")
    assert info.version == v and info.refs == 1 and not info.pinned
    assert await store.put("k", b"w", expected_version=v) > v  # still the version we read


async def test_many_concurrent_writers_never_both_win(store: ObjectStore) -> None:
    base = await store.put("race", b"0")
    wins: list[int] = []
    conflicts: list[int] = []

    async def writer(i: int) -> None:
        try:
            await store.put("race", str(i).encode(), expected_version=base)
            wins.append(i)
        except Conflict:
            conflicts.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(writer, i)
    assert len(wins) == 1 and len(conflicts) == 99
    assert bytes((await store.get("race"))[0]) == str(wins[0]).encode()


async def test_concurrent_read_modify_write_with_retry_counts_exactly(store: ObjectStore) -> None:
    async def increment() -> None:
        while True:
            try:
                value, version = await store.get("n")
                expected = version
                n = int(bytes(value))
            except NotFound:
                expected, n = 0, 0
            try:
                await store.put("n", str(n + 1).encode(), expected_version=expected)
                return
            except Conflict:
                await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(60):
            tg.start_soon(increment)
    assert bytes((await store.get("n"))[0]) == b"60"


async def test_a_large_value_is_mapped_not_copied_and_readers_keep_their_snapshot(
    store: ObjectStore,
) -> None:
    big = os.urandom(3 * 1024**2)
    await store.put("big", big)
    value, _ = await store.get("big")
    assert isinstance(value.obj, mmap.mmap)  # a view of the file, not a bytes copy
    await store.put("big", b"y" * (2 * 1024**2))  # overwritten while we hold the old one
    assert value[:16] == big[:16] and value[-16:] == big[-16:]
    await store.delete("big")
    assert bytes(value[1000:1100]) == big[1000:1100]
    assert _value_files(store.root) == []


async def test_limits_are_clear_errors_and_leave_nothing_half_written(tmp_path: Path) -> None:
    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    store = ObjectStore(kv, tmp_path / "objects", max_bytes=2 * 1024**2, capacity_bytes=3 * 1024**2)
    try:
        with pytest.raises(ResourceExhausted, match="object_max_bytes"):
            await store.put("huge", b"x" * (2 * 1024**2 + 1))
        await store.put("a", b"a" * 1024**2)
        await store.put("b", b"b" * 1024**2)
        with pytest.raises(ResourceExhausted, match="capacity"):
            await store.put("c", b"c" * (1024**2 + 10))
        assert [i.key for i in await store.list()] == ["a", "b"]
        assert len(_value_files(tmp_path / "objects")) == 2
        with pytest.raises(NotFound):
            await store.get("c")
        await store.delete("a")
        await store.put("c", b"c" * (1024**2 + 10))  # room again
        assert await store.usage() == 2 * 1024**2 + 10
    finally:
        await kv.aclose()


async def test_bad_keys_are_invalid(store: ObjectStore) -> None:
    for key in ("", "a\0b", "x" * 1025):
        with pytest.raises(InvalidArgument):
            await store.put(key, b"v")
    with pytest.raises(InvalidArgument):
        await store.put("k", b"v", expected_version=-1)


async def test_list_reports_size_version_refcount_and_pin(store: ObjectStore) -> None:
    await store.put("p/1", b"abc")
    await store.put("p/2", b"x" * 10_000)
    await store.put("q", b"")
    await store.add_ref("p/2")
    await store.pin("p/1")
    infos = {i.key: i for i in await store.list("p/")}
    assert set(infos) == {"p/1", "p/2"}
    assert (infos["p/1"].size, infos["p/1"].pinned, infos["p/1"].refs) == (3, True, 0)
    assert (infos["p/2"].size, infos["p/2"].pinned, infos["p/2"].refs) == (10_000, False, 1)


async def test_remove_ref_to_zero_collects_unless_pinned(store: ObjectStore) -> None:
    await store.put("k", b"x" * 10_000)
    assert await store.add_ref("k") == 1
    assert await store.add_ref("k") == 2
    assert await store.remove_ref("k") == 1
    assert await store.remove_ref("k") == 0
    with pytest.raises(NotFound):
        await store.info("k")
    assert _value_files(store.root) == []
    await store.put("p", b"v")
    await store.pin("p")
    await store.add_ref("p")
    await store.remove_ref("p")
    assert (await store.info("p")).refs == 0  # pinned: survives
    with pytest.raises(InvalidArgument):
        await store.remove_ref("p")


async def test_collect_takes_only_idle_unreferenced_unpinned_objects(store: ObjectStore) -> None:
    await store.put("idle", b"x" * 10_000)
    await store.put("pinned", b"p")
    await store.pin("pinned")
    await store.put("held", b"h")
    await store.add_ref("held")
    assert await store.collect(grace_s=3600) == []  # not idle long enough
    assert await store.collect(grace_s=0) == ["idle"]
    assert {i.key for i in await store.list()} == {"pinned", "held"}
    await store.unpin("pinned")
    assert await store.collect(grace_s=0) == ["pinned"]
    with pytest.raises(Conflict):
        await store.delete("held")  # referenced: only with force
    await store.delete("held", force=True)


async def test_collect_removes_orphaned_value_files(store: ObjectStore) -> None:
    await store.put("live", b"x" * 10_000)
    orphan = store.root / "ab" / ("ab" + "0" * 30)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crashed put")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    await store.collect(grace_s=3600)
    assert not orphan.exists()
    assert len(_value_files(store.root)) == 1  # the live object's file stays


async def test_a_holders_references_are_released_when_it_ends(store: ObjectStore) -> None:
    await store.put("k", b"v")
    await store.add_ref("k", holder="task-1")
    await store.add_ref("k")  # someone else's
    await store.release_holder("task-1")
    assert (await store.info("k")).refs == 1


async def test_objects_survive_a_restart(tmp_path: Path) -> None:
    async with LocalNode(tmp_path / "home") as node:
        await node.objects.put("small", b"s")
        version = await node.objects.put("large", b"L" * 100_000)
        await node.objects.pin("large")
    async with LocalNode(tmp_path / "home") as node:
        value, v = await node.objects.get("large")
        assert v == version and bytes(value) == b"L" * 100_000
        assert bytes((await node.objects.get("small"))[0]) == b"s"
        assert (await node.objects.info("large")).pinned
        assert await node.objects.usage() == 100_001


# -- the version rules as a state machine, against a dict model --------------------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put_if", "put_stale", "create", "delete", "get"]),
        st.sampled_from(["a", "b"]),
        st.binary(max_size=8),
    ),
    max_size=25,
)


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=_ops)
def test_version_rules_match_a_model(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    directory = tmp_path_factory.mktemp("model")

    async def main() -> None:
        kv = LevelDBKV.open(str(directory / "meta.ldb"))
        store = ObjectStore(kv, directory / "objects")
        model: dict[str, tuple[bytes, int]] = {}
        seen: set[int] = set()
        try:
            for op, key, value in ops:
                current = model.get(key)
                if op == "get":
                    if current is None:
                        with pytest.raises(NotFound):
                            await store.get(key)
                    else:
                        got, version = await store.get(key)
                        assert (bytes(got), version) == current
                    continue
                if op == "delete":
                    if current is None:
                        with pytest.raises(NotFound):
                            await store.delete(key)
                    else:
                        await store.delete(key)
                        del model[key]
                    continue
                expected = {
                    "put": None,
                    "put_if": current[1] if current else 0,
                    "put_stale": (current[1] - 1) if current else 7,
                    "create": 0,
                }[op]
                ok = expected is None or expected == (current[1] if current else 0)
                if ok:
                    version = await store.put(key, value, expected_version=expected)
                    assert version not in seen and all(version > s for s in seen)
                    seen.add(version)
                    model[key] = (value, version)
                else:
                    with pytest.raises(Conflict):
                        await store.put(key, value, expected_version=expected)
            assert {i.key: i.version for i in await store.list()} == {
                k: v[1] for k, v in model.items()
            }
        finally:
            await kv.aclose()

    anyio.run(main)


@pytest.mark.slow
async def test_a_100_mib_value_is_not_copied_on_get(tmp_path: Path) -> None:
    import tracemalloc

    kv = LevelDBKV.open(str(tmp_path / "meta.ldb"))
    store = ObjectStore(kv, tmp_path / "objects", max_bytes=200 * 1024**2)
    try:
        payload = b"z" * (100 * 1024**2)
        await store.put("huge", payload)
        tracemalloc.start()
        try:
            value, _ = await store.get("huge")
            checksum = value[0] + value[-1] + value[50 * 1024**2]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert value.nbytes == len(payload) and checksum == 3 * ord("z")
        assert peak < 1024**2  # Python allocated far less than the value: it was mapped
    finally:
        await kv.aclose()


# -- what the first mutation run showed nothing checked (docs/mutation/REPORT.md) --------


async def test_delete_keeps_a_stale_pinned_or_referenced_object(store: ObjectStore) -> None:
    version = await store.put("k", b"keep me")
    with pytest.raises(Conflict) as caught:
        await store.delete("k", expected_version=version + 1)
    assert str(caught.value) == f"object 'k' is at version {version}, not {version + 1}"
    await store.pin("k")
    with pytest.raises(Conflict) as caught:
        await store.delete("k")
    assert str(caught.value) == "object 'k' is pinned; unpin it, or delete with force"
    await store.unpin("k")
    await store.add_ref("k")
    with pytest.raises(Conflict) as caught:
        await store.delete("k", expected_version=version)
    assert str(caught.value) == "object 'k' is referenced 1 time(s); unpin it, or delete with force"
    value, _ = await store.get("k")
    assert bytes(value) == b"keep me"  # every refusal left it whole
    await store.delete("k", force=True)
    with pytest.raises(NotFound):
        await store.get("k")
    other = await store.put("j", b"x")
    await store.delete("j", expected_version=other)  # the right version deletes
    assert await store.list("j") == []


async def test_removing_a_reference_nobody_holds_is_refused(store: ObjectStore) -> None:
    await store.put("r", b"x")
    with pytest.raises(InvalidArgument) as caught:
        await store.remove_ref("r")
    assert str(caught.value) == "object 'r' has no references to remove"
    assert (await store.info("r")).refs == 0  # and it is still there


async def test_get_with_info_is_get_and_info_of_that_version(store: ObjectStore) -> None:
    for value in (b"small", b"x" * 10_000):
        version = await store.put("k", value)
        await store.add_ref("k")
        data, info = await store.get_with_info("k")
        assert bytes(data) == value
        assert info == await store.info("k") and info.version == version and info.refs >= 1
    with pytest.raises(NotFound):
        await store.get_with_info("absent")
