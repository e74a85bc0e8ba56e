"""The task codec (core/tasks/codec.py): a record's bytes read back to the task they were
made from, say what the plain `Task.to_json` says, and survive its spec cache."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import orjson
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from spear.core.models import FunctionSpec, Runtime, Task, TaskState
from spear.core.tasks import codec, decode_task, encode_task
from tests.strategies import specs, tasks

if TYPE_CHECKING:
    import pytest


@settings(max_examples=examples(300), deadline=None)
@given(tasks())
def test_a_record_reads_back_to_its_task(task: Task) -> None:
    assert decode_task(encode_task(task)) == task


@settings(max_examples=examples(300), deadline=None)
@given(tasks())
def test_the_fast_encoding_says_what_to_json_says(task: Task) -> None:
    # The plain path: the JSON form through the standard library, spec encoded each time.
    assert orjson.loads(encode_task(task)) == json.loads(json.dumps(task.to_json()))


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(tasks(), st.booleans()), min_size=1, max_size=6))
def test_each_record_has_its_own_spec(items: list[tuple[Task, bool]]) -> None:
    """Records of many tasks, some sharing a spec object, some an equal spec made anew
    (as one that came over the wire is), each encoded after the others."""
    made: list[Task] = []
    for task, share in items:
        if share and made:  # the previous task's spec object, or an equal copy of it
            spec = made[-1].spec
            if len(made) % 2:
                spec = FunctionSpec.from_json(json.loads(json.dumps(spec.to_json())))
            task = Task(id=task.id, spec=spec, state=task.state, history=task.history)
        made.append(task)
    records = [encode_task(task) for task in made]
    assert [decode_task(raw) for raw in records] == made


def test_the_spec_cache_forgets_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_SPEC_JSON_MAX", 2)
    monkeypatch.setattr(codec, "_SPEC_JSON", {})
    tasks = [Task(id=f"t{i}", spec=FunctionSpec(f"m{i}.wasm")) for i in range(5)]
    for task in tasks * 2:
        assert decode_task(encode_task(task)) == task
    assert len(codec._SPEC_JSON) <= 2


def test_a_record_written_before_reads_back() -> None:
    """A record as this version of spear and earlier ones wrote it (the KV keeps them)."""
    raw = (
        b'{"id":"0191d5a4c3e2aa00000001","spec":{"artifact":"hello.wasm","runtime":"wasm",'
        b'"args":["a"],"env":[["K","V"]],"dirs":[{"host":"/tmp","guest":"/data"}],'
        b'"entry":"_start","resources":{"cpu_millis":100,"memory_bytes":67108864},'
        b'"timeout_s":5.0,"memory_limit_bytes":null,"fuel":null,"labels":[],"workdir":null,'
        b'"warm":false,"cpu_time_s":null,"open_files":null},"state":"COMPLETED",'
        b'"created_at":1.5,"started_at":1.5,"finished_at":2.25,"exit_code":0,"reason":null,'
        b'"node":"n1","attempts":0,"history":[["RUNNING",1.5],["COMPLETED",2.25]]}'
    )
    task = decode_task(raw)
    assert task.spec.runtime is Runtime.WASM and task.spec.dirs[0].guest == "/data"
    assert task.state is TaskState.COMPLETED and task.history[-1] == ("COMPLETED", 2.25)
    # Written again, it carries the fields added since (namespace, retries) at their
    # defaults, and reads back the same.
    again = encode_task(task)
    assert again.startswith(raw[:60]) and decode_task(again) == task
    assert b'"namespace":"default"' in again


@settings(max_examples=examples(200), deadline=None)
@given(specs)
def test_a_spec_reads_back_through_a_record(spec: FunctionSpec) -> None:
    task = Task(id="t", spec=spec)
    assert decode_task(encode_task(task)).spec == spec
