"""Hypothesis strategies for the core models, shared by the codec tests (the KV record's
in tests/core, the wire's in tests/transport)."""

from __future__ import annotations

from hypothesis import strategies as st

from spear.core.models import DirMapping, FunctionSpec, Resources, Runtime, Task, TaskState

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
name = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="="), min_size=1, max_size=10
)
pairs = st.lists(st.tuples(name, text), max_size=3).map(tuple)
u63 = st.integers(min_value=1, max_value=2**63 - 1)

specs = st.builds(
    FunctionSpec,
    artifact=text.filter(bool),
    runtime=st.sampled_from(list(Runtime)),
    args=st.lists(text, max_size=4).map(tuple),
    env=pairs,
    dirs=st.lists(st.builds(DirMapping, text.filter(bool), text), max_size=2).map(tuple),
    entry=text.filter(bool),
    resources=st.builds(Resources, st.integers(0, 2**40), st.integers(0, 2**62)),
    timeout_s=st.none() | st.floats(min_value=0.001, max_value=1e9),
    memory_limit_bytes=st.none() | u63,
    fuel=st.none() | u63,
    labels=pairs,
    workdir=st.none() | text,
    warm=st.booleans(),
    cpu_time_s=st.none() | st.floats(min_value=0.001, max_value=1e9),
    open_files=st.none() | st.integers(1, 2**20),
    priority=st.integers(-1000, 1000),
)
times = st.floats(min_value=0, max_value=4e9)


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    states = draw(st.lists(st.sampled_from(list(TaskState)), max_size=4))
    return Task(
        id=draw(text.filter(bool)),
        spec=draw(specs),
        state=draw(st.sampled_from(list(TaskState))),
        created_at=draw(times),
        started_at=draw(st.none() | times),
        finished_at=draw(st.none() | times),
        exit_code=draw(st.none() | st.integers(-(2**31), 2**31 - 1)),
        reason=draw(st.none() | text),
        node=draw(st.none() | text),
        attempts=draw(st.integers(0, 2**32 - 1)),
        history=tuple((s.value, draw(times)) for s in states),
        traceparent=draw(
            st.just("") | st.from_regex(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", fullmatch=True)
        ),
    )
