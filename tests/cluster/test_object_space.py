"""One object space across real SPEARlet processes and a real SMS (LevelDB and etcd): the
SMS's object index decides versions cluster-wide, gets read the current version from any
node, bytes move over the object transfer service (docs/objects.md)."""
# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from conftest import ROOT, build_c, build_wat
from helpers import assert_eventually, cluster_credentials, make_cluster, sms_call, spear
from test_scheduling import HELLO_WAT, on

from spear.core.models import FunctionSpec, TaskState
from spear.errors import Conflict, NotFound, PermissionDenied, Unavailable
from spear.node.client import Client
from spear.transport.channels import Credentials
from spear.transport.object_transfer import ObjectTransferClient
from spear.transport.tls import TlsFiles

if TYPE_CHECKING:
    from spear.node.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
BACKENDS = pytest.mark.parametrize("etcd", [False, True], ids=["leveldb", "etcd"])


def addresses(cluster: LocalCluster) -> list[str]:
    return [m.address for m in cluster.members]


def transfer_address(cluster: LocalCluster, node: str, key: str) -> str:
    """Where `node`'s object transfer service listens, from the index entry of `key`."""
    assert cluster.sms is not None
    record = sms_call(cluster.sms.address, "lookup_object", key)
    return next(h.address for h in record.holders if h.node == node)


def holders(cluster: LocalCluster, key: str) -> tuple[str, ...]:
    assert cluster.sms is not None
    names: tuple[str, ...] = sms_call(cluster.sms.address, "lookup_object", key).holder_names()
    return names


@BACKENDS
def test_the_counter_across_three_nodes_ends_exact(make_cluster: Any, etcd: bool) -> None:
    cluster = make_cluster(nodes=3, etcd=etcd)
    counter = build_c(ROOT / "examples" / "counter" / "counter.c")
    per_node = 5  # (60 tasks over 3 nodes: benchmarks/objects_cluster_bench.py --counter)

    async def main() -> None:
        clients = [Client(a, credentials=cluster_credentials()) for a in addresses(cluster)]
        try:
            handles = [
                await c.submit(FunctionSpec(str(counter), timeout_s=120))
                for _ in range(per_node)
                for c in clients
            ]
            ends = [await h.wait() for h in handles]
            assert {t.state for t in ends} == {TaskState.COMPLETED}, [t.reason for t in ends]
            assert {t.node for t in ends} == {"node-1", "node-2", "node-3"}
            for c in clients:  # the same, current value from every node
                value, _ = await c.get_object("counter")
                assert value == str(3 * per_node).encode()
            # Each task wrote a different value: 1 .. N, each once.
            written = sorted([int((await c.result(h.id)).output) for h in handles])
            assert written == list(range(1, 3 * per_node + 1))
        finally:
            for c in clients:
                await c.aclose()

    anyio.run(main)


@BACKENDS
def test_of_same_version_writers_on_different_nodes_exactly_one_wins(
    make_cluster: Any, etcd: bool
) -> None:
    cluster = make_cluster(nodes=3, etcd=etcd)
    n1 = cluster.member("node-1").address
    first = on(n1, lambda c: c.put_object("shared", b"v0"))

    async def main() -> list[Any]:
        outcomes: list[Any] = []

        async def write(address: str, value: bytes) -> None:
            async with Client(address, credentials=cluster_credentials()) as c:
                try:
                    outcomes.append(
                        await c.put_object("shared", value, expected_version=first.version)
                    )
                except Conflict as exc:
                    outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for i, address in enumerate(addresses(cluster)):
                tg.start_soon(write, address, f"v{i + 1}".encode())
        return outcomes

    outcomes = anyio.run(main)
    winners = [o for o in outcomes if not isinstance(o, Conflict)]
    assert len(winners) == 1 and len(outcomes) == 3, outcomes
    for address in addresses(cluster):
        data, info = on(address, lambda c: c.get_object("shared"))
        assert info.version == winners[0].version and data != b"v0"


