"""etcd behind the KV seam (store/etcd.py) at its edges, against a real etcd: where a
cluster's keys live when no namespace is given, the deadline a caller sets, the error
each operation gives when etcd refuses it (it names the operation), a bad endpoint
quoted as written."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from spear.errors import StorageError
from spear.store.etcd import EtcdKV, parse_endpoints
from spear.store.kv import Write

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

# etcd refuses a request over --max-request-bytes (1.5 MiB by default) before applying it.
_TOO_LARGE = b"x" * (1024 * 1024 * 3 // 2 + 1024)


def test_a_bad_endpoint_is_quoted_as_written() -> None:
    # Only the URL's trailing slashes are dropped: the error shows the rest as it was typed.
    with pytest.raises(StorageError) as caught:
        parse_endpoints("etcd://h:12X/")
    assert str(caught.value) == "not an etcd endpoint: 'h:12X' (expected HOST:PORT)"


async def test_keys_live_under_spear_slash_unless_told_otherwise(etcd_endpoint: str) -> None:
    # A cluster's data stays where the last version of spear put it: `spear/` in etcd
    # (what `etcdctl get --prefix spear/` shows), whatever process reconnects.
    key = f"default-namespace-{secrets.token_hex(4)}"
    default = await EtcdKV.connect([etcd_endpoint])
    explicit = await EtcdKV.connect([etcd_endpoint], namespace="spear/")
    try:
        assert default.namespace == "spear/"
        version = await default.put(key, b"v")
        entry = await explicit.get(key)
        assert entry is not None and (entry.value, entry.version) == (b"v", version)
    finally:
        await default.delete(key)
        await default.aclose()
        await explicit.aclose()


async def test_the_callers_deadline_is_the_connections(etcd_endpoint: str) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace="deadline/", timeout_s=2.5)
    try:
        assert kv.client.timeout_s == 2.5  # every call's deadline, across its attempts
    finally:
        await kv.aclose()


async def test_a_write_etcd_refuses_is_one_error_naming_the_operation(etcd_endpoint: str) -> None:
    kv = await EtcdKV.connect([etcd_endpoint], namespace=f"refused-{secrets.token_hex(4)}/")
    try:
        writes: dict[str, Callable[[], Awaitable[int]]] = {
            "put": lambda: kv.put("k", _TOO_LARGE),
            "compare-and-swap": lambda: kv.compare_and_swap("k", _TOO_LARGE, 0),
            "commit": lambda: kv.commit([Write("k", _TOO_LARGE), Write("j", b"small")]),
        }
        for operation, write in writes.items():
            with pytest.raises(StorageError) as caught:
                await write()
            message = str(caught.value)
            assert message.startswith(f"etcd {operation} failed: "), message
            assert "too large" in message and "\n" not in message, message
        assert await kv.scan("") == []  # nothing of any of them was written
    finally:
        await kv.aclose()
