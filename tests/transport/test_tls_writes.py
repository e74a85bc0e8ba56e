"""transport/_tls_writes.py over a real TLS connection on loopback: the writes of one
loop step leave as one write to the TLS transport (one record, not one each), in order;
what was written before a close still arrives; nothing is lost or reordered."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from spear.transport import tls
from spear.transport._tls_writes import CoalescingTransport

if TYPE_CHECKING:
    from pathlib import Path


class _Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def test_one_steps_writes_leave_as_one_and_arrive_in_order(tmp_path: Path) -> None:
    tls.create_ca(tmp_path / "ca")
    tls.issue(tmp_path / "ca", "server", tmp_path / "server")
    tls.issue(tmp_path / "ca", "client", tmp_path / "client")
    files = tls.TlsFiles(tmp_path / "server")
    receiver = _Receiver()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: receiver, "127.0.0.1", 0, ssl=files.server_context())
    port = server.sockets[0].getsockname()[1]
    inner, _ = await loop.create_connection(
        asyncio.Protocol,
        "127.0.0.1",
        port,
        ssl=tls.TlsFiles(tmp_path / "client").client_context(),
    )
    sent: list[bytes] = []
    real_write = inner.write

    def counting_write(data: Any) -> None:
        sent.append(bytes(data))
        real_write(data)

    inner.write = counting_write  # type: ignore[method-assign]
    transport = CoalescingTransport(inner)
    try:
        assert transport.get_extra_info("sslcontext") is not None  # (the TLS transport's)
        for chunk in (b"headers:", b"message:", b"", b"trailers"):
            transport.write(chunk)
        assert sent == []  # (kept until the loop turns)
        await asyncio.sleep(0)  # one turn of the loop: the flush runs
        assert sent == [b"headers:message:trailers"]
        transport.write(b"|last")
        transport.close()  # written before the close: still sent, then closed
        assert sent[-1] == b"|last"
        async with asyncio.timeout(10):
            await receiver.closed.wait()
        assert bytes(receiver.data) == b"headers:message:trailers|last"
    finally:
        inner.abort()
        server.close()
        await server.wait_closed()
