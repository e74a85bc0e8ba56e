"""`spear.Client` on grpc.aio against the grpclib client it replaced, side by side
against one `spear serve` daemon (issue 17, item 6; docs/benchmarks.md).

    nice -n 10 python -m benchmarks.client_stacks [--quick]   # results/client_stacks.json

Both clients call the same daemon (its server is unchanged between them), in rounds that
alternate, so both see the same machine:

- call: RunTask (what `client.call(spec)` sends: a trivial WASM task and its result in
  one call, the request built once), one at a time: median and p99, and the CPU this
  (client) process spent per call;
- node_info: GetNodeInfo round trips (a unary call, the transport alone);
- clients_16: 16 clients (a connection each) calling RunTask at once, calls/s.

Both make the call the same way (`channel.request(...)`, RunTask's protobuf messages),
"grpc.aio" on `AioChannel` as node/client.py now does, "grpclib" on transport/channels.py's
channel as node/client.py did before it moved (kept here only to measure against).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.common import ROOT, TRIVIAL_WAT, standalone, summarize
from benchmarks.grpc_bench import _Daemon

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

RESULT_FILE = ROOT / "benchmarks" / "results" / "client_stacks.json"
STACKS = ("grpc.aio", "grpclib")


class _GrpclibCaller:
    """RunTask and GetNodeInfo over grpclib, as `spear.Client` made them before."""

    def __init__(self, address: str, token: str | None) -> None:
        from spear.transport.channels import Credentials, open_channel

        host, _, port = address.rpartition(":")
        self._channel = open_channel(host, int(port), credentials=Credentials(token=token))

    async def call(self, request: Any) -> None:
        from grpclib.const import Cardinality

        from spear.transport._gen.pb import spearlet_pb2 as pb

        async with self._channel.request(
            "/spear.v1.Spearlet/RunTask", Cardinality.UNARY_STREAM, pb.SubmitTaskRequest,
            pb.ResultChunk,
        ) as stream:  # fmt: skip
            await stream.send_message(request, end=True)
            chunks = [c async for c in stream]
        assert chunks and chunks[0].task.state == pb.TASK_STATE_COMPLETED

    async def node_info(self) -> None:
        from grpclib.const import Cardinality

        from spear.transport._gen.pb import spearlet_pb2 as pb

        async with self._channel.request(
            "/spear.v1.Spearlet/GetNodeInfo", Cardinality.UNARY_UNARY, pb.GetNodeInfoRequest,
            pb.NodeInfo,
        ) as stream:  # fmt: skip
            await stream.send_message(pb.GetNodeInfoRequest(), end=True)
            await stream.recv_message()

    async def aclose(self) -> None:
        from spear.transport.channels import close_channel

        await close_channel(self._channel)


class _AioCaller(_GrpclibCaller):
    """The same two calls as `spear.Client` now makes them (grpc.aio, `AioChannel`)."""

    def __init__(self, address: str, token: str | None) -> None:
        from spear.transport.aio_client import AioChannel
        from spear.transport.channels import Credentials

        self._channel = AioChannel(address, Credentials(token=token))

    async def aclose(self) -> None:
        await self._channel.aclose()


async def _timed(n: int, fn: Callable[[], Awaitable[Any]]) -> tuple[list[float], float]:
    """`n` calls one at a time: their durations, and this process's CPU per call (s)."""
    samples = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples, (time.process_time() - cpu) / n


async def _measure(address: str, token: str | None, module: Path, quick: bool) -> dict[str, Any]:
    from spear import FunctionSpec
    from spear.node.client import Client

    spec = FunctionSpec(str(module))
    async with Client(address, token=token) as warm:  # the module uploaded once
        await warm.call(spec)
        request = await warm._request(spec, None, wait=True)

    def make(stack: str) -> Any:
        if stack == "grpclib":
            return _GrpclibCaller(address, token)
        return _AioCaller(address, token)

    rounds = 2 if quick else 4
    n = 150 if quick else 600
    per_client = 20 if quick else 100
    calls: dict[str, list[float]] = {s: [] for s in STACKS}
    cpu: dict[str, list[float]] = {s: [] for s in STACKS}
    unary: dict[str, list[float]] = {s: [] for s in STACKS}
    rates: dict[str, list[float]] = {s: [] for s in STACKS}
    for _ in range(rounds):
        for stack in STACKS:
            caller = make(stack)
            try:
                for _ in range(20):  # the connection made, the paths warm
                    await caller.call(request)
                samples, per_call = await _timed(n, lambda c=caller: c.call(request))
                calls[stack] += samples
                cpu[stack].append(per_call)
                unary[stack] += (await _timed(n, caller.node_info))[0]
            finally:
                await caller.aclose()
            rates[stack].append(await _clients_16(make, stack, request, per_client))
    out: dict[str, Any] = {}
    for stack in STACKS:
        out[stack] = {
            "call": summarize(calls[stack]),
            "client_cpu_ms_per_call": round(statistics.median(cpu[stack]) * 1e3, 3),
            "node_info": summarize(unary[stack]),
            "clients_16_calls_per_s": round(statistics.median(rates[stack]), 1),
            "clients_16_rounds": [round(r, 1) for r in rates[stack]],
        }
    return out


async def _clients_16(make: Callable[[str], Any], stack: str, request: Any, per: int) -> float:
    callers = [make(stack) for _ in range(16)]
    try:
        for c in callers:
            await c.call(request)

        async def worker(c: Any) -> None:
            for _ in range(per):
                await c.call(request)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for c in callers:
                tg.start_soon(worker, c)
        return 16 * per / (time.perf_counter() - start)
    finally:
        for c in callers:
            await c.aclose()


def run(quick: bool) -> dict[str, Any]:
    import wasmtime

    from spear.transport.auth import read_owner_token

    with tempfile.TemporaryDirectory(prefix="spear-client-stacks-") as tmp:
        directory = Path(tmp)
        module = directory / "trivial.wasm"
        module.write_bytes(wasmtime.wat2wasm(TRIVIAL_WAT))
        daemon = _Daemon(directory / "home")
        before = os.getloadavg()[0]
        try:
            token = read_owner_token(directory / "home")
            result = anyio.run(_measure, daemon.address, token, module, quick)
        finally:
            daemon.stop()
    result["conditions"] = {
        "load_average_1min_before": round(before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, RESULT_FILE, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
