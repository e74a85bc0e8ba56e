"""transport/_fastdefaults.py: the cached field defaults change no encoding."""

from __future__ import annotations

import betterproto2

from spear.core.models import DirMapping, FunctionSpec, Resources, Task, TaskState
from spear.transport import _convert as cv
from spear.transport import _fastdefaults
from spear.transport._gen.spear import v1


def _messages() -> list[betterproto2.Message]:
    bare = FunctionSpec("m.wasm")
    full = FunctionSpec(
        "m.wasm",
        args=("a", ""),
        env=(("K", "V"),),
        dirs=(DirMapping("/tmp", "/data"),),
        timeout_s=1.5,
        fuel=10,
        resources=Resources(250, 1 << 20),
    )
    task = Task(id="t1", spec=full, state=TaskState.FAILED, exit_code=3, reason="x",
                history=(("PENDING", 1.0), ("FAILED", 2.0)))  # fmt: skip
    return [
        cv.spec_to_wire(bare, v1),
        cv.spec_to_wire(full, v1),
        cv.task_to_wire(Task(id="t0", spec=bare), v1),
        cv.task_to_wire(task, v1),
        v1.SubmitTaskRequest(spec=cv.spec_to_wire(full, v1), wait=True),
        v1.SubmitTaskRequest(),
    ]


def test_encoding_is_unchanged_and_round_trips() -> None:
    assert _fastdefaults.install() and _fastdefaults.installed()
    patched = [bytes(m) for m in _messages()]
    betterproto2.Message._get_field_default = _fastdefaults.upstream  # type: ignore[method-assign]
    try:
        original = [bytes(m) for m in _messages()]
    finally:
        _fastdefaults.install()
    assert patched == original
    for message, raw in zip(_messages(), patched, strict=True):
        again = type(message).parse(raw)
        assert again == message and bytes(again) == raw
    # Mutable defaults (lists) are never shared: changing one message's list, then
    # encoding another, still sees the other's empty list as its default.
    a, b = v1.ListTasksResponse.parse(b""), v1.ListTasksResponse.parse(b"")
    a.tasks.append(cv.task_to_wire(Task(id="t", spec=FunctionSpec("m.wasm")), v1))
    assert b.tasks == [] and bytes(b) == b"" and bytes(a) != b""


def test_each_default_is_upstreams() -> None:
    for message in _messages():
        for name in message._betterproto.sorted_field_names:
            assert _fastdefaults._get_field_default(message, name) == _fastdefaults.upstream(
                message, name
            )