def test_results_are_readable_from_any_node(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = (m.address for m in cluster.members)
    hello = build_wat(HELLO_WAT, tmp_path, "hello")

    async def run_on_two(c: Client) -> str:
        handle = await c.submit(FunctionSpec(str(hello)))
        task = await handle.wait()
        assert task.node == "node-2"
        return task.id

    task_id = on(n2, run_on_two)
    data, info = on(n1, lambda c: c.get_object(f"results/{task_id}"))
    assert data == b"hello from afar\n"
    got = spear("obj", "get", "--node", n1, f"results/{task_id}")
    assert got.returncode == 0 and got.stdout == "hello from afar\n", got.stderr
    listed = spear("obj", "ls", "--node", n1, "--json", "results/")
    assert listed.returncode == 0, listed.stderr
    assert f"results/{task_id}" in listed.stdout and "node-2" in listed.stdout


@BACKENDS
def test_a_cached_copy_is_replaced_after_an_overwrite_elsewhere(
    make_cluster: Any, etcd: bool
) -> None:
    cluster = make_cluster(nodes=3, etcd=etcd)
    n1, n2, n3 = addresses(cluster)
    on(n1, lambda c: c.put_object("doc", b"first" * 2000))  # (a file, not inline)
    data, first = on(n2, lambda c: c.get_object("doc"))
    assert data == b"first" * 2000
    assert_eventually(lambda: holders(cluster, "doc") == ("node-1", "node-2"))
    on(n3, lambda c: c.put_object("doc", b"second" * 2000))
    data, second = on(n2, lambda c: c.get_object("doc"))
    assert data == b"second" * 2000 and second.version > first.version
    # The overwrite made node-3 the only holder; node-2 now holds it again.
    assert_eventually(lambda: holders(cluster, "doc") == ("node-2", "node-3"))
    on(n1, lambda c: c.put_object("doc", b"third"))  # small: kept in the index itself
    data, third = on(n2, lambda c: c.get_object("doc"))
    assert data == b"third" and third.version > second.version


def test_a_small_value_is_read_from_the_index_even_with_its_holder_dead(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(nodes=3)
    n1, n2, n3 = addresses(cluster)
    small, big = b"s" * 4096, b"b" * 4097  # (the index keeps values of at most 4 KiB)
    on(n3, lambda c: c.put_object("small", small))
    on(n3, lambda c: c.put_object("big", big))
    assert sms_call(cluster.sms.address, "lookup_object", "small").value == small
    assert sms_call(cluster.sms.address, "lookup_object", "big").value is None
    assert on(n1, lambda c: c.get_object("small"))[0] == small
    assert on(n1, lambda c: c.get_object("big"))[0] == big
    # Read from the index, node-1 did not fetch a copy of the small one: no second hop.
    assert_eventually(lambda: holders(cluster, "big") == ("node-1", "node-3"))
    assert holders(cluster, "small") == ("node-3",)
    cluster.stop_member(cluster.member("node-3"), signal.SIGKILL)
    assert on(n2, lambda c: c.get_object("small"))[0] == small
    assert on(n2, lambda c: c.get_object("big"))[0] == big  # from node-1's copy
    got = spear("obj", "get", "--node", n2, "small")  # over the transfer service
    assert got.returncode == 0 and got.stdout == small.decode(), got.stderr


def test_refs_pins_and_delete_are_cluster_wide(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    on(n1, lambda c: c.put_object("kept", b"x"))
    assert on(n2, lambda c: c.pin_object("kept")).pinned
    assert spear("obj", "rm", "--node", n1, "kept").returncode != 0  # pinned, cluster-wide
    on(n1, lambda c: c.unpin_object("kept"))
    assert on(n2, lambda c: c.add_object_ref("kept")).refs == 1
    assert on(n1, lambda c: c.remove_object_ref("kept")).refs == 0  # the last one: gone
    for address in (n1, n2):
        with pytest.raises(NotFound):
            on(address, lambda c: c.get_object("kept"))


def test_the_only_holder_dead_is_a_clear_error(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    on(n2, lambda c: c.put_object("lonely", b"y" * 10000))
    cluster.stop_member(cluster.member("node-2"), signal.SIGKILL)
    got = spear("obj", "get", "--node", n1, "lonely")
    assert got.returncode == 76 and "node-2" in got.stderr, got.stderr
    assert "Traceback" not in got.stderr


def test_a_holder_killed_mid_transfer_leaves_nothing_half_written(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    on(n2, lambda c: c.put_object("big", b"z"))
    address = transfer_address(cluster, "node-2", "big")

    async def put_big() -> None:
        client = ObjectTransferClient(cluster_credentials())
        try:
            await client.put(address, "big", bytearray(512 * MiB))
        finally:
            await client.aclose()

    anyio.run(put_big)
    objects = cluster.member("node-1").data_dir / "objects"
    outcome: list[Any] = []

    def get() -> None:
        try:
            outcome.append(on(n1, lambda c: c.get_object("big"))[1])
        except Exception as exc:
            outcome.append(exc)

    reader = threading.Thread(target=get)
    reader.start()

    def receiving() -> bool:
        return any(p.is_file() and p.stat().st_size > 0 for p in objects.rglob("*"))

    assert_eventually(receiving, timeout=30, interval=0.002)
    os.kill(cluster.member("node-2").pid, signal.SIGKILL)
    reader.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable), outcome
    assert "node-2" in str(outcome[0])
    # Nothing half-written: no value file left, and node-1 holds no copy.
    assert_eventually(lambda: not any(p.is_file() for p in objects.rglob("*")), timeout=10)
    with pytest.raises(Unavailable):
        on(n1, lambda c: c.get_object("big"))


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_gib_crosses_nodes_with_bounded_memory(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    on(n1, lambda c: c.put_object("here/1", b"x"))
    on(n2, lambda c: c.put_object("here/2", b"x"))
    t1, t2 = (
        transfer_address(cluster, "node-1", "here/1"),
        transfer_address(cluster, "node-2", "here/2"),
    )
    source = tmp_path / "gib"
    with open(source, "wb") as f:
        f.truncate(1024 * MiB)  # sparse: nothing in this process's memory
    pid1, pid2 = cluster.member("node-1").pid, cluster.member("node-2").pid

    async def move() -> tuple[int, int]:
        client = ObjectTransferClient(cluster_credentials())
        try:
            await client.put_file(t2, "gib", source)
            return await client.prefetch(t1, "gib")  # node-1 pulls it from node-2
        finally:
            await client.aclose()

    before = {
        pid: max(_status_kib(pid, "VmHWM"), _status_kib(pid, "VmRSS")) for pid in (pid1, pid2)
    }
    version, size = anyio.run(move)
    assert size == 1024 * MiB
    for pid in (pid1, pid2):  # chunks, never the whole value: peak RSS grew by little
        grown = _status_kib(pid, "VmHWM") - before[pid]
        assert grown < 64 * 1024, f"process {pid} peak RSS grew by {grown} KiB"
    held = [p for p in (cluster.member("node-1").data_dir / "objects").rglob("*") if p.is_file()]
    assert [p.stat().st_size for p in held] == [1024 * MiB]
    assert_eventually(lambda: holders(cluster, "gib") == ("node-1", "node-2"))


def test_a_restarted_holder_announces_what_it_holds(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=2)
    n1 = cluster.member("node-1").address
    on(cluster.member("node-2").address, lambda c: c.put_object("kept", b"k" * 10000))
    before = transfer_address(cluster, "node-2", "kept")
    cluster.stop_member(cluster.member("node-2"), signal.SIGKILL)
    cluster.start_node(2)  # a new transfer port; the SMS hears of it when node-2 registers
    cluster.wait_registered()
    assert_eventually(lambda: transfer_address(cluster, "node-2", "kept") != before, timeout=20)
    data, _ = on(n1, lambda c: c.get_object("kept"))
    assert data == b"k" * 10000


def test_an_object_removed_while_its_holder_was_down_stays_removed(make_cluster: Any) -> None:
    """`spear obj rm` while the only holder is down; when it comes back and announces its
    copy, the copy is dropped (before: it was adopted and the object came back)."""
    cluster = make_cluster(nodes=2)
    n1 = cluster.member("node-1").address
    on(cluster.member("node-2").address, lambda c: c.put_object("doomed", b"d" * 10000))
    cluster.stop_member(cluster.member("node-2"), signal.SIGKILL)
    on(n1, lambda c: c.delete_object("doomed"))
    cluster.start_node(2)
    cluster.wait_registered()
    objects = cluster.member("node-2").data_dir / "objects"
    assert_eventually(lambda: not any(p.is_file() for p in objects.rglob("*")), timeout=20)
    with pytest.raises(NotFound):
        on(n1, lambda c: c.get_object("doomed"))
    assert on(n1, lambda c: c.list_objects("doomed")) == []


def test_gc_is_cluster_wide(make_cluster: Any) -> None:
    quick_gc = {"object_gc_grace_s": 1.0, "object_gc_interval_s": 0.3}
    cluster = make_cluster(nodes=2, node_settings={"node-1": quick_gc, "node-2": quick_gc})
    n1, n2 = addresses(cluster)
    on(n2, lambda c: c.put_object("pinned", b"p" * 10000))
    on(n1, lambda c: c.pin_object("pinned"))
    on(n2, lambda c: c.put_object("old", b"o" * 10000))
    on(n1, lambda c: c.get_object("old"))  # node-1 holds a copy too

    def files(node: str) -> int:
        return sum(p.is_file() for p in (cluster.member(node).data_dir / "objects").rglob("*"))

    def gone() -> bool:
        try:
            on(n1, lambda c: c.get_object("old"))
        except NotFound:
            return files("node-1") == 0 and files("node-2") == 1
        return False

    assert_eventually(gone, timeout=20, interval=0.2)
    assert on(n1, lambda c: c.get_object("pinned"))[0] == b"p" * 10000


def test_the_cli_moves_bytes_over_the_transfer_service(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(3 * MiB))
    put = spear("obj", "put", "--node", n1, "blob", str(source))
    assert put.returncode == 0 and "on node-1" in put.stdout, put.stderr
    out = tmp_path / "out.bin"
    got = spear("obj", "get", "--node", n2, "blob", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == source.read_bytes()
    listed = spear("obj", "ls", "--node", n2, "blob")
    assert "on node-1,node-2" in listed.stdout, listed.stdout
    stale = spear("obj", "put", "--node", n2, "blob", str(source), "--if-version", "1")
    assert stale.returncode == 69 and "Traceback" not in stale.stderr, stale.stderr


def test_the_transfer_service_refuses_callers_without_credentials(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=1)
    n1 = cluster.member("node-1").address
    on(n1, lambda c: c.put_object("secret", b"s"))
    address = transfer_address(cluster, "node-1", "secret")
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    ca = cluster_credentials().tls
    assert ca is not None
    (ca_only / "ca.crt").write_bytes((ca.directory / "ca.crt").read_bytes())

    async def get(credentials: Credentials) -> Any:
        client = ObjectTransferClient(credentials)
        try:
            return await client.get(address, "secret")
        finally:
            await client.aclose()

    with pytest.raises(PermissionDenied, match="requires a token or certificate"):
        anyio.run(get, Credentials(tls=TlsFiles(ca_only)))
    with pytest.raises(PermissionDenied, match="not accepted"):
        anyio.run(get, Credentials(token="spear_nope", tls=TlsFiles(ca_only)))
    owner = (cluster.member("node-1").data_dir / "auth" / "owner.token").read_text().strip()
    data, _ = anyio.run(get, Credentials(token=owner, tls=TlsFiles(ca_only)))
    assert data == b"s"
    with pytest.raises(Unavailable):  # plaintext to a TLS port: no answer it could trust
        anyio.run(get, Credentials())


def test_members_may_move_bytes_in_the_clear_after_mutual_tls(
    make_cluster: Any, tmp_path: Path
) -> None:
    clear = {"object_transfer_encrypt": False}
    cluster = make_cluster(nodes=2, node_settings={"node-1": clear, "node-2": clear})
    n1, n2 = addresses(cluster)
    value = os.urandom(3 * MiB)

    async def put(c: Client) -> Any:
        return await c.put_object("clear", value)

    on(n2, put)
    data, _ = on(n1, lambda c: c.get_object("clear"))  # node-1 pulled it from node-2
    assert data == value
    address = transfer_address(cluster, "node-1", "clear")

    async def get(encrypt: bool) -> Any:
        client = ObjectTransferClient(cluster_credentials(), encrypt=encrypt)
        try:
            return await client.get(address, "clear")
        finally:
            await client.aclose()

    assert anyio.run(get, False)[0] == value  # a member asks for the clear: allowed
    assert anyio.run(get, True)[0] == value
    owner = (cluster.member("node-1").data_dir / "auth" / "owner.token").read_text().strip()
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    tls = cluster_credentials().tls
    assert tls is not None
    (ca_only / "ca.crt").write_bytes((tls.directory / "ca.crt").read_bytes())
    token_user = ObjectTransferClient(
        Credentials(token=owner, tls=TlsFiles(ca_only)), encrypt=False
    )
    assert not token_user._plain  # a token is never sent in the clear


def test_a_tasks_references_are_cluster_wide_and_released_at_its_end(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    hostcalls = build_c(ROOT / "tests" / "wasm" / "hostcalls.c")
    on(n1, lambda c: c.put_object("shared", b"x" * 10_000))

    async def hold_on_two(c: Client) -> Any:
        spec = FunctionSpec(str(hostcalls), args=("hold", "shared"))
        async with c.start_task(spec) as stream:
            assert await stream.receive() == b"holding"  # (it also failed to delete it)
            during = await objects_on(n1)
            refused = await anyio.to_thread.run_sync(
                lambda: spear("obj", "rm", "--node", n1, "shared")
            )
            await stream.close()
        return during, refused

    async def objects_on(address: str) -> Any:
        async with Client(address, credentials=cluster_credentials()) as c:
            return {o.key: o for o in await c.list_objects("shared")}

    during, refused = on(n2, hold_on_two)
    assert during["shared"].refs == 1  # a reference taken on node-2, seen from node-1
    assert refused.returncode == 69, refused.stderr

    def released() -> bool:
        return bool(anyio.run(objects_on, n1)["shared"].refs == 0)

    assert_eventually(released, timeout=20)


def test_an_sms_that_lost_its_store_adopts_what_the_nodes_announce(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=2)
    n1, n2 = addresses(cluster)
    on(n2, lambda c: c.put_object("survivor", b"s" * 10000))
    sms = cluster.sms.address
    cluster.stop_member(cluster.sms)
    cluster.sms.data_dir = cluster.base / "sms-fresh"  # an empty store, same address
    cluster.start_sms(listen=sms)

    def readable() -> Any:
        try:
            return on(n1, lambda c: c.get_object("survivor"))
        except (NotFound, Unavailable):
            return None

    data, adopted = assert_eventually(readable, timeout=30, interval=0.2)
    assert data == b"s" * 10000
    # Versions still only grow: an overwrite gets a later one, and every node sees it.
    newer = on(n1, lambda c: c.put_object("survivor", b"new", expected_version=adopted.version))
    assert newer.version > adopted.version
    assert on(n2, lambda c: c.get_object("survivor"))[0] == b"new"


def test_a_copy_lost_with_its_member_is_made_again_elsewhere(make_cluster: Any) -> None:
    # Two copies (node-1, the writer, and one other); the other dies: node-1 makes a new
    # copy on the third member, so the value outlives node-1's death as well.
    replicas = {"object_replicas": 2}
    settings = {f"node-{i}": replicas for i in (1, 2, 3)}
    cluster = make_cluster(nodes=3, node_settings=settings)
    n1, n2, n3 = addresses(cluster)
    value = os.urandom(100_000)
    on(n1, lambda c: c.put_object("kept", value))
    assert_eventually(lambda: len(holders(cluster, "kept")) == 2)
    first_copy = next(n for n in holders(cluster, "kept") if n != "node-1")
    cluster.stop_member(cluster.member(first_copy), signal.SIGKILL)
    third = "node-3" if first_copy == "node-2" else "node-2"
    assert_eventually(lambda: third in holders(cluster, "kept"), timeout=60, interval=0.2)
    cluster.stop_member(cluster.member("node-1"), signal.SIGKILL)
    reader = n3 if third == "node-3" else n2  # (the new copy's member: the only one left)
    assert on(reader, lambda c: c.get_object("kept"))[0] == value


def test_with_object_replicas_a_value_outlives_its_writer(make_cluster: Any) -> None:
    replicas = {"object_replicas": 2}
    settings = {f"node-{i}": replicas for i in (1, 2, 3)}
    cluster = make_cluster(nodes=3, node_settings=settings)
    n1, n2, n3 = addresses(cluster)
    value = os.urandom(100_000)
    on(n1, lambda c: c.put_object("kept-twice", value))
    # A second member holds a copy soon after the put, without anyone reading it.
    assert_eventually(lambda: len(holders(cluster, "kept-twice")) == 2)
    copy = next(n for n in holders(cluster, "kept-twice") if n != "node-1")
    cluster.stop_member(cluster.member("node-1"), signal.SIGKILL)
    reader = n2 if copy == "node-3" else n3  # a member with no copy: it fetches one
    assert on(reader, lambda c: c.get_object("kept-twice"))[0] == value
