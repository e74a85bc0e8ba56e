"""The CLI's client commands: submit, status, tasks, logs, stop, result, node (and, in
objects.py, obj).

Each reaches a node through the `NodeAPI`: a daemon given by `--node HOST:PORT` (or
`SPEAR_NODE`); else the daemon holding the data dir (found through DATA/spearlet.addr);
else the data dir itself, in this process. Without a daemon, `submit` runs the task here
and returns when it has finished.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spear.cli._common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    NodeOpt,
    Progress,
    choice,
    emit_json,
    load_settings,
    on_node,
    report_unsuccessful,
)
from spear.cli.spec import (
    ArgsArg,
    CpuTimeOpt,
    DirOpt,
    EnvOpt,
    FuelOpt,
    InvokeOpt,
    LabelOpt,
    MaxRetriesOpt,
    MemoryOpt,
    OpenFilesOpt,
    RetryOnOpt,
    ReuseOpt,
    RuntimeOpt,
    TimeoutOpt,
    WarmOpt,
    WorkdirOpt,
    build_spec,
)
from spear.config import parse_size
from spear.core.models import Resources, Task, TaskState
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from spear.node.api import NodeAPI

app = typer.Typer()
IdArg = Annotated[str, typer.Argument(metavar="ID")]


def _fmt_time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(task: Task) -> str:
    if task.started_at is None:
        return "-"
    end = task.finished_at or time.time()
    return f"{(end - task.started_at) * 1000:.1f}ms"


# -- tasks ---------------------------------------------------------------------------


@app.command(
    context_settings={"allow_interspersed_args": False},
    help="Submit a task to a node and print its id. MODULE is a .wasm/.wat file (uploaded "
    "to a remote node), or with --runtime process the command to run. --wait waits and "
    "exits with the task's exit code.",
)
def submit(
    artifact: Annotated[str, typer.Argument(metavar="MODULE|CMD", help="Module or command.")],
    args: ArgsArg = None,
    runtime: RuntimeOpt = None,
    env: EnvOpt = None,
    dirs: DirOpt = None,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    fuel: FuelOpt = None,
    invoke: InvokeOpt = "_start",
    warm: WarmOpt = False,
    reuse: ReuseOpt = False,
    cpu_time: CpuTimeOpt = None,
    open_files: OpenFilesOpt = None,
    workdir: WorkdirOpt = None,
    max_retries: MaxRetriesOpt = 0,
    retry_on: RetryOnOpt = None,
    stdin_file: Annotated[
        Path | None, typer.Option("--stdin", help="A file to give the task as stdin (- for ours).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait; exit with its exit code.")] = False,
    labels: LabelOpt = None,
    cpu: Annotated[
        int | None, typer.Option("--cpu", help="CPU to reserve, in millicores (default: 100).")
    ] = None,
    reserve: Annotated[
        str | None, typer.Option("--reserve", help="Memory to reserve, e.g. 256M (default: 64M).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Submitting again with the same KEY returns the same task, never a second.",
        ),
    ] = None,
    priority: Annotated[
        int,
        typer.Option(
            "--priority", help="Placement order among tasks waiting for room: higher first."
        ),
    ] = 0,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    defaults = Resources()
    resources = Resources(
        defaults.cpu_millis if cpu is None else cpu,
        defaults.memory_bytes if reserve is None else parse_size(reserve),
    )
    spec = build_spec(
        artifact,
        args,
        runtime=runtime,
        env=env,
        dirs=dirs,
        timeout=timeout,
        memory=memory,
        fuel=fuel,
        invoke=invoke,
        warm=warm,
        reuse=reuse,
        cpu_time=cpu_time,
        open_files=open_files,
        workdir=workdir,
        max_retries=max_retries,
        retry_on=retry_on,
        labels=labels,
        resources=resources,
        priority=priority,
    )
    stdin = None
    if stdin_file is not None:
        try:
            stdin = sys.stdin.buffer.read() if str(stdin_file) == "-" else stdin_file.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"--stdin: cannot read {stdin_file}: {exc.strerror}") from None

    async def go(api: NodeAPI) -> Task:
        handle = await api.submit(spec, stdin=stdin, idempotency_key=idempotency_key)
        if not as_json:
            sys.stdout.write(handle.id + "\n")
            sys.stdout.flush()
        # Without a daemon this process is the node: the task must end before we exit.
        if not (wait or api.in_process):
            return handle.task
        state = [handle.task.state.value]

        async def follow() -> None:
            async for task in api.watch(handle.id):
                state[0] = task.state.value

        import anyio

        with Progress(lambda: f"task {handle.id} {state[0]}", wait and not as_json):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                final = await api.wait(handle.id)
                tg.cancel_scope.cancel()
            return final

    task: Task = on_node(settings, node, go)
    if as_json:
        emit_json(task.to_json())
    if wait:
        report_unsuccessful(task)
        raise typer.Exit(task.exit_code or 0)


@app.command(help="List tasks, newest first.")
def tasks(
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            click_type=choice(*(s.value for s in TaskState), case_sensitive=False),
            help="Only tasks in this state.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 50,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    want = None
    if state is not None:
        want = TaskState(state.upper())
    if limit < 1:
        raise InvalidArgument("--limit must be at least 1")
    found: list[Task] = on_node(settings, node, lambda api: api.tasks(want, limit))
    if as_json:
        emit_json([t.to_json() for t in found])
        return
    rows = [("ID", "STATE", "EXIT", "CREATED", "TIME", "ARTIFACT", "REASON")]
    for t in found:
        rows.append(
            (
                t.id,
                t.state.value,
                "-" if t.exit_code is None else str(t.exit_code),
                _fmt_time(t.created_at),
                _duration(t),
                Path(t.spec.artifact).name,
                t.reason or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] + "\n"
        )


def _print_task(task: Task) -> None:
    lines = [
        ("id", task.id),
        ("state", task.state.value),
        ("runtime", task.spec.runtime.value),
        ("artifact", task.spec.artifact),
        ("args", " ".join(task.spec.args)),
        ("node", task.node or "-"),
        ("exit code", "-" if task.exit_code is None else str(task.exit_code)),
        ("reason", task.reason or "-"),
        ("created", _fmt_time(task.created_at)),
        ("started", _fmt_time(task.started_at)),
        ("finished", _fmt_time(task.finished_at)),
        ("duration", _duration(task)),
        ("history", ", ".join(f"{s}@{t:.6f}" for s, t in task.history)),
    ]
    for n, attempt in enumerate(task.attempt_log, 1):  # a retried task's earlier runs
        where = attempt.node or "-"
        lines.append((f"attempt {n}", f"on {where}: exit {attempt.exit_code}, {attempt.reason}"))
    lines.append(("trace", task.trace_id or "-"))  # its OpenTelemetry trace (docs/observability.md)
    for name, value in lines:
        sys.stdout.write(f"{name + ':':<11}{value}\n")


@app.command(help="Show one task.")
def status(
    task_id: IdArg,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    task: Task = on_node(settings, node, lambda api: api.task(task_id))
    if as_json:
        emit_json(task.to_json())  # (with `trace_id` when traced)
    else:
        _print_task(task)


@app.command(help="Print a task's captured output; -f follows it until the task ends.")
def logs(
    task_id: IdArg,
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream", click_type=choice("stdout", "stderr", "agent"), help="Only this one."
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")] = False,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    streams = (stream,) if stream else ()
    sinks = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer, "agent": sys.stderr.buffer}

    async def read(api: NodeAPI) -> dict[str, bytes]:
        collected: dict[str, bytearray] = {}
        agent_started = False
        async for chunk in api.logs(task_id, streams, follow=follow):
            if as_json and not follow:
                collected.setdefault(chunk.stream, bytearray()).extend(chunk.data)
            elif as_json:
                line = {"stream": chunk.stream, "offset": chunk.offset}
                line["data"] = chunk.data.decode("utf-8", errors="replace")
                import json

                sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
                sys.stdout.flush()
            else:
                sink = sys.stdout.buffer if stream else sinks[chunk.stream]
                if chunk.stream == "agent" and not stream and not agent_started:
                    sink.write(b"--- agent log ---\n")
                    agent_started = True
                sink.write(chunk.data)
                sink.flush()
        return {k: bytes(v) for k, v in collected.items()}

    out: dict[str, bytes] = on_node(settings, node, read)
    if as_json and not follow:
        names = streams or ("stdout", "stderr", "agent")
        emit_json({n: out.get(n, b"").decode("utf-8", errors="replace") for n in names})


@app.command(help="Stop (cancel) a task.")
def stop(
    task_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="Recorded as its reason.")] = (
        "stopped by the user"
    ),
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    task: Task = on_node(settings, node, lambda api: api.cancel(task_id, reason))
    if as_json:
        emit_json(task.to_json())
    else:
        sys.stdout.write(f"{task.id} {task.state.value}\n")


@app.command(
    help="Print a finished task's output (waiting for it unless --no-wait); "
    "exits with the task's exit code."
)
def result(
    task_id: IdArg,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for it to end.")] = True,
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)

    async def go(api: NodeAPI) -> Any:
        with Progress(lambda: f"waiting for task {task_id}", wait and not as_json):
            return await api.result(task_id, wait=wait)

    res = on_node(settings, node, go)
    if as_json:
        emit_json(res.to_json())
    else:
        sys.stdout.buffer.write(res.output)
        sys.stdout.flush()
        report_unsuccessful(res.task)
    raise typer.Exit(res.task.exit_code or 0)


@app.command(help="Show the node: resources, load, runtimes.")
def node(
    node: NodeOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    settings = load_settings(data_dir, config)
    info = on_node(settings, node, lambda api: api.node_info())
    if not info.address:  # no daemon: the node lived only while this command read it
        import dataclasses

        info = dataclasses.replace(info, state="offline", pid=0)
    if as_json:
        emit_json(info.to_json())
        return
    mib = 1024 * 1024
    lines = [
        ("name", info.name),
        ("state", info.state),
        ("address", info.address or "- (no daemon serves this data dir: `spear serve`)"),
        ("version", f"spear {info.version}, wasmtime {info.wasmtime_version}"),
        ("runtimes", ", ".join(info.runtimes)),
        ("running", str(info.running_tasks)),
        ("cpu", f"{info.free.cpu_millis}m free of {info.capacity.cpu_millis}m"),
        ("memory", f"{info.free.memory_bytes // mib} MiB free of "
                   f"{info.capacity.memory_bytes // mib} MiB"),
        ("data dir", info.data_dir),
        ("pid", str(info.pid) if info.pid else "-"),
        ("up since", _fmt_time(info.started_at) if info.address else "-"),
    ]  # fmt: skip
    for name, value in lines:
        sys.stdout.write(f"{name + ':':<10}{value}\n")
