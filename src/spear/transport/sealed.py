"""Sealed connections: encrypted object transfers past Python's TLS record layer.

Python's `ssl` moves one TLS record (at most 16 KiB) per call, and one core on each side
moved 0.56-1.0 GiB/s through it on this machine, against 13-15 GiB/s a core for the same
AES-GCM done by `cryptography` a MiB at a time (docs/objects.md). So an encrypted object
transfer keeps TLS for what TLS is for, the handshake: it authenticates the node (and a
member's certificate), and through it each side sends a fresh random key. Then the
connection leaves TLS (`SSLSocket.unwrap`, as `object_transfer_encrypt = false` does) and
goes on sealed: every `sendall` in AES-256-GCM records of up to 1 MiB.

A record is a 4-byte big-endian length of what follows, then that much ciphertext (the
plaintext, then its 16-byte tag). The length is the record's associated data and the
nonce is the record's number in its direction, so a record dropped, repeated, reordered,
altered, cut short or sent back the other way fails its tag, and the connection ends
(`SealBroken`). Each key seals one direction of one connection, and each side moves to
the next key every `REKEY_EVERY` records (at most 64 GiB under one key, well inside
AES-GCM's limits), derived from the last by HKDF-SHA256 as TLS 1.3's key update does, so
a connection may carry any amount. What the record layer does not hide is what TLS does
not hide either: sizes and timing.
"""

from __future__ import annotations

import io
import os
import struct
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

if TYPE_CHECKING:
    import socket

Buffer = bytes | bytearray | memoryview

RECORD = 1 << 20  # plaintext bytes a record holds at most
TAG = 16  # AES-GCM's tag, after each record's ciphertext
KEY_BYTES = 32  # AES-256
REKEY_EVERY = 1 << 16  # records sealed under one key (at most 64 GiB of them)
_HEADER = struct.Struct(">I")
_NONCE_PREFIX = bytes(4)  # a nonce: 4 zero bytes, then the record's 8-byte number


class SealBroken(ConnectionError):
    """A record failed its check, or the connection ended inside one."""


def new_key() -> bytes:
    """A fresh key for one direction of one connection."""
    return os.urandom(KEY_BYTES)


def next_key(key: bytes) -> bytes:
    """The key after `key` in its direction (HKDF-Expand-SHA256 of it)."""
    return HKDFExpand(SHA256(), KEY_BYTES, b"spear sealed: next key").derive(key)


def _nonce(number: int) -> bytes:
    return _NONCE_PREFIX + number.to_bytes(8, "big")


class SealedSocket:
    """A connected socket whose bytes are sealed both ways; `sendall`, `recv_into` and
    `makefile("rb")` as a socket's, and the rest (timeouts, shutdown, close) passed on."""

    def __init__(self, sock: socket.socket, *, send_key: bytes, receive_key: bytes) -> None:
        if len(send_key) != KEY_BYTES or len(receive_key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes")
        if send_key == receive_key:  # (a record sent back would then open)
            raise ValueError("each direction has its own key")
        self._sock = sock
        self._send_key, self._receive_key = send_key, receive_key
        self._seal = AESGCM(send_key)
        self._open = AESGCM(receive_key)
        self._sent_records = 0
        self._received_records = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        self._out = bytearray(_HEADER.size + RECORD + TAG)
        self._in = bytearray(RECORD + TAG)
        self._plain = bytearray(RECORD)  # what a record held beyond a short read
        self._start = self._end = 0  # (its unread part)
        self._header = b""  # the record being read's header: its associated data

    # -- sending ---------------------------------------------------------------------

    def sendall(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), RECORD):
            self._send_record(view[start : start + RECORD])

    def _send_record(self, piece: memoryview) -> None:
        size = len(piece) + TAG
        out = memoryview(self._out)
        _HEADER.pack_into(out, 0, size)
        header = out[: _HEADER.size]
        body = out[_HEADER.size : _HEADER.size + size]
        if self._sent_records and not self._sent_records % REKEY_EVERY:
            self._send_key = next_key(self._send_key)
            self._seal = AESGCM(self._send_key)
        self._seal.encrypt_into(_nonce(self._sent_records), piece, header, body)
        self._sent_records += 1
        self.sent_bytes += len(piece)
        self._sock.sendall(out[: _HEADER.size + size])

    # -- receiving -------------------------------------------------------------------

    def recv_into(self, buffer: Buffer, nbytes: int = 0) -> int:
        """Up to `nbytes` (else the buffer's length) plaintext bytes into `buffer`; 0 at the
        end of the connection. A record that fits is opened straight into `buffer`."""
        view = memoryview(buffer).cast("B")
        if nbytes:
            view = view[:nbytes]
        if not view:
            return 0
        if self._start == self._end:
            size = self._next_record()
            if size is None:
                return 0
            if size <= len(view):
                self._open_record(size, view)
                return size
            self._open_record(size, memoryview(self._plain))
            self._start, self._end = 0, size
        n = min(len(view), self._end - self._start)
        view[:n] = self._plain[self._start : self._start + n]
        self._start += n
        return n

    def _next_record(self) -> int | None:
        """The plaintext size of the next record, its ciphertext read into `_in`; None at
        the end of the connection (between records)."""
        header = bytearray(_HEADER.size)
        if not self._read_exactly(memoryview(header), at_start=True):
            return None
        size: int = _HEADER.unpack(header)[0]
        if not TAG < size <= RECORD + TAG:
            raise SealBroken(f"a sealed record cannot be {size} bytes")
        self._header = bytes(header)
        self._read_exactly(memoryview(self._in)[:size], at_start=False)
        return size - TAG

    def _open_record(self, size: int, into: memoryview) -> None:
        sealed = memoryview(self._in)[: size + TAG]
        if self._received_records and not self._received_records % REKEY_EVERY:
            self._receive_key = next_key(self._receive_key)
            self._open = AESGCM(self._receive_key)
        try:
            self._open.decrypt_into(
                _nonce(self._received_records), sealed, self._header, into[:size]
            )
        except InvalidTag:
            raise SealBroken("a sealed record failed its check") from None
        self._received_records += 1
        self.received_bytes += size

    def _read_exactly(self, view: memoryview, *, at_start: bool) -> bool:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if not n:
                if at_start and not got:
                    return False
                raise SealBroken("the connection ended inside a sealed record")
            got += n
        return True

    def makefile(self, mode: str = "rb", buffering: int = io.DEFAULT_BUFFER_SIZE) -> Any:
        if mode != "rb":
            raise ValueError("a sealed socket reads in binary only")
        return io.BufferedReader(_Reader(self), buffering)

    # -- the rest, as the socket's -----------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, sealed: SealedSocket) -> None:
        self._sealed = sealed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sealed.recv_into(buffer)
