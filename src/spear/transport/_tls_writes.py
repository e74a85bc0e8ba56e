"""Fewer TLS records a call: the HTTP/2 writes of one event-loop step, sent as one.

grpclib writes each HTTP/2 step to its transport at once: a RunTask is five writes (the
caller's headers and message, the node's headers, message and trailers). Over TLS each
write is a record of its own through asyncio's pure-Python SSL layer (an `SSLObject.write`,
a memory-BIO read, a socket send each), the largest part of what TLS adds to a call
(docs/security.md, "What it costs"). `CoalescingTransport` keeps the writes of one loop
step and sends them together on the next turn of the loop, so a call is two records, not
five. Encryption, verification and the bytes sent are unchanged; only the record
boundaries move. `install()` wraps grpclib's `H2Protocol.connection_made` so a TLS
connection gets one (plain TCP is left as it is); it is called where spear starts a
gRPC server or client (transport/_speedups.py), is idempotent, and does nothing on a
grpclib other than the one tested.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.protocol import H2Protocol

from spear.transport._tested import tested_version

TESTED = "0.4."  # grpclib versions whose H2Protocol.connection_made this one wraps
upstream = H2Protocol.connection_made


class CoalescingTransport:
    """An asyncio transport that sends the writes of one loop step as one write."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()  # (what was written before the close goes first, as without us)
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading...
        return getattr(self._transport, name)


def _connection_made(self: H2Protocol, transport: Any) -> None:
    if transport.get_extra_info("sslcontext") is not None:
        transport = CoalescingTransport(transport)
    upstream(self, transport)


def installed() -> bool:
    return H2Protocol.connection_made is _connection_made


def install() -> bool:
    """Wrap `H2Protocol.connection_made` (idempotent); False on an untested grpclib."""
    if installed():
        return True
    if not tested_version("grpclib", TESTED):
        return False
    H2Protocol.connection_made = _connection_made  # type: ignore[method-assign]
    return True
