"""betterproto2's messages against protobuf's own (upb) on the messages every task sends
(issue #17, item 6): building and encoding, then decoding and converting, in this process.

    python -m benchmarks.wire_messages [--quick]   # writes benchmarks/results/wire_messages.json

Measured, per task, with the converters spear uses (transport/_convert.py,
_object_convert.py), the two kinds alternating round after round:

- report: a ReportTasksRequest of 200 task records (a member -> the SMS, batched);
- submit: a SubmitTasksRequest of 300 specs (a client -> a node), and its answer of 300
  task records (SubmitTasksResponse);
- commit: one CommitObjectRequest and its ObjectRecord (a task's result, member -> SMS).

The same bytes either way (tests/transport/test_wire_codec.py): the choice is only the
CPU each end spends. spear's own messages are protobuf's now; betterproto2's are measured
beside them only where betterproto2 and its generated package (transport/_gen/spear) are
still importable, else protobuf's alone (no speed-up column).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import ROOT, standalone

RESULT_FILE = ROOT / "benchmarks" / "results" / "wire_messages.json"


def _kinds() -> tuple[str, ...]:
    """The kinds of message to measure: betterproto2's only while it can be imported."""
    try:
        import betterproto2  # noqa: F401
        from spear.transport._gen.spear import v1  # noqa: F401
    except ImportError:
        return ("protobuf",)
    return ("betterproto2", "protobuf")


def _task() -> Any:
    from spear.core.models import FunctionSpec, Resources, Task, TaskState

    spec = FunctionSpec(
        "/data/artifacts/3f/3f9a.wasm",
        args=("--n", "3"),
        resources=Resources(cpu_millis=100, memory_bytes=64 * 1024 * 1024),
        labels=(("zone", "a"),),
    )
    task = Task(id="01a22dccb834e315a7ee2b", spec=spec, created_at=time.time(), node="node-1")
    return task.transition(TaskState.RUNNING, time.time()).transition(
        TaskState.COMPLETED, time.time(), exit_code=0
    )


def _cases(kind: str) -> dict[str, tuple[int, Any, Any]]:
    """Per case: (tasks per call, build+encode, decode+convert), in `kind`'s messages."""
    from spear.core.object_index import ObjectHolder, ObjectRecord
    from spear.transport import _convert as cv
    from spear.transport import _object_convert as oc
    from spear.transport._gen.pb import sms_pb2
    from spear.transport._gen.pb import spearlet_pb2 as pb

    bp = kind == "betterproto2"
    if bp:
        from spear.transport._gen.spear import v1

        m, sms = v1, v1
    else:
        m, sms = pb, sms_pb2
    task = _task()
    tasks = [task] * 200
    specs = [task.spec] * 300
    record = ObjectRecord(
        key="results/01a22dccb834e315a7ee2b",
        version=7,
        size=0,
        holders=(ObjectHolder("node-1", "127.0.0.1:41234", True),),
        value=b"",
    )

    def encode(message: Any) -> bytes:
        return bytes(message) if bp else message.SerializeToString()  # type: ignore[no-any-return]

    def decode(cls: Any, raw: bytes) -> Any:
        return cls.parse(raw) if bp else cls.FromString(raw)

    def report() -> bytes:
        return encode(sms.ReportTasksRequest(tasks=[cv.task_to_wire(t, m) for t in tasks]))

    def submit() -> bytes:
        wire = [m.SubmitTaskRequest(spec=cv.spec_to_wire(s, m), wait=True) for s in specs]
        return encode(m.SubmitTasksRequest(tasks=wire))

    def answer() -> bytes:
        outcomes = [m.SubmitOutcome(task=cv.task_to_wire(task, m)) for _ in specs]
        return encode(m.SubmitTasksResponse(outcomes=outcomes))

    def commit() -> bytes:
        request = sms.CommitObjectRequest(
            key=record.key, node="node-1", address="127.0.0.1:41234", size=0, value=b""
        )
        return encode(request) + encode(oc.record_to_wire(record, sms))

    raw_report, raw_submit, raw_answer = report(), submit(), answer()
    raw_commit = encode(oc.record_to_wire(record, sms))

    def read_report() -> Any:
        return [cv.task_from_wire(t) for t in decode(sms.ReportTasksRequest, raw_report).tasks]

    def read_submit() -> Any:
        return [cv.spec_from_wire(r.spec) for r in decode(m.SubmitTasksRequest, raw_submit).tasks]

    def read_answer() -> Any:
        answered = decode(m.SubmitTasksResponse, raw_answer)
        return [cv.task_from_wire(o.task) for o in answered.outcomes]

    def read_commit() -> Any:
        return oc.record_from_wire(decode(sms.ObjectRecord, raw_commit))

    return {
        "report (200 task records)": (200, report, read_report),
        "submit (300 specs)": (300, submit, read_submit),
        "answer (300 task records)": (300, answer, read_answer),
        "commit (request and record)": (1, commit, read_commit),
    }


def _per_task_us(fn: Any, per_call: int, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls / per_call * 1e6


def run(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 7
    kinds = _kinds()
    cases = {kind: _cases(kind) for kind in kinds}
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        kind: {name: {"encode": [], "decode": []} for name in cases[kind]} for kind in kinds
    }
    for _ in range(rounds):
        for kind in kinds:
            for name, (per_call, encode, decode) in cases[kind].items():
                calls = max(5, 2000 // per_call)
                samples[kind][name]["encode"].append(_per_task_us(encode, per_call, calls))
                samples[kind][name]["decode"].append(_per_task_us(decode, per_call, calls))
    out: dict[str, Any] = {}
    for name in cases[kinds[0]]:
        row: dict[str, Any] = {}
        for kind in kinds:
            for step in ("encode", "decode"):
                row[f"{kind} {step} us/task"] = round(
                    sorted(samples[kind][name][step])[rounds // 2], 2
                )
        for step in ("encode", "decode") if len(kinds) > 1 else ():
            row[f"{step}: protobuf's speed-up"] = round(
                row[f"betterproto2 {step} us/task"] / row[f"protobuf {step} us/task"], 1
            )
        out[name] = row
    return {"wire_messages": out, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    import json

    result = standalone(__doc__, run, RESULT_FILE, argv)
    print(json.dumps(result["wire_messages"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
