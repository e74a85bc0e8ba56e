"""Retry policy (core/retries.py) and local retries on a real node (issue 16)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import pytest

from spear.core import retries
from spear.core.models import Attempt, FunctionSpec, Runtime, Task, TaskState, new_task_id
from spear.core.tasks.codec import decode_task, encode_task
from spear.errors import InvalidArgument
from spear.transport import _convert as cv

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        (137, "node lost", retries.NODE_LOST),
        (137, "node left the cluster", retries.NODE_LOST),
        (137, "killed by signal SIGKILL", retries.PROCESS_LOST),
        (137, "lost: the process running it exited without finishing it", retries.PROCESS_LOST),
        (124, "timeout", retries.TIMEOUT),
        (3, "exit status 3", retries.EXIT),
        (66, "exit status 66", retries.EXIT),  # the agent's own code, not a refusal
        (134, "trap: unreachable", retries.EXIT),
        (65, "not a wasm module", None),
        (71, "needs more memory than the node has", None),
        (130, "cancelled", None),
        (None, None, None),
    ],
)
def test_failure_kinds(code: int | None, reason: str | None, kind: str | None) -> None:
    assert retries.failure_kind(code, reason) == kind


def _task(**spec: object) -> Task:
    return Task(id=new_task_id(), spec=FunctionSpec("m.wasm", **spec), node="n1")  # type: ignore[arg-type]


def test_should_retry_follows_the_spec() -> None:
    assert not retries.should_retry(_task(), 137, "node lost")  # max_retries 0 by default
    task = _task(max_retries=2)
    assert retries.should_retry(task, 137, "node lost")
    assert retries.should_retry(task, 137, "killed by signal SIGKILL")
    assert not retries.should_retry(task, 124, "timeout")  # not by default
    assert not retries.should_retry(task, 1, "exit status 1")
    opted = _task(max_retries=1, retry_on=("exit", "timeout"))
    assert retries.should_retry(opted, 1, "exit status 1")
    assert not retries.should_retry(opted, 137, "node lost")
    used = retries.next_attempt(opted, 1, "exit status 1", 5.0)
    assert not retries.should_retry(used, 1, "exit status 1")  # none left


def test_an_agents_own_exit_is_judged_by_its_reason_not_its_code() -> None:
    opted = _task(max_retries=1, retry_on=("exit",))
    assert retries.should_retry(opted, 64, "exit status 64")  # (64 is the agent's, here)
    assert not retries.should_retry(opted, 64, "bad input")  # (a refusal before it ran)


def test_the_jitter_spans_half_to_all_of_the_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    for draw, share in ((0.0, 0.5), (1.0, 1.0), (0.5, 0.75)):
        monkeypatch.setattr(random, "random", lambda draw=draw: draw)
        assert retries.backoff_s(3) == pytest.approx(0.4 * share)


def test_backoff_doubles_with_jitter_and_a_ceiling() -> None:
    for attempts in range(12):
        ceiling = min(retries.BACKOFF_MAX_S, retries.BACKOFF_FIRST_S * 2 ** max(0, attempts - 1))
        for _ in range(20):
            assert ceiling / 2 <= retries.backoff_s(attempts) <= ceiling


def test_next_attempt_keeps_the_id_and_logs_the_failed_run() -> None:
    task = _task(max_retries=3).transition(TaskState.RUNNING, 1.0)
    again = retries.next_attempt(task, 137, "node lost", 2.0, node="n2")
    assert again.id == task.id and again.state is TaskState.PENDING and again.node == "n2"
    assert again.attempts == 1 and again.reason == "retry 1 of 3 after: node lost"
    assert again.attempt_log == (Attempt("n1", 1.0, 2.0, 137, "node lost"),)
    assert [s for s, _ in again.history][-2:] == ["FAILED", "PENDING"]
    assert again.started_at is None and again.exit_code is None
    assert again.finished_at is None  # (the failed run's end is in its attempt)
    finished = task.transition(TaskState.FAILED, exit_code=137, reason="node lost")
    here = retries.next_attempt(finished, 137, "node lost", 3.0)
    assert (here.node, here.exit_code, here.finished_at) == ("n1", None, None)
    # Its record and its wire form keep every attempt.
    assert decode_task(encode_task(again)) == again
    assert cv.task_from_wire(cv.task_to_wire(again)) == again
    json.dumps(again.to_json())


def test_retry_fields_are_checked_and_round_trip() -> None:
    with pytest.raises(InvalidArgument, match="max retries"):
        FunctionSpec("m.wasm", max_retries=-1)
    with pytest.raises(InvalidArgument, match="unknown failure to retry on 'oops'"):
        FunctionSpec("m.wasm", retry_on=("oops",))
    spec = FunctionSpec("m.wasm", max_retries=4, retry_on=("timeout",))
    assert FunctionSpec.from_json(spec.to_json()) == spec
    assert cv.spec_from_wire(cv.spec_to_wire(spec)) == spec
    plain = FunctionSpec("m.wasm")
    assert cv.spec_from_wire(cv.spec_to_wire(plain)).retry_on == plain.retry_on


FLAKY = """#!/bin/sh
n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$1"
echo "attempt $n"
[ $n -ge "$2" ] && exit 0
exit 3
"""


def _flaky(tmp_path: Path) -> Path:
    script = tmp_path / "flaky.sh"
    script.write_text(FLAKY)
    script.chmod(0o755)
    return script


def _spec(tmp_path: Path, succeed_on: int, **kw: object) -> FunctionSpec:
    script = _flaky(tmp_path)
    return FunctionSpec(
        str(script),
        runtime=Runtime.PROCESS,
        args=(str(tmp_path / "count"), str(succeed_on)),
        **kw,  # type: ignore[arg-type]
    )


def test_a_failing_task_runs_again_and_keeps_one_result(tmp_path: Path) -> None:
    from spear import LocalNode

    async def main() -> None:
        from spear.node.inprocess import InProcessNode

        async with LocalNode(tmp_path / "data") as local:
            node = InProcessNode(local)
            spec = _spec(tmp_path, 3, max_retries=3, retry_on=("exit",))
            result = await node.call(spec)
            task = result.task
            assert task.state is TaskState.COMPLETED and task.exit_code == 0
            assert task.attempts == 2
            assert [a.exit_code for a in task.attempt_log] == [3, 3]
            assert all(a.node == task.node for a in task.attempt_log)
            assert result.output == b"attempt 3\n"  # the last attempt's output alone
            assert (await node.task(task.id)).attempts == 2

    anyio.run(main)


def test_retries_run_out_and_default_specs_never_retry_an_exit(tmp_path: Path) -> None:
    from spear import LocalNode

    async def main() -> None:
        async with LocalNode(tmp_path / "data") as node:
            out = await node.run(_spec(tmp_path, 99, max_retries=1, retry_on=("exit",)))
            assert out.state is TaskState.FAILED and out.exit_code == 3 and out.attempts == 1
            assert (tmp_path / "count").read_text().strip() == "2"
            (tmp_path / "count").unlink()
            plain = await node.run(_spec(tmp_path, 99, max_retries=5))  # exit not retried
            assert plain.state is TaskState.FAILED and plain.attempts == 0
            assert (tmp_path / "count").read_text().strip() == "1"

    anyio.run(main)


def test_a_cancel_during_the_backoff_ends_the_retries(tmp_path: Path) -> None:
    from spear import LocalNode

    async def main() -> None:
        async with LocalNode(tmp_path / "data") as node:
            spec = _spec(tmp_path, 99, max_retries=50, retry_on=("exit",))
            handle = await node.submit(spec)
            with anyio.fail_after(30):  # (polled with a deadline)
                while (await node.task(handle.id)).attempts < 2:
                    await anyio.sleep(0.02)
            cancelled = await node.cancel(handle.id, "enough")
            assert cancelled.state is TaskState.CANCELLED
            final = await node.wait(handle.id)
            assert final.state is TaskState.CANCELLED and final.attempts < 50

    anyio.run(main)
