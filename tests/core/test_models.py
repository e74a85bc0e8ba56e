"""The task lifecycle state machine and the spec's validation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear.core.models import (
    ALLOWED_TRANSITIONS,
    Attempt,
    DirMapping,
    FunctionSpec,
    NodeInfo,
    ObjectInfo,
    Resources,
    Runtime,
    Task,
    TaskResult,
    TaskState,
    new_task_id,
)
from spear.errors import InvalidArgument
from tests.strategies import tasks


@given(st.lists(st.sampled_from(list(TaskState)), max_size=8))
def test_only_lifecycle_transitions_are_admitted(path: list[TaskState]) -> None:
    task = Task(id="t", spec=FunctionSpec("m.wasm"))
    for target in path:
        allowed = target in ALLOWED_TRANSITIONS[task.state]
        if allowed:
            before = task.state
            task = task.transition(target, now=1.0)
            assert task.state is target
            assert task.history[-1] == (target.value, 1.0)
            assert before is not target
        else:
            with pytest.raises(InvalidArgument):
                task.transition(target)
    # Nothing leaves a terminal state.
    if task.state.terminal:
        for target in TaskState:
            with pytest.raises(InvalidArgument):
                task.transition(target)


# The lifecycle written out, not read from ALLOWED_TRANSITIONS: a change to the table
# (PENDING -> COMPLETED, say) must fail here until this list is changed too, on purpose.
LIFECYCLE = {
    ("PENDING", "RUNNING"),
    ("PENDING", "FAILED"),  # it could not start (bad module, no node)
    ("PENDING", "CANCELLED"),
    ("RUNNING", "COMPLETED"),
    ("RUNNING", "FAILED"),
    ("RUNNING", "CANCELLED"),
}


@pytest.mark.parametrize("source", list(TaskState))
@pytest.mark.parametrize("target", list(TaskState))
def test_the_lifecycle_table_exactly(source: TaskState, target: TaskState) -> None:
    task = Task(id="t", spec=FunctionSpec("m.wasm"), state=source)
    if (source.value, target.value) in LIFECYCLE:
        moved = task.transition(target, now=2.0)
        assert (moved.state, moved.history[-1]) == (target, (target.value, 2.0))
    else:
        with pytest.raises(InvalidArgument, match=f"cannot go from {source} to {target}"):
            task.transition(target, now=2.0)
    assert target.terminal == (target.value in {"COMPLETED", "FAILED", "CANCELLED"})


def test_timestamps_follow_transitions() -> None:
    task = Task(id="t", spec=FunctionSpec("m.wasm"))
    running = task.transition(TaskState.RUNNING, now=5.0)
    assert running.started_at == 5.0 and running.finished_at is None
    done = running.transition(TaskState.COMPLETED, now=7.0, exit_code=0)
    assert (done.finished_at, done.exit_code) == (7.0, 0)


_KEEP = object()


@given(
    tasks(),
    st.sampled_from(list(TaskState)),
    st.floats(min_value=0, max_value=4e9),
    st.sampled_from([_KEEP, None, 0, 1, 137]),
    st.sampled_from([_KEEP, None, "", "why"]),
)
def test_a_transition_is_the_task_with_its_changes(
    task: Task, state: TaskState, now: float, exit_code: object, reason: object
) -> None:
    """Task.transition builds the new task field by field (for speed): it must be the task
    dataclasses.replace makes, every field set."""
    if state not in ALLOWED_TRANSITIONS[task.state]:
        return
    changes: dict[str, object] = {}
    if exit_code is not _KEEP:
        changes["exit_code"] = exit_code
    if reason is not _KEEP:
        changes["reason"] = reason
    new = task.transition(state, now, **changes)  # type: ignore[arg-type]
    expected = dataclasses.replace(
        task,
        state=state,
        started_at=now if state is TaskState.RUNNING else task.started_at,
        finished_at=now if state.terminal else task.finished_at,
        history=(*task.history, (state.value, now)),
        **changes,  # type: ignore[arg-type]
    )
    assert all(hasattr(new, f.name) for f in dataclasses.fields(Task))
    assert new == expected and hash(new) == hash(expected)


@given(
    st.text(min_size=1, max_size=20).filter(lambda s: "=" not in s),
    st.lists(st.text(max_size=10), max_size=4),
    st.floats(min_value=0.001, max_value=1e6),
)
def test_spec_json_round_trip(name: str, args: list[str], timeout: float) -> None:
    spec = FunctionSpec(
        artifact="a.wasm",
        args=tuple(args),
        env=((name, "v"),),
        timeout_s=timeout,
        dirs=(DirMapping("/tmp", "/data"),),
        resources=Resources(250, 1024),
        labels=(("zone", "a"),),
    )
    assert FunctionSpec.from_json(spec.to_json()) == spec
    task = Task(id=new_task_id(), spec=spec).transition(TaskState.RUNNING)
    assert Task.from_json(task.to_json()) == task


@pytest.mark.parametrize(
    "kwargs",
    [
        {"artifact": ""},
        {"artifact": "m", "timeout_s": 0},
        {"artifact": "m", "fuel": 0},
        {"artifact": "m", "memory_limit_bytes": -1},
        {"artifact": "m", "env": (("A=B", "x"),)},
    ],
)
def test_spec_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        FunctionSpec(**kwargs)  # type: ignore[arg-type]


def test_malformed_spec_json_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        FunctionSpec.from_json({"runtime": "wasm"})
    with pytest.raises(InvalidArgument):
        FunctionSpec.from_json({"artifact": "m", "runtime": "docker"})


def test_task_ids_sort_by_creation() -> None:
    ids = [new_task_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_dir_mapping_parse() -> None:
    assert DirMapping.parse("/a::/b") == DirMapping("/a", "/b")
    assert DirMapping.parse("/a") == DirMapping("/a", "/a")
    with pytest.raises(InvalidArgument):
        DirMapping.parse("::/b")


# -- exact values, written out (what mutation testing showed the tests above let slip) ----

EVERY_FIELD = FunctionSpec(
    artifact="/bin/agent",
    runtime=Runtime.PROCESS,
    args=("a", "b"),
    env=(("K", "v"),),
    dirs=(DirMapping("/h", "/g"),),
    entry="run",
    resources=Resources(250, 1024),
    timeout_s=1.5,
    memory_limit_bytes=1 << 20,
    fuel=1000,
    labels=(("zone", "a"),),
    workdir="/w",
    warm=True,
    cpu_time_s=2.0,
    open_files=10,
    namespace="team-a",
    max_retries=3,
    retry_on=("timeout", "exit"),
    priority=-7,
    reuse=True,
)


def test_every_spec_field_goes_through_json_under_its_name() -> None:
    data = json.loads(json.dumps(EVERY_FIELD.to_json()))
    assert data == {
        "artifact": "/bin/agent",
        "runtime": "process",
        "args": ["a", "b"],
        "env": [["K", "v"]],
        "dirs": [{"host": "/h", "guest": "/g"}],
        "entry": "run",
        "resources": {"cpu_millis": 250, "memory_bytes": 1024},
        "timeout_s": 1.5,
        "memory_limit_bytes": 1 << 20,
        "fuel": 1000,
        "labels": [["zone", "a"]],
        "workdir": "/w",
        "warm": True,
        "cpu_time_s": 2.0,
        "open_files": 10,
        "namespace": "team-a",
        "max_retries": 3,
        "retry_on": ["timeout", "exit"],
        "priority": -7,
        "reuse": True,
    }
    assert FunctionSpec.from_json(data) == EVERY_FIELD


def test_a_minimal_spec_record_reads_with_the_defaults() -> None:
    spec = FunctionSpec.from_json({"artifact": "m"})
    assert spec == FunctionSpec("m")
    assert (spec.runtime, spec.args, spec.env, spec.dirs, spec.entry) == (
        Runtime.WASM,
        (),
        (),
        (),
        "_start",
    )
    assert spec.resources == Resources(cpu_millis=100, memory_bytes=64 * 1024 * 1024)
    assert (spec.timeout_s, spec.memory_limit_bytes, spec.fuel, spec.workdir) == (None,) * 4
    assert (spec.labels, spec.warm, spec.cpu_time_s, spec.open_files) == ((), False, None, None)
    assert spec.namespace == "default"
    assert (spec.max_retries, spec.retry_on) == (0, ("node-lost", "process-lost"))
    assert spec.priority == 0


def test_a_namespace_is_a_dns_label() -> None:
    assert FunctionSpec("m", namespace="team-a-1").namespace == "team-a-1"
    for bad in ("", "Team", "-a", "a-", "a/b", "a" * 64, "@ns"):
        with pytest.raises(InvalidArgument, match="invalid namespace"):
            FunctionSpec("m", namespace=bad)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_every_task_field_goes_through_json() -> None:
    task = Task(
        id="t1",
        spec=EVERY_FIELD,
        state=TaskState.FAILED,
        created_at=1.0,
        started_at=2.0,
        finished_at=3.0,
        exit_code=3,
        reason="boom",
        node="n1",
        attempts=2,
        history=(("PENDING", 1.0), ("RUNNING", 2.0), ("FAILED", 3.0)),
        attempt_log=(Attempt("n0", 0.5, 0.7, 137, "node lost"),),
        traceparent=TRACEPARENT,
    )
    data = json.loads(json.dumps(task.to_json()))
    assert {k: v for k, v in data.items() if k != "spec"} == {
        "id": "t1",
        "state": "FAILED",
        "created_at": 1.0,
        "started_at": 2.0,
        "finished_at": 3.0,
        "exit_code": 3,
        "reason": "boom",
        "node": "n1",
        "attempts": 2,
        "history": [["PENDING", 1.0], ["RUNNING", 2.0], ["FAILED", 3.0]],
        "attempt_log": [
            {
                "node": "n0",
                "started_at": 0.5,
                "finished_at": 0.7,
                "exit_code": 137,
                "reason": "node lost",
            }
        ],
        "traceparent": TRACEPARENT,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    assert Task.from_json(data) == task
    assert task.trace_id == "0af7651916cd43dd8448eb211c80319c"
    fresh = Task(id="t3", spec=FunctionSpec("m"), traceparent=TRACEPARENT)
    assert fresh.transition(TaskState.RUNNING, 4.0).traceparent == TRACEPARENT
    minimal = Task.from_json({"id": "t2", "spec": {"artifact": "m"}, "state": "PENDING"})
    assert minimal == Task(id="t2", spec=FunctionSpec("m"))
    assert (minimal.created_at, minimal.attempts, minimal.history) == (0.0, 0, ())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"artifact": ""}, "a function spec needs an artifact"),
        ({"timeout_s": 0}, "timeout must be a positive number of seconds"),
        ({"memory_limit_bytes": 0}, "memory limit must be positive"),
        ({"fuel": 0}, "fuel must be positive"),
        ({"fuel": 2**64}, "fuel must be at most 18446744073709551615"),
        ({"memory_limit_bytes": 2**70}, "memory limit must be at most 18446744073709551615"),
        ({"open_files": 2**64}, "open files limit must be at most 18446744073709551615"),
        ({"cpu_time_s": 0}, "CPU time limit must be a positive number of seconds"),
        ({"open_files": 0}, "open files limit must be at least 1"),
        ({"env": (("", "x"),)}, "invalid environment variable name ''"),
        ({"env": (("A=B", "x"),)}, "invalid environment variable name 'A=B'"),
    ],
)
def test_each_bad_spec_value_is_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        FunctionSpec(**{"artifact": "m", **kwargs})
    assert str(caught.value) == message


def test_the_smallest_good_limits_are_accepted() -> None:
    spec = FunctionSpec(
        "m", timeout_s=1e-9, memory_limit_bytes=1, fuel=1, cpu_time_s=1e-9, open_files=1
    )
    assert (spec.memory_limit_bytes, spec.fuel, spec.open_files) == (1, 1, 1)


def test_resources_arithmetic_and_fit() -> None:
    assert Resources(0, 0) == Resources(cpu_millis=0, memory_bytes=0)
    for bad in ((-1, 0), (0, -1)):
        with pytest.raises(InvalidArgument, match="^resources must not be negative$"):
            Resources(*bad)
    node = Resources(1000, 4096)
    assert Resources(1000, 4096).fits_in(node)  # exactly full fits
    assert not Resources(1001, 4096).fits_in(node)
    assert not Resources(1000, 4097).fits_in(node)
    assert Resources(100, 10) + Resources(20, 3) == Resources(120, 13)
    assert Resources(100, 10) - Resources(20, 3) == Resources(80, 7)
    assert Resources(100, 10) - Resources(200, 30) == Resources(0, 0)  # never below zero
    assert Resources(100, 10) - Resources(100, 10) == Resources(0, 0)


def test_a_transition_keeps_what_it_is_not_given() -> None:
    running = Task(id="t", spec=FunctionSpec("m")).transition(
        TaskState.RUNNING, now=5.0, reason="started"
    )
    assert (running.started_at, running.finished_at, running.reason) == (5.0, None, "started")
    assert running.exit_code is None
    done = running.transition(TaskState.FAILED, now=7.0, exit_code=3)
    assert (done.started_at, done.finished_at) == (5.0, 7.0)
    assert (done.exit_code, done.reason) == (3, "started")  # reason kept
    cleared = running.transition(TaskState.CANCELLED, now=8.0, reason=None)
    assert (cleared.exit_code, cleared.reason) == (None, None)  # given None: replaced
    assert [s for s, _ in done.history] == ["RUNNING", "FAILED"]
    with pytest.raises(InvalidArgument, match="^task t cannot go from FAILED to RUNNING$"):
        done.transition(TaskState.RUNNING)
    # What a transition is not about stays as it was.
    placed = Task(id="t", spec=FunctionSpec("m"), created_at=1.5, node="n1", attempts=2)
    moved = placed.transition(TaskState.RUNNING, now=5.0)
    assert (moved.id, moved.spec) == ("t", FunctionSpec("m"))
    assert (moved.created_at, moved.node, moved.attempts) == (1.5, "n1", 2)


def test_a_dir_without_a_host_is_named() -> None:
    with pytest.raises(InvalidArgument) as caught:
        DirMapping.parse("::/b")
    assert str(caught.value) == "--dir needs a host directory, got '::/b'"


def test_malformed_spec_json_says_so() -> None:
    with pytest.raises(InvalidArgument, match="^malformed function spec: 'artifact'$"):
        FunctionSpec.from_json({"runtime": "wasm"})


def test_an_infinite_count_in_spec_json_is_malformed_not_a_crash() -> None:
    for field in ("max_retries", "priority"):
        with pytest.raises(InvalidArgument, match="^malformed function spec: cannot convert"):
            FunctionSpec.from_json({"artifact": "m.wasm", field: float("inf")})


def test_task_ids_carry_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    task_id = new_task_id()
    after = time.time_ns() // 1_000_000
    assert len(task_id) == 22 and int(task_id, 16) >= 0
    assert before <= int(task_id[:12], 16) <= after


def test_a_forked_child_draws_its_ids_afresh() -> None:
    read, write = os.pipe()
    with warnings.catch_warnings():  # (3.12+ warns of fork with threads: the child only writes)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: one id, then out at once
        try:
            os.write(write, new_task_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = new_task_id()
    # The parent's counter would have given the child parent's next suffix (or one off).
    assert abs(int(child[12:], 16) - int(parent[12:], 16)) > 1000, (child, parent)


def test_values_shown_to_callers_as_json() -> None:
    task = Task(id="t", spec=FunctionSpec("m"))
    assert TaskResult(task=task, output=b"hi \xff").to_json() == {
        "task": task.to_json(),
        "output": "hi \ufffd",
    }
    assert ObjectInfo(key="k", version=3, size=5, refs=1, pinned=True).to_json() == {
        "key": "k",
        "version": 3,
        "size": 5,
        "refs": 1,
        "pinned": True,
    }
    info = NodeInfo(
        name="n",
        state="running",
        address="a:1",
        version="0.1",
        wasmtime_version="50",
        capacity=Resources(1000, 2048),
        free=Resources(500, 1024),
        running_tasks=1,
        runtimes=("wasm", "process"),
        started_at=1.0,
        data_dir="/d",
        pid=7,
    )
    assert info.to_json() == {
        "name": "n",
        "state": "running",
        "address": "a:1",
        "version": "0.1",
        "wasmtime_version": "50",
        "capacity": {"cpu_millis": 1000, "memory_bytes": 2048},
        "free": {"cpu_millis": 500, "memory_bytes": 1024},
        "running_tasks": 1,
        "runtimes": ["wasm", "process"],
        "started_at": 1.0,
        "data_dir": "/d",
        "pid": 7,
        "max_message_bytes": 0,
        "object_transfer_address": "",
        "peer_address": "",
        "object_socket": "",
    }


def test_a_spec_given_lists_keeps_tuples_and_refuses_a_string() -> None:
    # (from Python, a list is the natural way to give args: the spec must still be kept,
    # hashed and recorded as one given tuples)
    spec = FunctionSpec(
        "a.wasm", args=["x", "y"], env={"K": "V"}, labels=[["zone", "x"]], retry_on=["exit"]
    )
    same = FunctionSpec(
        "a.wasm", args=("x", "y"), env=(("K", "V"),), labels=(("zone", "x"),), retry_on=("exit",)
    )
    assert spec == same and hash(spec) == hash(same)
    assert FunctionSpec.from_json(spec.to_json()) == same
    for bad, message in [
        ({"args": "xy"}, "args must be a list, not str: 'xy'"),
        ({"env": 3}, "env must be a list, not int: 3"),
    ]:
        with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$"):
            FunctionSpec("a.wasm", **bad)  # type: ignore[arg-type]
