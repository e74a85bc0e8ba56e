"""One object space across nodes (docs/objects.md), beside Ray on three nodes of this
machine, in one run.

`python -m benchmarks.objects_cluster_bench [--quick] [--counter]` writes
benchmarks/results/objects_cluster.json. Everything is real processes on loopback: spear's
SMS (LevelDB) and three SPEARlets with the cluster's TLS, and `ray.cluster_utils.Cluster`
(a head and two raylets).

- cross-node get: the object lives on node-3 only (a new version written there before
  each sample); timed is a client's get through node-1, which knows the new version
  (pushed to it with the write), pulls it from node-3 and hands it on: over node-1's
  object transfer service (as a client on another host), and over its object socket
  (a client on node-1's host, as Ray's driver is on the head's). Ray: a
  task on the `far` raylet returns the bytes; once it finished (`ray.wait(...,
  fetch_local=False)`), timed is the driver's `ray.get(ref)` on the head.
- client put/get: a client's put and get of a value held by node-1, over a connection
  to its transfer service (TLS, as the cluster runs, as from another host); through
  node-1's object socket (a client on its host, with node-1's owner token: the value's
  file handed over and mapped, no byte over TCP); and through
  `spear.Client.put_object/get_object` with that token (which takes the socket:
  node/object_route.py). Ray: `ray.put` / `ray.get` in the driver.
- 1 GiB across nodes: written to node-3 from a sparse file, then node-1 pulls it
  (prefetch: no client copy), three times (Ray: three objects made on the far raylet);
  throughput of the first round and the median of the others, and node-1's peak RSS
  growth. The first GiB moved on a new VM is slow for both (`gib_figures`).
- `--counter`: examples/counter as 60 tasks over the 3 nodes; the final value.
- `--clear`: spear once more with `object_transfer_encrypt = false` (members move bytes in
  the clear after mutual TLS, as Ray moves them with no TLS at all).
- `--tls-records`: spear once more with `object_transfer_seal = false` (encrypted bytes in
  TLS's own records, as before transfers were sealed: transport/sealed.py).

spear's data dirs are on tmpfs (/dev/shm) as Ray's object store is: this machine's disk
writes about 130 MB/s, which a disk-backed run would measure instead.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.common import ROOT, build_c, standalone, summarize

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeAlias

    _Call: TypeAlias = Callable[[], Awaitable[Any]]  # a put or a get, ready to await

RESULT_FILE = ROOT / "benchmarks" / "results" / "objects_cluster.json"
MiB = 1024 * 1024
SIZES = {"1KiB": 1024, "1MiB": MiB, "64MiB": 64 * MiB}
_ENCRYPT = [True]  # whether this run's clients keep TLS for the bytes (see --clear)
_SEAL = [True]  # whether they seal an encrypted connection (see --tls-records)


def _transfer_client(credentials: Any) -> Any:
    from spear.transport.object_transfer import ObjectTransferClient

    return ObjectTransferClient(credentials, encrypt=_ENCRYPT[0], seal=_SEAL[0])


def counts(quick: bool) -> dict[str, int]:
    return (
        {"1KiB": 50, "1MiB": 30, "64MiB": 5} if quick else {"1KiB": 300, "1MiB": 100, "64MiB": 10}
    )


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _transfer_address(cluster: Any, node: str) -> str:
    """A node's transfer address, from the index entry of an object it wrote."""
    from spear.node.client import Client

    async def go() -> str:
        async with Client(cluster.member(node).address, credentials=cluster.credentials()) as c:
            await c.put_object(f"bench/where/{node}", b"x")
        from spear.transport.sms_client import SmsClient

        sms = SmsClient(cluster.sms.address, credentials=cluster.credentials())
        try:
            record = await sms.lookup_object(f"bench/where/{node}")
        finally:
            await sms.aclose()
        return next(h.address for h in record.holders if h.node == node)

    return anyio.run(go)


async def _cross_node(
    n1: str, n3: str, credentials: Any, n: dict[str, int], data_dir: Path
) -> dict[str, Any]:
    """A client's get through node-1 of a value just written on node-3: over node-1's
    transfer service (as from another host), and over its object socket (a client on
    node-1's host, as Ray's driver is on its head node's)."""
    from spear.transport.auth import read_owner_token
    from spear.transport.channels import Credentials
    from spear.transport.object_socket import ObjectSocketClient, socket_path

    client = _transfer_client(credentials)
    owner = Credentials(token=read_owner_token(data_dir))
    local = ObjectSocketClient(str(socket_path(data_dir)), owner)
    readers = {
        "": functools.partial(client.get, n1),
        " (object socket)": local.get,
    }
    out: dict[str, Any] = {}
    try:
        for label, size in SIZES.items():
            payload = os.urandom(size)
            for how, get in readers.items():
                samples = []
                for i in range(n[label] + 1):
                    await client.put(n3, f"bench/{label}", payload)  # a new version, on node-3
                    t0 = time.perf_counter()
                    data, _ = await get(f"bench/{label}")
                    if i:  # (the first warms connections)
                        samples.append(time.perf_counter() - t0)
                    assert len(data) == size
                out[f"cross-node get {label}{how}"] = summarize(samples)
    finally:
        await client.aclose()
        await local.aclose()
    return out


