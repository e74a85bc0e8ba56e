"""Sealed connections (transport/sealed.py): bytes both ways in AES-256-GCM records keyed
after a TLS handshake. Real socket pairs; what an attacker on the wire could do (alter,
drop, repeat, reorder, cut, reflect a record) is done to the bytes between the two ends.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import threading
from typing import TYPE_CHECKING

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spear.transport import sealed
from spear.transport.sealed import RECORD, TAG, SealBroken, SealedSocket, new_key, next_key

if TYPE_CHECKING:
    from collections.abc import Iterator

A_TO_B, B_TO_A = new_key(), new_key()


@pytest.fixture
def pair() -> Iterator[tuple[SealedSocket, SealedSocket]]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    yield (
        SealedSocket(a, send_key=A_TO_B, receive_key=B_TO_A),
        SealedSocket(b, send_key=B_TO_A, receive_key=A_TO_B),
    )
    a.close()
    b.close()


def _value(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(min(size, 4096))) * (size // 4096 + 1)


def _send(side: SealedSocket, data: bytes) -> threading.Thread:
    """Send from a thread (a socket pair's buffer holds less than a record)."""
    thread = threading.Thread(target=side.sendall, args=(data,))
    thread.start()
    return thread


def _read(side: SealedSocket, size: int, step: int) -> bytes:
    out = bytearray()
    buf = bytearray(step)
    while len(out) < size:
        n = side.recv_into(buf)
        assert n, f"ended after {len(out)} of {size}"
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("size", [1, 100, RECORD - 1, RECORD, RECORD + 1, 3 * RECORD + 5])
@pytest.mark.parametrize("step", [7, 64 * 1024, RECORD, 2 * RECORD])
def test_bytes_arrive_whole_and_in_order_however_they_are_read(
    pair: tuple[SealedSocket, SealedSocket], size: int, step: int
) -> None:
    a, b = pair
    value = _value(size)[:size]
    sending = _send(a, value)
    assert _read(b, size, step) == value
    sending.join()
    assert (a.sent_bytes, b.received_bytes) == (size, size)
    sending = _send(b, b"and back")  # the other way, with the other key
    assert _read(a, 8, 8) == b"and back"
    sending.join()


def test_a_buffered_reader_reads_lines_and_bodies(pair: tuple[SealedSocket, SealedSocket]) -> None:
    a, b = pair
    body = _value(2 * RECORD + 3)[: 2 * RECORD + 3]
    sending = _send(a, b'{"ok": true}\n' + body)
    rfile = b.makefile("rb", 64 * 1024)
    assert rfile.readline() == b'{"ok": true}\n'
    out = bytearray(len(body))
    view = memoryview(out)
    got = 0
    while got < len(out):
        got += rfile.readinto(view[got:])
    assert out == body
    sending.join()
    with pytest.raises(ValueError, match="^a sealed socket reads in binary only$"):
        b.makefile("r")


def test_nothing_is_sent_for_nothing_and_an_empty_read_reads_nothing(
    pair: tuple[SealedSocket, SealedSocket],
) -> None:
    a, b = pair
    a.sendall(b"")
    assert a.sent_bytes == 0
    assert b.recv_into(bytearray(0)) == 0
    a.sendall(b"xy")
    buf = bytearray(8)
    assert b.recv_into(buf, 1) == 1 and buf[:1] == b"x"  # (nbytes caps the read)
    assert b.recv_into(buf) == 1 and buf[:1] == b"y"


def test_the_end_between_records_is_the_end(pair: tuple[SealedSocket, SealedSocket]) -> None:
    a, b = pair
    a.sendall(b"last")
    a.shutdown(socket.SHUT_WR)
    buf = bytearray(16)
    assert b.recv_into(buf) == 4
    assert b.recv_into(buf) == 0


# -- what the wire may do to it ----------------------------------------------------------


Wire = tuple[SealedSocket, socket.socket, socket.socket, SealedSocket]


@pytest.fixture
def wire() -> Iterator[Wire]:
    """A sealed sender and receiver with the raw wire between them in the test's hands:
    the sender writes into `out`, the receiver reads what the test writes to `into`."""
    sender_end, out = socket.socketpair()
    receiver_end, into = socket.socketpair()
    ends = (sender_end, out, receiver_end, into)
    for s in ends:
        s.settimeout(10)
    sender = SealedSocket(sender_end, send_key=A_TO_B, receive_key=B_TO_A)
    receiver = SealedSocket(receiver_end, send_key=B_TO_A, receive_key=A_TO_B)
    yield sender, out, into, receiver
    for s in ends:
        s.close()


def _records(sender: SealedSocket, out: socket.socket, *pieces: bytes) -> list[bytes]:
    """Each piece sealed by `sender`, as the bytes of its record on the wire."""
    records = []
    for piece in pieces:
        sender.sendall(piece)
        header = out.recv(4, socket.MSG_WAITALL)
        (size,) = struct.unpack(">I", header)
        records.append(header + out.recv(size, socket.MSG_WAITALL))
    return records


def _received(receiver: SealedSocket, into: socket.socket, sent: bytes) -> bytes:
    into.sendall(sent)
    into.shutdown(socket.SHUT_WR)
    out = bytearray()
    buf = bytearray(64)
    while n := receiver.recv_into(buf):
        out += buf[:n]
    return bytes(out)


def test_records_as_sent_are_read(wire: Wire) -> None:
    sender, out, into, receiver = wire
    first, second = _records(sender, out, b"one", b"two")
    assert len(first) == 4 + 3 + TAG
    assert _received(receiver, into, first + second) == b"onetwo"


@pytest.mark.parametrize(
    "tamper",
    [
        "a bit of the ciphertext",
        "a bit of the tag",
        "the length",
        "two records swapped",
        "a record repeated",
        "a record dropped",
        "a record cut short",
        "a record sent back",
        "a record too large",
        "an empty record",
    ],
)
def test_a_record_tampered_with_on_the_wire_breaks_the_connection(wire: Wire, tamper: str) -> None:
    sender, out, into, receiver = wire
    first, second = _records(sender, out, b"pay 10", b"to ann")
    if tamper == "a bit of the ciphertext":
        sent = first[:5] + bytes([first[5] ^ 1]) + first[6:]
    elif tamper == "a bit of the tag":
        sent = first[:-1] + bytes([first[-1] ^ 0x80])
    elif tamper == "the length":  # (one byte more read into the record: its tag fails)
        sent = struct.pack(">I", len(first) - 4 + 1) + first[4:] + second[:1]
    elif tamper == "two records swapped":
        sent = second + first
    elif tamper == "a record repeated":
        sent = first + first
    elif tamper == "a record dropped":
        sent = second
    elif tamper == "a record cut short":
        sent = first[:-3]
    elif tamper == "a record sent back":  # (the receiver's own record, reflected to it)
        receiver.sendall(b"pay 10")
        sent = into.recv(4 + 6 + TAG, socket.MSG_WAITALL)
    elif tamper == "a record too large":
        sent = struct.pack(">I", RECORD + TAG + 1) + first[4:]
    else:
        sent = struct.pack(">I", TAG) + first[-TAG:]
    message = {
        "a record cut short": "the connection ended inside a sealed record",
        "a record too large": f"a sealed record cannot be {RECORD + TAG + 1} bytes",
        "an empty record": f"a sealed record cannot be {TAG} bytes",
    }.get(tamper, "a sealed record failed its check")
    got = bytearray()
    with pytest.raises(SealBroken, match=f"^{message}$"):
        into.sendall(sent)
        into.shutdown(socket.SHUT_WR)
        buf = bytearray(64)
        while n := receiver.recv_into(buf):
            got += buf[:n]
    # Nothing of a tampered record reaches the reader (a record before it may).
    assert got in (b"", b"pay 10")


def test_keys_are_checked() -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="^a sealing key is 32 bytes$"):
            SealedSocket(a, send_key=b"short", receive_key=B_TO_A)
        with pytest.raises(ValueError, match="^a sealing key is 32 bytes$"):
            SealedSocket(a, send_key=A_TO_B, receive_key=bytes(31))
        with pytest.raises(ValueError, match="^each direction has its own key$"):
            SealedSocket(a, send_key=A_TO_B, receive_key=A_TO_B)
    finally:
        a.close()
        b.close()
    assert len(new_key()) == 32 and new_key() != new_key()


