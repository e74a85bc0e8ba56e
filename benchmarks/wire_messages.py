"""What the messages every task sends cost in CPU (issue #17, item 6): building and
encoding, then decoding and converting, in this process, with protobuf's own (upb)
messages and the converters spear uses (transport/_convert.py, _object_convert.py).

    python -m benchmarks.wire_messages [--quick]   # writes benchmarks/results/wire_messages.json

- report: a ReportTasksRequest of 200 task records (a member -> the SMS, batched);
- submit: a SubmitTasksRequest of 300 specs (a client -> a node), and its answer of 300
  task records (SubmitTasksResponse);
- commit: one CommitObjectRequest and its ObjectRecord (a task's result, member -> SMS).

The ninth stop ran it with betterproto2's messages beside protobuf's (docs/benchmarks.md,
"Protobuf's messages for the calls every task makes"); betterproto2 is no longer a
dependency, so it measures protobuf's alone.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import ROOT, standalone

RESULT_FILE = ROOT / "benchmarks" / "results" / "wire_messages.json"


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


def _cases() -> dict[str, tuple[int, Any, Any]]:
    """Per case: (tasks per call, build+encode, decode+convert)."""
    from spear.core.object_index import ObjectHolder, ObjectRecord
    from spear.transport import _convert as cv
    from spear.transport import _object_convert as oc
    from spear.transport._gen.pb import sms_pb2
    from spear.transport._gen.pb import spearlet_pb2 as pb

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

    def report() -> bytes:
        return sms_pb2.ReportTasksRequest(
            tasks=[cv.task_to_wire(t) for t in tasks]
        ).SerializeToString()

    def submit() -> bytes:
        wire = [pb.SubmitTaskRequest(spec=cv.spec_to_wire(s), wait=True) for s in specs]
        return pb.SubmitTasksRequest(tasks=wire).SerializeToString()

    def answer() -> bytes:
        outcomes = [pb.SubmitOutcome(task=cv.task_to_wire(task)) for _ in specs]
        return pb.SubmitTasksResponse(outcomes=outcomes).SerializeToString()

    def commit() -> bytes:
        request = sms_pb2.CommitObjectRequest(
            key=record.key, node="node-1", address="127.0.0.1:41234", size=0, value=b""
        )
        return request.SerializeToString() + oc.record_to_wire(record).SerializeToString()

    raw_report, raw_submit, raw_answer = report(), submit(), answer()
    raw_commit = oc.record_to_wire(record).SerializeToString()

    def read_report() -> Any:
        return [
            cv.task_from_wire(t) for t in sms_pb2.ReportTasksRequest.FromString(raw_report).tasks
        ]

    def read_submit() -> Any:
        return [
            cv.spec_from_wire(r.spec) for r in pb.SubmitTasksRequest.FromString(raw_submit).tasks
        ]

    def read_answer() -> Any:
        answered = pb.SubmitTasksResponse.FromString(raw_answer)
        return [cv.task_from_wire(o.task) for o in answered.outcomes]

    def read_commit() -> Any:
        return oc.record_from_wire(sms_pb2.ObjectRecord.FromString(raw_commit))

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
    cases = _cases()
    samples = {name: {"encode": [], "decode": []} for name in cases}
    for _ in range(rounds):
        for name, (per_call, encode, decode) in cases.items():
            calls = max(5, 2000 // per_call)
            samples[name]["encode"].append(_per_task_us(encode, per_call, calls))
            samples[name]["decode"].append(_per_task_us(decode, per_call, calls))
    out = {
        name: {
            f"protobuf {step} us/task": round(sorted(steps[step])[rounds // 2], 2)
            for step in ("encode", "decode")
        }
        for name, steps in samples.items()
    }
    return {"wire_messages": out, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    import json

    result = standalone(__doc__, run, RESULT_FILE, argv)
    print(json.dumps(result["wire_messages"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