async def _puts_and_gets(
    put: Callable[[], Awaitable[Any]], get: Callable[[], Awaitable[Any]], count: int, size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`count` puts, each followed by a get, timed one by one (after one put to warm up)."""
    await put()
    puts, gets = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        await put()
        puts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = await get()
        gets.append(time.perf_counter() - t0)
        assert len(got[0]) == size
    return summarize(puts), summarize(gets)


async def _client(
    n1: str, grpc_n1: str, credentials: Any, n: int, data_dir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in ("1MiB", "64MiB"):
        count = n if label == "1MiB" else max(3, n // 10)
        out.update(await _client_paths(label, n1, grpc_n1, credentials, count, data_dir))
    return out


async def _client_paths(
    label: str, n1: str, grpc_n1: str, credentials: Any, count: int, data_dir: Path
) -> dict[str, Any]:
    from spear.node.client import Client
    from spear.transport.auth import read_owner_token
    from spear.transport.channels import Credentials
    from spear.transport.object_socket import ObjectSocketClient, socket_path

    size = SIZES[label]
    payload = os.urandom(size)
    owner = Credentials(token=read_owner_token(data_dir), tls=credentials.tls)  # (the CA too)
    transfer = _transfer_client(credentials)
    local = ObjectSocketClient(str(socket_path(data_dir)), owner)
    out: dict[str, Any] = {}
    try:
        async with Client(grpc_n1, credentials=owner) as client:
            paths: dict[str, tuple[_Call, _Call]] = {
                "transfer": (
                    functools.partial(transfer.put, n1, "bench/client", payload),
                    functools.partial(transfer.get, n1, "bench/client"),
                ),
                "object socket": (
                    functools.partial(local.put, "bench/socket", payload),
                    functools.partial(local.get, "bench/socket"),
                ),
                "spear.Client": (
                    functools.partial(client.put_object, "bench/grpc", payload),
                    functools.partial(client.get_object, "bench/grpc"),
                ),
            }
            for name, (put, get) in paths.items():
                timed = await _puts_and_gets(put, get, count, size)
                out[f"client put {label} ({name})"], out[f"client get {label} ({name})"] = timed
    finally:
        await transfer.aclose()
        await local.aclose()
    return out


GIB_ROUNDS = 5  # 1 GiB moved this many times; the first is reported on its own (see below)


def gib_figures(seconds: list[float]) -> dict[str, Any]:
    """Throughput of 1 GiB moved in each of `seconds`: the first round alone, and the
    median of the others. The first GiB a new machine (a VM) moves lands in memory its
    host has not backed yet: on this machine it runs at a third of the later rounds'
    speed for Ray and spear alike, whatever the transport (docs/benchmarks.md)."""
    later = sorted(seconds[1:]) or seconds
    median = later[len(later) // 2]
    return {
        "rounds (s)": [round(s, 3) for s in seconds],
        "first round GiB/s": round(1 / seconds[0], 2),
        "GiB/s": round(1 / median, 2),
    }


async def _one_gib(n1: str, n3: str, credentials: Any, pid1: int, directory: Path) -> Any:

    source = directory / "one.gib"
    with open(source, "wb") as f:  # noqa: ASYNC230 - a sparse file: no data written
        f.truncate(1024 * MiB)
    client = _transfer_client(credentials)
    puts, pulls = [], []
    try:
        rss0, hwm0 = _rss_kib(pid1, "VmRSS"), _rss_kib(pid1, "VmHWM")
        for _ in range(GIB_ROUNDS):  # each round a new version, written to node-3 only
            t0 = time.perf_counter()
            await client.put_file(n3, "bench/1GiB", source)
            puts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, size = await client.prefetch(n1, "bench/1GiB")
            pulls.append(time.perf_counter() - t0)
            assert size == 1024 * MiB
        hwm1 = _rss_kib(pid1, "VmHWM")
    finally:
        await client.aclose()
        source.unlink()
    return {
        "client put to node-3 (s)": [round(s, 3) for s in puts],
        "node-1 pulls from node-3": gib_figures(pulls),
        "GiB/s": gib_figures(pulls)["GiB/s"],
        "node-1 RSS before (MiB)": rss0 // 1024,
        "node-1 peak RSS growth (MiB)": max(0, hwm1 - max(hwm0, rss0)) // 1024,
    }


def _counter(cluster: Any, tasks: int, directory: Path) -> dict[str, Any]:
    from spear.core.models import FunctionSpec
    from spear.node.client import Client

    module = build_c(ROOT / "examples" / "counter" / "counter.c", directory / "counter.wasm")

    async def go() -> dict[str, Any]:
        clients = [Client(m.address, credentials=cluster.credentials()) for m in cluster.members]
        try:
            t0 = time.perf_counter()
            handles = [
                await clients[i % len(clients)].submit(FunctionSpec(str(module), timeout_s=300))
                for i in range(tasks)
            ]
            ends = [await h.wait() for h in handles]
            took = time.perf_counter() - t0
            value, _ = await clients[0].get_object("counter")
            nodes: dict[str, int] = {}
            for t in ends:
                nodes[t.node or "?"] = nodes.get(t.node or "?", 0) + 1
            return {
                "tasks": tasks,
                "final value": int(value),
                "completed": sum(t.state.value == "COMPLETED" for t in ends),
                "ran_on": nodes,
                "seconds": round(took, 2),
            }
        finally:
            for c in clients:
                await c.aclose()

    return anyio.run(go)


def spear_side(
    quick: bool, counter: bool, encrypt: bool = True, seal: bool = True
) -> dict[str, Any]:
    from spear.node.local_cluster import LocalCluster

    # On tmpfs where there is one, as Ray's object store is (/dev/shm): this machine's disk
    # writes ~130 MB/s, which would be measured instead of the object space.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="spear-objbench-", dir=shm) as tmp:
        directory = Path(tmp)
        _ENCRYPT[0], _SEAL[0] = encrypt, seal
        how = ({} if encrypt else {"object_transfer_encrypt": False}) | (
            {} if seal else {"object_transfer_seal": False}
        )
        settings = {f"node-{i}": how for i in (1, 2, 3)}
        cluster = LocalCluster(directory / "cluster", nodes=3, node_settings=settings)
        with cluster:
            credentials = cluster.credentials()
            n1, n3 = _transfer_address(cluster, "node-1"), _transfer_address(cluster, "node-3")
            out: dict[str, Any] = {}
            node1_dir = cluster.member("node-1").data_dir
            out.update(anyio.run(_cross_node, n1, n3, credentials, counts(quick), node1_dir))
            grpc_n1 = cluster.member("node-1").address
            n = 30 if quick else 100
            out.update(anyio.run(_client, n1, grpc_n1, credentials, n, node1_dir))
            pid1 = cluster.member("node-1").pid
            out["1GiB across nodes"] = anyio.run(_one_gib, n1, n3, credentials, pid1, directory)
            if counter:
                out["counter"] = _counter(cluster, 60, directory)
        return out


def ray_side(quick: bool) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    n = counts(quick)
    store = 3 * 1024 * MiB  # each raylet's object store: room for the 1 GiB object
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": store}
    )
    try:
        nodes.add_node(num_cpus=2, resources={"far": 10_000}, object_store_memory=store)
        nodes.add_node(num_cpus=2, object_store_memory=store)
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()

        @ray.remote(resources={"far": 1})
        def produce(size: int, salt: int) -> bytes:
            return os.urandom(16) + bytes(size - 16)

        out: dict[str, Any] = {"version": ray.__version__}
        for label, size in SIZES.items():
            samples = []
            for i in range(n[label] + 1):
                ref = produce.remote(size, i)
                ray.wait([ref], fetch_local=False)
                t0 = time.perf_counter()
                value = ray.get(ref)
                if i:
                    samples.append(time.perf_counter() - t0)
                assert len(value) == size
                del ref, value
            out[f"cross-node get {label}"] = summarize(samples)
        for label in ("1MiB", "64MiB"):
            payload = os.urandom(SIZES[label])
            puts, gets = [], []
            for _ in range(30 if label == "1MiB" else 5):
                t0 = time.perf_counter()
                ref = ray.put(payload)
                puts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ray.get(ref)
                gets.append(time.perf_counter() - t0)
                del ref
            out[f"driver put {label}"] = summarize(puts)
            out[f"driver get {label}"] = summarize(gets)
        rounds = []
        for salt in range(GIB_ROUNDS):  # as spear's: a new object each round
            one = produce.remote(1024 * MiB, salt)
            ray.wait([one], fetch_local=False)
            t0 = time.perf_counter()
            value = ray.get(one)
            rounds.append(time.perf_counter() - t0)
            del one, value
        figures = gib_figures(rounds)
        out["1GiB across nodes"] = {"get": figures, "GiB/s": figures["GiB/s"]}
        return out
    finally:
        ray.shutdown()
        nodes.shutdown()


def run(
    quick: bool, counter: bool = False, clear: bool = False, tls_records: bool = False
) -> dict[str, Any]:
    out = {"spear": spear_side(quick, counter)}
    if tls_records:  # encrypted in TLS's own records, not sealed (object_transfer_seal)
        out["spear, object_transfer_seal = false"] = spear_side(quick, False, seal=False)
    if clear:  # members move bytes in the clear after mutual TLS (object_transfer_encrypt)
        out["spear, object_transfer_encrypt = false"] = spear_side(quick, False, encrypt=False)
    out["ray"] = ray_side(quick)
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flags = {flag: flag in args for flag in ("--counter", "--clear", "--tls-records")}
    args = [a for a in args if a not in flags]
    runs = lambda quick: run(  # noqa: E731
        quick, flags["--counter"], flags["--clear"], flags["--tls-records"]
    )
    standalone(__doc__, runs, RESULT_FILE, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
