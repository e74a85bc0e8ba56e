"""The task lifecycle state machine and the spec's validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear.core.models import (
    ALLOWED_TRANSITIONS,
    DirMapping,
    FunctionSpec,
    Resources,
    Task,
    TaskState,
    new_task_id,
)
from spear.errors import InvalidArgument


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
