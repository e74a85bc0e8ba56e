"""transport/_speedups.py: importing spear patches nothing, nor does starting spear's
servers or its grpc.aio clients; opening a grpclib channel (the etcd client's, the
benchmarks') does, once, and only on the library versions the patches were tested
against."""

from __future__ import annotations

import importlib
import os
import pydoc
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from spear.transport import _tested

if TYPE_CHECKING:
    from pathlib import Path


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_spear_patches_nothing() -> None:
    out = _run(
        """
        import hyperframe.frame
        from grpclib.protocol import H2Protocol
        frame_repr = hyperframe.frame._raw_data_repr
        made = H2Protocol.connection_made
        import spear, spear.node.client, spear.transport._convert
        import spear.node.server, spear.transport.sms_server, spear.transport.sms_client
        print(hyperframe.frame._raw_data_repr is frame_repr,
              H2Protocol.connection_made is made,
              frame_repr.__module__, made.__module__)
        """
    )
    assert out == "True True hyperframe.frame grpclib.protocol"


def test_servers_patch_nothing_and_a_grpclib_channel_installs_both(tmp_path: Path) -> None:
    out = _run(
        f"""
        import anyio, hyperframe.frame
        from grpclib.protocol import H2Protocol
        from spear.core.sms import MetadataServer
        from spear.store.leveldb import LevelDBKV
        from spear.transport import _fastframes, _tls_writes
        from spear.transport.channels import open_channel
        from spear.transport.sms_client import SmsClient
        from spear.transport.serving import Security
        from spear.transport.sms_server import SmsServer

        def patched():
            return (_fastframes.installed(), _tls_writes.installed())

        async def main():
            seen = [patched()]
            kv = LevelDBKV.open({str(tmp_path / "sms")!r})
            async with SmsServer(MetadataServer(kv), security=Security.open()) as server:
                seen.append(patched())
                address = await server.start("127.0.0.1:0")
                client = SmsClient(address)
                assert await client.nodes(live_only=False) == []
                await client.aclose()
                seen.append(patched())
                host, port = address.rsplit(":", 1)
                channel = open_channel(host, int(port))
                seen.append(patched())
                channel.close()
            await kv.aclose()
            print(seen, hyperframe.frame._raw_data_repr is _fastframes._raw_data_repr,
                  H2Protocol.connection_made is _tls_writes._connection_made)

        anyio.run(main)
        """
    )
    assert out == "[(False, False), (False, False), (False, False), (True, True)] True True"


def test_install_is_idempotent() -> None:
    out = _run(
        """
        import hyperframe.frame
        from grpclib.protocol import H2Protocol
        from spear.transport import _fastframes, _speedups, _tls_writes
        _speedups.install()
        first = (hyperframe.frame._raw_data_repr, H2Protocol.connection_made)
        _speedups.install()
        again = (hyperframe.frame._raw_data_repr, H2Protocol.connection_made)
        print(first == again, _tls_writes.upstream is not _tls_writes._connection_made,
              _fastframes.upstream is not _fastframes._raw_data_repr)
        """
    )
    assert out == "True True True"


def test_an_untested_version_is_declined_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{message}")
    logger.enable("spear")
    monkeypatch.setattr(_tested, "_declined", set())
    try:
        assert _tested.tested_version("hyperframe", "0.0.") is False
        assert _tested.tested_version("hyperframe", "0.0.") is False
        assert _tested.tested_version("hyperframe", "6.1.") is True
    finally:
        logger.disable("spear")
        logger.remove(sink)
    assert len(messages) == 1 and "hyperframe" in messages[0] and "0.0." in messages[0]


@pytest.mark.parametrize(
    ("patch", "owner", "name"),
    [
        ("_fastframes", "hyperframe.frame", "_raw_data_repr"),
        ("_tls_writes", "grpclib.protocol.H2Protocol", "connection_made"),
    ],
)
def test_an_untested_version_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, patch: str, owner: str, name: str
) -> None:
    module = importlib.import_module(f"spear.transport.{patch}")
    target = pydoc.locate(owner)
    monkeypatch.setattr(target, name, module.upstream)
    monkeypatch.setattr(module, "TESTED", "0.0.")
    monkeypatch.setattr(_tested, "_declined", set())
    assert module.install() is False
    assert getattr(target, name) is module.upstream
