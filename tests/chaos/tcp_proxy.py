"""A userspace TCP proxy for fault tests: forwards a listening port to a target, and can
drop the reply of chosen connections, delay bytes, or refuse everything (a partition).

Used where the kernel's tools are missing here (no tc netem module, no iptables): see
docs/faults.md. Runs on its own thread with its own event loop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    """What the proxy does to the traffic now (changed while it runs)."""

    drop_replies_of: set[int] = field(default_factory=set)  # connection numbers, from 1
    delay_s: float = 0.0  # added before each chunk forwarded, either way
    drop_chance: float = 0.0  # a connection is cut at a chunk with this chance
    partitioned: bool = False  # new connections are closed at once, open ones cut


class TcpProxy:
    """`127.0.0.1:<port>` -> `target`, on a thread; `with TcpProxy(target) as proxy:`."""

    REPLY_BYTES = 100  # a dropped reply: the connection is cut once this much came back

    def __init__(self, target: str, listen_host: str = "127.0.0.1") -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listen_host = listen_host
        self.faults = Faults()
        self.connections = 0
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.address = future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut_all(self) -> None:
        """Cut every open connection (a partition starting)."""
        self._loop.call_soon_threadsafe(self._cut_all)

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _start(self) -> str:
        self._server = await asyncio.start_server(self._serve, self._listen_host, 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"{self._listen_host}:{port}"

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        if self.faults.partitioned:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self._target), timeout=5
            )
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        drop_reply = number in self.faults.drop_replies_of
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, writer, None),
                self._pump(up_reader, writer, up_writer, self.REPLY_BYTES if drop_reply else None),
            )
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
        swallow_then_cut: int | None,
    ) -> None:
        seen = 0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                faults = self.faults
                if faults.partitioned or (
                    faults.drop_chance and random.random() < faults.drop_chance
                ):
                    break
                if swallow_then_cut is not None:
                    seen += len(data)
                    if seen >= swallow_then_cut:
                        break  # the reply is lost: the caller sees the connection break
                    continue
                if faults.delay_s:
                    await asyncio.sleep(faults.delay_s)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            for w in (writer, other):
                with contextlib.suppress(Exception):
                    w.transport.abort()
