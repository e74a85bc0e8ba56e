"""`spear run`: a task to its end with the terminal as its stdio (or, with --stream, as
its caller stream). It reaches the node as every client command does (`connect`): the
daemon holding the data dir if one does, else the data dir in this process."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spear.cli._common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    Progress,
    choice,
    emit_json,
    load_settings,
    on_node,
    report_unsuccessful,
    write_through,
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
from spear.errors import InvalidArgument, SpearError

if TYPE_CHECKING:
    from spear.core.models import FunctionSpec, Task, TaskResult
    from spear.node.api import NodeAPI

app = typer.Typer()


@app.command(
    context_settings={"allow_interspersed_args": False},
    help="Run a WebAssembly (WASI preview 1) command module, or a program (a .py file, or "
    "any executable with --runtime process), to completion as a task. "
    "Arguments after MODULE are the guest's (use -- before guest arguments that look like "
    "flags). Exits with the guest's exit code; 124 on timeout, 134 on a trap, 130 if cancelled.",
)
def run(
    module: Annotated[
        str, typer.Argument(help="A .wasm (or .wat) module, a .py agent, or a command.")
    ],
    args: ArgsArg = None,
    env: EnvOpt = None,
    dirs: DirOpt = None,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    fuel: FuelOpt = None,
    invoke: InvokeOpt = "_start",
    runtime: RuntimeOpt = None,
    warm: WarmOpt = False,
    reuse: ReuseOpt = False,
    cpu_time: CpuTimeOpt = None,
    open_files: OpenFilesOpt = None,
    workdir: WorkdirOpt = None,
    max_retries: MaxRetriesOpt = 0,
    retry_on: RetryOnOpt = None,
    labels: LabelOpt = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Carry the task's caller stream over the terminal: stdin lines in, "
            "its messages out on stdout (guest stdout/stderr go to its logs).",
        ),
    ] = False,
    framing: Annotated[
        str,
        typer.Option(
            "--framing",
            click_type=choice("lines", "length"),
            help="With --stream: a message a line, or a 4-byte length before each.",
        ),
    ] = "lines",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,  # the task's output kept, then {task, output}
) -> None:
    from spear.cli.stream import run_streaming

    settings = load_settings(data_dir, config)
    if as_json and stream:
        raise InvalidArgument("--json and --stream do not go together")
    spec = build_spec(
        module,
        args,
        runtime=runtime,
        env=env,
        dirs=dirs,
        timeout=timeout,
        memory=memory,
        fuel=fuel,
        invoke=invoke,
        warm=warm,
        cpu_time=cpu_time,
        open_files=open_files,
        workdir=workdir,
        max_retries=max_retries,
        retry_on=retry_on,
        reuse=reuse,
        labels=labels,
    )
    if as_json:
        result: TaskResult = on_node(settings, None, lambda api: api.call(spec))
        emit_json(result.to_json())
        raise typer.Exit(result.task.exit_code or 0)
    task: Task = on_node(
        settings,
        None,
        lambda api: run_streaming(api, spec, framing) if stream else _run_foreground(api, spec),
    )
    report_unsuccessful(task)
    raise typer.Exit(task.exit_code or 0)


async def _run_foreground(api: NodeAPI, spec: FunctionSpec) -> Task:
    """Run a task with the terminal as its stdio; SIGINT/SIGTERM cancel it. Until it
    starts (a large module's first compile), a spinner on a terminal says so."""
    import signal

    import anyio

    created: list[Task] = []
    result: list[Task] = []

    async def watch_signals(scope: Any) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if created:
                    await api.cancel(created[0].id, "cancelled by signal")
                    return
                scope.cancel()

    failure: list[BaseException] = []
    preparing = Progress(f"preparing {spec.artifact}")

    def on_created(task: Task) -> None:
        preparing.done()
        created.append(task)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals, tg.cancel_scope)
        try:
            with preparing:
                result.append(
                    await api.run(
                        spec,
                        stdin="inherit",
                        stdout=write_through(sys.stdout.buffer),
                        stderr=write_through(sys.stderr.buffer),
                        on_created=on_created,
                    )
                )
        except SpearError as exc:  # re-raised outside the group, as itself
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0]
