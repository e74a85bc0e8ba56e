"""grpclib against grpcio's asyncio API (`grpc.aio`), both with protobuf's own (upb)
messages, on spear's RunTask shape: the transport alone, no node behind it (issue #17,
item 6: measure before choosing one stack).

    python -m benchmarks.grpc_stacks [--quick]     # writes benchmarks/results/grpc_stacks.json

Each stack serves `spear.v1.Spearlet/RunTask` (a SubmitTaskRequest in, a stream of
ResultChunk out: one chunk carrying a TaskInfo and the request's stdin echoed back) from a
server process of its own, on loopback without TLS; the clients run in this process.
grpclib runs as spear runs it (its two speed-ups installed: transport/_speedups.py).

- latency: one call at a time, a trivial request (median, p99);
- clients_16: 16 clients (a connection each) calling at once, calls/s;
- mib: one call at a time with 1 MiB of stdin, echoed back as 1 MiB of output.

The two stacks alternate, round after round, so both see the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import anyio

from benchmarks.common import ROOT, standalone, summarize

RESULT_FILE = ROOT / "benchmarks" / "results" / "grpc_stacks.json"
METHOD = "/spear.v1.Spearlet/RunTask"
MiB = 1024 * 1024
MAX = 8 * MiB
STACKS = ("grpclib", "grpcio_aio")


def _chunk(pb: Any, request: Any) -> Any:
    task = pb.TaskInfo(id="01a22a2640d080e334ef65", state=pb.TASK_STATE_COMPLETED, exit_code=0)
    if request.HasField("spec"):
        task.spec.CopyFrom(request.spec)
    return pb.ResultChunk(task=task, data=request.stdin)


# -- servers (each in a process of its own: `python -m benchmarks.grpc_stacks serve X`) --


async def _serve_grpclib() -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    from spear.transport import _speedups
    from spear.transport._gen.pb import spearlet_pb2 as pb

    _speedups.install()

    async def run_task(stream: Any) -> None:
        request = await stream.recv_message()
        await stream.send_message(_chunk(pb, request))

    class Service:
        def __mapping__(self) -> dict[str, Handler]:
            return {
                METHOD: Handler(
                    run_task, Cardinality.UNARY_STREAM, pb.SubmitTaskRequest, pb.ResultChunk
                )
            }

    server = Server([Service()])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(port, flush=True)
    await server.wait_closed()


async def _serve_grpcio() -> None:
    import grpc

    from spear.transport._gen.pb import spearlet_pb2 as pb

    async def run_task(request: Any, context: Any) -> Any:
        yield _chunk(pb, request)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX),
            ("grpc.max_send_message_length", MAX),
        ]
    )
    handler = grpc.method_handlers_generic_handler(
        "spear.v1.Spearlet",
        {
            "RunTask": grpc.unary_stream_rpc_method_handler(
                run_task,
                request_deserializer=pb.SubmitTaskRequest.FromString,
                response_serializer=pb.ResultChunk.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


# -- clients --------------------------------------------------------------------------


class _Client:
    """One connection of either stack; `call(request)` returns the chunks' data length."""

    def __init__(self, stack: str, port: int) -> None:
        self.stack = stack
        self.port = port
        self._channel: Any = None
        self._call: Any = None

    async def open(self) -> None:
        from spear.transport._gen.pb import spearlet_pb2 as pb

        if self.stack == "grpclib":
            from grpclib.client import Channel

            self._channel = Channel("127.0.0.1", self.port)
            self._pb = pb
        else:
            import grpc

            self._channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{self.port}",
                options=[
                    ("grpc.max_receive_message_length", MAX),
                    ("grpc.max_send_message_length", MAX),
                ],
            )
            self._call = self._channel.unary_stream(
                METHOD,
                request_serializer=pb.SubmitTaskRequest.SerializeToString,
                response_deserializer=pb.ResultChunk.FromString,
            )

    async def call(self, request: Any) -> int:
        size = 0
        if self.stack == "grpclib":
            from grpclib.const import Cardinality

            pb = self._pb
            async with self._channel.request(
                METHOD, Cardinality.UNARY_STREAM, pb.SubmitTaskRequest, pb.ResultChunk
            ) as stream:
                await stream.send_message(request, end=True)
                async for chunk in stream:
                    size += len(chunk.data)
            return size
        async for chunk in self._call(request):
            size += len(chunk.data)
        return size

    async def aclose(self) -> None:
        if self.stack == "grpclib":
            self._channel.close()
        else:
            await self._channel.close()


