"""The chaos suite's steady load (run inside the lab's client namespace): tasks and object
writes at a fixed rate through `spear.Client` (failing over between the nodes), then
every task followed to its end and every acknowledged object read back.

    python chaos_load.py --nodes A,B,C --tls DIR --out OUT.json --duration S --rate R
        --marks FILE --stop-file FILE

Each task is a process that appends `start JOB` and, 2 s later, `end JOB` to the marks
file (every namespace shares the file system): a job with two `end` lines ran twice.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio

JOB = 'echo "start $2" >> "$1"; sleep 2; echo "end $2" >> "$1"\n'
FOLLOW_S = 120.0  # how long the end waits for the last tasks at most


async def main(args: argparse.Namespace) -> None:
    from spear.core.models import FunctionSpec, Resources, Runtime
    from spear.errors import SpearError
    from spear.node.client import Client
    from spear.transport.channels import Credentials
    from spear.transport.tls import TlsFiles

    marks = Path(args.marks)
    script = marks.with_name("job.sh")
    script.write_text(JOB)
    credentials = Credentials(tls=TlsFiles(Path(args.tls)))
    jobs: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    started = time.time()

    # One client per node, each failing over to the others: the load is spread evenly.
    addresses = args.nodes.split(",")
    clients = [
        Client(
            ",".join(addresses[k:] + addresses[:k]),
            credentials=credentials,
            retries=8,
            timeout=15,
        )
        for k in range(len(addresses))
    ]
    client = clients[0]
    try:

        async def one(i: int) -> None:
            client = clients[i % len(clients)]
            job: dict[str, Any] = {"job": f"job{i}", "submitted_at": time.time()}
            jobs.append(job)
            spec = FunctionSpec(
                "/bin/sh",
                runtime=Runtime.PROCESS,
                args=(str(script), str(marks), f"job{i}"),
                resources=Resources(cpu_millis=100, memory_bytes=32 * 1024 * 1024),
                max_retries=3,
            )
            try:
                handle = await client.submit(spec)
                job["id"] = handle.id
            except SpearError as exc:
                job["refused"] = str(exc)
            data = os.urandom(512)
            obj: dict[str, Any] = {
                "key": f"chaos/{i}",
                "sha": hashlib.sha256(data).hexdigest(),
                "at": time.time(),
            }
            try:
                await client.put_object(obj["key"], data)
                obj["acked"] = True
            except SpearError as exc:
                obj["acked"] = False
                obj["error"] = str(exc)
            objects.append(obj)

        limit = int(args.duration * args.rate) + 1
        async with anyio.create_task_group() as tg:
            stop = anyio.Path(args.stop_file)
            for i in range(limit):  # bounded by count, paced by the clock
                if time.time() - started > args.duration or await stop.exists():
                    break
                tg.start_soon(one, i)
                await anyio.sleep(1 / args.rate)

        deadline = time.time() + FOLLOW_S
        for job in jobs:
            if "id" not in job:
                continue
            for _ in range(int(FOLLOW_S / 0.2) + 1):  # bounded in count and time
                try:
                    task = await client.task(job["id"])
                except SpearError as exc:
                    job["error"] = str(exc)
                    task = None
                if task is not None and task.state.terminal:
                    break
                if time.time() > deadline:
                    break
                await anyio.sleep(0.2)
            if task is not None:
                job.update(
                    state=task.state.value,
                    node=task.node,
                    attempts=task.attempts,
                    attempt_nodes=[a.node for a in task.attempt_log],
                    lost_at=[a.finished_at for a in task.attempt_log],
                    started_at=task.started_at,
                    finished_at=task.finished_at,
                    exit_code=task.exit_code,
                    reason=task.reason,
                )
        for obj in objects:
            if not obj["acked"]:
                continue
            try:
                data, _ = await client.get_object(obj["key"])
                obj["read_back"] = hashlib.sha256(data).hexdigest() == obj["sha"]
            except SpearError as exc:
                obj["read_back"] = False
                obj["error"] = str(exc)

    finally:
        for each in clients:
            await each.aclose()
    report = json.dumps({"started": started, "jobs": jobs, "objects": objects}, indent=1)
    await anyio.Path(args.out).write_text(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", required=True)
    parser.add_argument("--tls", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--marks", required=True)
    parser.add_argument("--stop-file", required=True)
    anyio.run(main, parser.parse_args())