def test_each_direction_moves_to_its_next_key_every_so_many_records(
    pair: tuple[SealedSocket, SealedSocket], wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sealed, "REKEY_EVERY", 2)
    a, b = pair
    for i in range(5):  # (one record each, across two key updates, both ways)
        a.sendall(b"%d" % i)
        assert _read(b, 1, 1) == b"%d" % i
        b.sendall(b"back %d" % i)
        assert _read(a, 6, 64) == b"back %d" % i
    # On the wire: records 0 and 1 under the first key, 2 and 3 under the next, then the
    # one after (HKDF of the last, as both ends derive it).
    sender, out, _, _ = wire
    records = _records(sender, out, *[b"r%d" % i for i in range(5)])
    keys = [A_TO_B, A_TO_B, next_key(A_TO_B), next_key(A_TO_B), next_key(next_key(A_TO_B))]
    for number, (record, key) in enumerate(zip(records, keys, strict=True)):
        nonce = bytes(4) + number.to_bytes(8, "big")
        assert AESGCM(key).decrypt(nonce, record[4:], record[:4]) == b"r%d" % number
        if number >= 2:
            with pytest.raises(InvalidTag):
                AESGCM(A_TO_B).decrypt(nonce, record[4:], record[:4])
    assert len({A_TO_B, *keys}) == 3 and next_key(A_TO_B) != next_key(B_TO_A)


@pytest.mark.parametrize("cut", [0, 2, 4], ids=["no body", "half a header", "a header alone"])
def test_the_end_inside_a_record_or_its_header_is_no_clean_end(wire: Wire, cut: int) -> None:
    """Only the end between records is the end: a cut anywhere else is said."""
    sender, out, into, receiver = wire
    (record,) = _records(sender, out, b"pay 10")
    sent = record[: 4 + 6 + TAG - 1] if cut == 0 else record[:cut]
    into.sendall(sent)
    into.shutdown(socket.SHUT_WR)
    with pytest.raises(SealBroken, match="^the connection ended inside a sealed record$"):
        receiver.recv_into(bytearray(64))


def test_the_next_key_is_hkdf_expand_sha256_of_the_last() -> None:
    """Both ends of a connection derive it, so it is fixed: HKDF-Expand (RFC 5869) with
    SHA-256, the info "spear sealed: next key", 32 bytes: its one block, T(1)."""
    for key in (bytes(32), bytes(range(32)), new_key()):
        block = hmac.new(key, b"spear sealed: next key" + b"\x01", hashlib.sha256).digest()
        assert next_key(key) == block
    assert next_key(bytes(32)).hex().startswith("860ef4589086dc60")


def test_timeouts_and_shutdown_are_the_sockets(pair: tuple[SealedSocket, SealedSocket]) -> None:
    a, b = pair
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        b.recv_into(bytearray(8))  # (nothing sent)
    assert a.fileno() >= 0
    a.shutdown(socket.SHUT_WR)
    b.settimeout(10)
    assert b.recv_into(bytearray(8)) == 0