def _request(stdin: bytes) -> Any:
    from spear.transport._gen.pb import spearlet_pb2 as pb

    spec = pb.FunctionSpec(artifact="trivial.wasm", runtime="wasm")
    return pb.SubmitTaskRequest(spec=spec, stdin=stdin, wait=True)


async def _latency(stack: str, port: int, n: int) -> list[float]:
    client = _Client(stack, port)
    await client.open()
    request = _request(b"")
    try:
        for _ in range(20):
            await client.call(request)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.call(request)
            samples.append(time.perf_counter() - t0)
        return samples
    finally:
        await client.aclose()


async def _clients(stack: str, port: int, clients: int, per_client: int) -> float:
    conns = [_Client(stack, port) for _ in range(clients)]
    request = _request(b"")
    for c in conns:
        await c.open()
        await c.call(request)
    try:

        async def run(c: _Client) -> None:
            for _ in range(per_client):
                await c.call(request)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(run, c)
        return clients * per_client / (time.perf_counter() - t0)
    finally:
        for c in conns:
            await c.aclose()


async def _mib(stack: str, port: int, n: int) -> list[float]:
    client = _Client(stack, port)
    await client.open()
    request = _request(os.urandom(MiB))
    try:
        assert await client.call(request) == MiB
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.call(request)
            samples.append(time.perf_counter() - t0)
        return samples
    finally:
        await client.aclose()


def _start(stack: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_stacks", "serve", stack],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"the {stack} server did not start")
    return proc, int(line)


def run(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 3
    n_lat, per_client, n_mib = (200, 20, 10) if quick else (1000, 60, 40)
    servers = {stack: _start(stack) for stack in STACKS}
    lat: dict[str, list[float]] = {s: [] for s in STACKS}
    rate: dict[str, list[float]] = {s: [] for s in STACKS}
    mib: dict[str, list[float]] = {s: [] for s in STACKS}
    try:
        for _ in range(rounds):
            for stack in STACKS:
                port = servers[stack][1]
                lat[stack] += anyio.run(_latency, stack, port, n_lat // rounds)
                rate[stack].append(anyio.run(_clients, stack, port, 16, per_client))
                mib[stack] += anyio.run(_mib, stack, port, n_mib // rounds)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    out: dict[str, Any] = {}
    for stack in STACKS:
        rates = sorted(rate[stack])
        out[stack] = {
            "run_task_latency": summarize(lat[stack]),
            "clients_16_calls_per_s": round(rates[len(rates) // 2], 1),
            "clients_16_rounds": [round(r, 1) for r in rate[stack]],
            "mib_round_trip": summarize(mib[stack]),
        }
    a, b = out["grpclib"], out["grpcio_aio"]
    out["grpcio_over_grpclib"] = {
        "latency_median": round(
            a["run_task_latency"]["median_ms"] / b["run_task_latency"]["median_ms"], 2
        ),
        "clients_16": round(b["clients_16_calls_per_s"] / a["clients_16_calls_per_s"], 2),
        "mib_median": round(a["mib_round_trip"]["median_ms"] / b["mib_round_trip"]["median_ms"], 2),
    }
    return {"grpc_stacks": out}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve = {"grpclib": _serve_grpclib, "grpcio_aio": _serve_grpcio}[argv[1]]
        anyio.run(serve)
        return 0
    result = standalone(__doc__, run, RESULT_FILE, argv)
    print(json.dumps(result["grpc_stacks"]["grpcio_over_grpclib"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
