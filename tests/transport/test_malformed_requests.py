"""Bytes that are no valid request, sent to every method of the Spearlet and SMS services
over real gRPC: each call is answered with a status that names the caller's mistake
(never INTERNAL or UNKNOWN), nothing is logged as a failed call, and the server serves on.

Hypothesis draws the bytes (and shrinks a failing case to a small one); the servers live
in one event loop on a portal thread for the whole module, and the calls are made there.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import grpc
import grpc.aio
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

import spear
from spear.core.cluster import ClusterTimings
from spear.core.sms import MetadataServer
from spear.node.server import serve_spearlet
from spear.store.leveldb import LevelDBKV
from spear.transport.aio_streams import multicallable
from spear.transport.services import Cardinality, ServiceBase, methods
from spear.transport.serving import Security
from spear.transport.sms_server import SmsServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

Status = grpc.StatusCode

# What a caller's mistake may be answered with (OK too: some garbage decodes to a valid,
# harmless request, e.g. listing tasks).
ALLOWED = {
    Status.OK,
    Status.INVALID_ARGUMENT,
    Status.NOT_FOUND,
    Status.FAILED_PRECONDITION,
    Status.OUT_OF_RANGE,
    Status.RESOURCE_EXHAUSTED,
    Status.ALREADY_EXISTS,
    Status.ABORTED,
    Status.UNAVAILABLE,
}


class _Target:
    def __init__(self, address: str, methods: dict[str, Cardinality]) -> None:
        self.address, self.methods = address, methods
        self.failures: list[str] = []
        self.portal: Any = None  # the servers' (the calls are made in their loop)

    async def call(self, method: str, data: bytes) -> Status:
        """`data` sent as they are (the request's wire form) on a channel of its own."""
        cardinality = self.methods[method]
        async with grpc.aio.insecure_channel(self.address) as channel:
            calling = multicallable(channel, method, cardinality)  # (bytes in and out)
            try:
                call = calling(iter([data]) if cardinality.client_streaming else data, timeout=5)
                if cardinality.server_streaming:
                    async for _ in call:
                        pass
                else:
                    await call
                return Status.OK
            except grpc.aio.AioRpcError as exc:
                return exc.code()

    def called(self, method: str, data: bytes) -> Status:
        status: Status = self.portal.call(self.call, method, data)
        return status


def _cardinalities(service: ServiceBase) -> dict[str, Cardinality]:
    """The routes `service` serves, and how (as the channel that calls them asks)."""
    return {m.route: m.cardinality for m in methods(service.SERVICE) if m.route in service.served()}


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Target]]:
    home: Path = tmp_path_factory.mktemp("malformed")
    failures: list[str] = []
    sink = logger.add(lambda m: failures.append(str(m)), level="ERROR", filter="spear")
    logger.enable("spear")

    @contextlib.asynccontextmanager
    async def servers() -> Any:
        async with spear.LocalNode(home / "node") as node:
            logger.enable("spear")  # (the public face quiets spear's log on first use)
            # Open security: the bytes must reach the handlers, past authentication.
            spearlet = await serve_spearlet(node, "127.0.0.1:0", security=Security.open())
            kv = LevelDBKV.open(str(home / "sms.ldb"))
            async with kv:
                sms = SmsServer(MetadataServer(kv, ClusterTimings()), security=Security.open())
                await sms.start("127.0.0.1:0")
                try:
                    yield {
                        "spearlet": _Target(
                            str(spearlet.address),
                            _cardinalities(spearlet.service),
                        ),
                        "sms": _Target(
                            str(sms.address),
                            _cardinalities(sms.service),
                        ),
                    }
                finally:
                    await sms.close()
                    await spearlet.close()

    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            with portal.wrap_async_context_manager(servers()) as found:
                for target in found.values():
                    target.failures = failures
                    target.portal = portal
                yield found
    finally:
        logger.remove(sink)
        logger.disable("spear")


def _methods(service: str) -> list[str]:
    spearlet = [
        "SubmitTask", "SubmitTasks", "GetTask", "ListTasks", "WatchTask", "CancelTask",
        "GetResult", "RunTask", "CallTask", "StreamLogs", "ExchangeStream", "UploadArtifact",
        "HasArtifact", "GetNodeInfo", "PutObject", "GetObject", "ListObjects", "DeleteObject",
        "AddObjectRef", "RemoveObjectRef", "PinObject", "UnpinObject", "DeleteTasks",
    ]  # fmt: skip
    sms = [
        "RegisterNode", "Heartbeat", "DeregisterNode", "GetNode", "ListNodes", "FindNodes",
        "ReportTask", "ReportTasks", "LookupTask", "ListClusterTasks", "PutObjectLocation",
        "RemoveObjectLocation", "LocateObject",
        "CommitObject", "CommitObjects", "LookupObject", "HoldObject", "ChangeObject",
        "ListObjectRecords", "AnnounceObjects", "CollectObjects", "VerifyToken", "TakeTaskSlot",
        "ReleaseTaskSlot", "DeleteClusterTasks", "KeepTaskInput", "WatchObjects",
    ]  # fmt: skip
    names = spearlet if service == "spearlet" else sms
    package = "Spearlet" if service == "spearlet" else "MetadataServer"
    return [f"/spear.v1.{package}/{n}" for n in names]


def test_every_method_is_fuzzed(targets: dict[str, _Target]) -> None:
    # The lists above name every method the servers serve (a new one must be added there).
    for service, target in targets.items():
        served = {m for m in target.methods if m.startswith("/spear.v1.")}
        assert served == set(_methods(service))


@pytest.mark.parametrize("service", ["spearlet", "sms"])
@settings(max_examples=examples(150), deadline=None)
@given(data=st.data())
def test_malformed_bytes_get_a_callers_status(
    targets: dict[str, _Target], service: str, data: st.DataObject
) -> None:
    target = targets[service]
    method = data.draw(st.sampled_from(_methods(service)), label="method")
    payload = data.draw(st.binary(max_size=64), label="payload")
    status = target.called(method, payload)
    assert status in ALLOWED, f"{method} answered {status.name}"
    assert not target.failures, target.failures[-1]


def test_the_servers_serve_on_after_the_fuzzing(targets: dict[str, _Target]) -> None:
    assert targets["spearlet"].called("/spear.v1.Spearlet/GetNodeInfo", b"") is Status.OK
    assert targets["sms"].called("/spear.v1.MetadataServer/ListNodes", b"") is Status.OK
