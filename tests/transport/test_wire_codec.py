"""Core models survive the trip through the wire messages and their bytes (hypothesis),
and a node answers malformed bytes with a status, not a crash."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from spear.core.models import FunctionSpec, Task
from spear.core.object_index import ObjectHolder, ObjectRecord
from spear.transport import _convert as cv
from spear.transport import _object_convert as oc
from spear.transport._gen.pb import sms_pb2
from spear.transport._gen.pb import spearlet_pb2 as pb
from tests.strategies import specs, tasks

if TYPE_CHECKING:
    from pathlib import Path


def test_every_model_field_is_on_the_wire() -> None:
    import dataclasses

    for model, message in ((FunctionSpec, pb.FunctionSpec), (Task, pb.TaskInfo)):
        wire = set(message.DESCRIPTOR.fields_by_name)
        missing = {f.name for f in dataclasses.fields(model)} - wire
        assert not missing, f"{model.__name__} fields not in {message.__name__}: {missing}"


@settings(max_examples=examples(200), deadline=None)
@given(specs)
def test_function_spec_round_trips(spec: FunctionSpec) -> None:
    wire = pb.FunctionSpec.FromString(cv.spec_to_wire(spec).SerializeToString())
    assert cv.spec_from_wire(wire) == spec


@settings(max_examples=examples(200), deadline=None)
@given(tasks())
def test_task_round_trips(task: Task) -> None:
    wire = pb.TaskInfo.FromString(cv.task_to_wire(task).SerializeToString())
    assert cv.task_from_wire(wire) == task


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(tasks(), max_size=6), st.lists(st.integers(0, 5), max_size=12))
def test_a_batch_of_tasks_round_trips_its_specs_converted_once_each_run(
    some: list[Task], picks: list[int]
) -> None:
    import dataclasses

    # A batch with runs of one spec, as a SubmitTasks of copies or a wave's reports has,
    # and equal specs that are not the same object.
    batch = [some[i % len(some)] for i in picks] if some else []
    batch += [dataclasses.replace(t, spec=dataclasses.replace(t.spec)) for t in batch[:2]]
    wire = [pb.TaskInfo.FromString(m.SerializeToString()) for m in cv.tasks_to_wire(batch)]
    assert wire == [cv.task_to_wire(t) for t in batch]
    back = cv.tasks_from_wire(wire)
    assert back == batch
    for before, after in itertools.pairwise(back):
        if before.spec == after.spec:
            assert after.spec is before.spec  # (converted once, shared: it is immutable)


def test_a_batch_with_a_task_without_its_spec_is_refused() -> None:
    import pytest

    from spear.errors import InvalidArgument

    info = pb.TaskInfo(id="t", state=pb.TaskState.TASK_STATE_PENDING)
    with pytest.raises(InvalidArgument, match="no function spec"):
        cv.tasks_from_wire([info])


# Object records carry an optional value whose presence matters: an empty value kept in
# the index (an empty result) is not "no value kept".


@settings(max_examples=examples(100), deadline=None)
@given(
    st.builds(
        ObjectRecord,
        key=st.text(min_size=1, max_size=20),
        version=st.integers(1, 2**63),
        size=st.integers(0, 2**40),
        holders=st.lists(
            st.builds(ObjectHolder, st.text(max_size=8), st.text(max_size=12), st.booleans()),
            max_size=3,
        ).map(tuple),
        refs=st.integers(0, 1000),
        pinned=st.booleans(),
        created_at=st.floats(0, 2e9),
        updated_at=st.floats(0, 2e9),
        value=st.none() | st.binary(max_size=16),
    )
)
def test_object_record_round_trips(record: ObjectRecord) -> None:
    raw = oc.record_to_wire(record).SerializeToString()
    assert oc.record_from_wire(sms_pb2.ObjectRecord.FromString(raw)) == record


def test_a_report_and_a_commit_keep_what_is_set_and_what_is_not() -> None:
    task = Task(id="t1", spec=FunctionSpec("m.wasm"), created_at=1.0, node="node-1")
    raw = sms_pb2.ReportTasksRequest(tasks=[cv.task_to_wire(task)]).SerializeToString()
    assert [cv.task_from_wire(t) for t in sms_pb2.ReportTasksRequest.FromString(raw).tasks] == [
        task
    ]
    commit = sms_pb2.CommitObjectRequest(key="k", node="n", address="a", size=0, value=b"")
    read = sms_pb2.CommitObjectRequest.FromString(commit.SerializeToString())
    assert (cv.optional(read, "value"), cv.optional(read, "expected_version")) == (b"", None)


def test_an_empty_protobuf_spec_reads_as_unset_fields() -> None:
    spec = cv.spec_from_wire(pb.FunctionSpec(artifact="m.wasm"))
    assert spec == FunctionSpec("m.wasm")  # default resources, entry; no timeout, no fuel


async def test_malformed_requests_get_a_status(tmp_path: Path) -> None:
    import spear
    from spear.node.client import Client
    from spear.node.server import SpearletService, serve_spearlet
    from spear.transport._status import RpcError
    from spear.transport.auth import read_owner_token
    from spear.transport.services import Cardinality, Stub

    async with spear.LocalNode(tmp_path / "home") as node:
        server = await serve_spearlet(node, "127.0.0.1:0")
        try:
            assert server.address is not None
            owner = read_owner_token(tmp_path / "home")
            async with Client(server.address, token=owner) as client:
                assert client._stub is not None  # (opens the client's channel)
                stub = Stub(client._channel, SpearletService.SERVICE)
                # A spec the node cannot accept: unknown runtime, no artifact, bad digest.
                for request in (
                    pb.SubmitTaskRequest(spec=pb.FunctionSpec(artifact="x", runtime="java")),
                    pb.SubmitTaskRequest(spec=pb.FunctionSpec()),
                    pb.SubmitTaskRequest(),
                    pb.SubmitTaskRequest(
                        spec=pb.FunctionSpec(artifact="x"), artifact_digest="../../etc"
                    ),
                ):
                    try:
                        await stub.submit_task(request)
                    except RpcError as exc:  # a status came back
                        assert exc.status.name == "INVALID_ARGUMENT", exc
                    else:
                        raise AssertionError(f"accepted {request}")
                # Raw garbage where a message should be: the call fails, the node serves on.
                assert client._channel is not None

                class Raw:
                    def __init__(self, data: bytes) -> None:
                        self.data = data

                    def SerializeToString(self) -> bytes:
                        return self.data

                channel = client._channel
                async with channel.request(
                    "/spear.v1.Spearlet/GetTask", Cardinality.UNARY_UNARY, Raw, pb.TaskInfo
                ) as stream:
                    # Field 1 (a string) holding bytes that are not UTF-8.
                    await stream.send_message(Raw(b"\x0a\x02\xff\xfe"), end=True)
                    try:
                        await stream.recv_message()
                        raise AssertionError("garbage was accepted")
                    except RpcError as exc:
                        assert exc.status.name == "INVALID_ARGUMENT"
                        assert exc.message and "malformed GetTaskRequest" in exc.message
            async with Client(server.address, token=owner) as again:
                assert (await again.node_info()).name == node.name
        finally:
            await server.close()
