"""The `spear` command line. Every command is a thin call into a node or a client.

Exit codes: 0 success; 2 usage error (a bad flag or argument); a spear error's own code
(see errors.py: 64 invalid input, 65 invalid module, 66 not found, 73 storage, ...);
for `spear run`, the guest's own exit code, 124 timeout, 130 cancelled, 134 trap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer
from click import exceptions as _click_exc

from spear.cli.spec import (
    ArgsArg,
    CpuTimeOpt,
    DirOpt,
    EnvOpt,
    FuelOpt,
    InvokeOpt,
    MemoryOpt,
    OpenFilesOpt,
    RuntimeOpt,
    TimeoutOpt,
    WarmOpt,
    WorkdirOpt,
    build_spec,
)
from spear.config import Settings
from spear.core.models import FunctionSpec, Task, TaskState
from spear.errors import SpearError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from spear.core.node import Spearlet

app = typer.Typer(
    name="spear",
    help="spear: a serverless runtime for AI agents (WebAssembly modules and processes).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $SPEAR_HOME, else XDG data dir)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings file (TOML).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def _settings(data_dir: Path | None, config: Path | None, **flags: Any) -> Settings:
    settings = Settings.load(config_file=config, data_dir=data_dir, **flags)
    from spear import _logging

    _logging.configure(settings)
    return settings


def _run_on_node(
    settings: Settings, fn: Callable[[Spearlet], Awaitable[Any]], *, hold: bool = False
) -> Any:
    from spear.node.assembly import build_local_node

    async def main() -> Any:
        async with build_local_node(settings, hold_kv=hold) as node:
            return await fn(node)

    return anyio.run(main)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


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
    cpu_time: CpuTimeOpt = None,
    open_files: OpenFilesOpt = None,
    workdir: WorkdirOpt = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Carry the task's caller stream over the terminal: stdin lines in, "
            "its messages out on stdout (guest stdout/stderr go to its logs).",
        ),
    ] = False,
    framing: Annotated[
        str, typer.Option("--framing", help="With --stream: lines, or length (4-byte prefix).")
    ] = "lines",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    from spear.cli.stream import check_framing, run_streaming

    settings = _settings(data_dir, config)
    check_framing(framing)
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
    )
    from spear.cli.serve import read_address_file

    daemon = None if stream else read_address_file(settings.data_dir)
    task = None if daemon is None else anyio.run(_run_through_daemon, daemon, spec)
    if task is None:
        task = _run_on_node(
            settings,
            lambda node: (
                run_streaming(node, spec, framing) if stream else _run_foreground(node, spec)
            ),
        )
    _report_unsuccessful(task)
    raise typer.Exit(task.exit_code or 0)


def _report_unsuccessful(task: Task) -> None:
    """One line on stderr for an ending that is not the guest's own exit status."""
    if (
        task.state is not TaskState.COMPLETED
        and task.reason
        and not task.reason.startswith("exit status")
    ):
        sys.stderr.write(f"spear: task {task.id} {task.state.value.lower()}: {task.reason}\n")


async def _run_through_daemon(address: str, spec: FunctionSpec) -> Task | None:
    """Run on the daemon serving this data dir, if it is alive (it holds the database).

    Output is followed from the task's logs as it is written; piped stdin is sent whole.
    Returns None when the daemon is gone (a stale address file): run the task here instead.
    """
    from spear.errors import Unavailable
    from spear.node.client import Client

    client = Client(address)
    try:
        try:
            await client.node_info()
        except Unavailable:
            return None  # a stale address file: a killed daemon
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        handle = await client.submit(spec, stdin=stdin)
        sinks = {
            "stdout": _write_through(sys.stdout.buffer),
            "stderr": _write_through(sys.stderr.buffer),
        }
        async for chunk in handle.logs(("stdout", "stderr"), follow=True):
            sinks[chunk.stream](chunk.data)
        return await handle.wait()
    finally:
        await client.aclose()


def _write_through(stream: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


async def _run_foreground(node: Spearlet, spec: FunctionSpec) -> Task:
    """Run a task with the terminal as its stdio; SIGINT/SIGTERM cancel it."""
    import signal

    created: list[Task] = []
    result: list[Task] = []

    async def watch_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if created:
                    await node.cancel(created[0].id, "cancelled by signal")
                    return
                scope.cancel()

    failure: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_signals, tg.cancel_scope)
        try:
            result.append(
                await node.run(
                    spec,
                    stdin="inherit",
                    tee_stdout=_write_through(sys.stdout.buffer),
                    tee_stderr=_write_through(sys.stderr.buffer),
                    on_created=created.append,
                )
            )
        except SpearError as exc:  # re-raised outside the group, as itself
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0]


@app.command(help="Print spear's version and its runtime's.")
def version(as_json: JsonOpt = False) -> None:
    from spear import __version__
    from spear.runtimes.wasm.agent import wasmtime_version
    from spear.runtimes.wasm.hostcalls.abi import ABI_VERSION

    info = {"spear": __version__, "wasmtime": wasmtime_version(), "hostcall_abi": ABI_VERSION}
    if as_json:
        _emit_json(info)
    else:
        sys.stdout.write(" ".join(f"{k} {v}" for k, v in info.items()) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr for any error, never a traceback."""
    try:
        code = app(args=argv, prog_name="spear", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _click_exc.NoArgsIsHelpError:
        return 2  # the help text is already printed
    except _click_exc.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        sys.stderr.write(f"spear: error: {exc.format_message()}{hint}\n")
        return 2
    except _click_exc.ClickException as exc:
        sys.stderr.write(f"spear: error: {exc.format_message()}\n")
        return exc.exit_code
    except typer.Abort:
        sys.stderr.write("spear: interrupted\n")
        return 130
    except SpearError as exc:
        sys.stderr.write(f"spear: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("spear: interrupted\n")
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:
        sys.stderr.write(f"spear: error: {exc.strerror or exc}\n")
        return 74


# Commands in modules of their own register on `app` when imported.
# (cli_cluster: distributed mode; cli_objects: obj gc.)
from spear.cli import cluster, dashboard, objects, serve, tasks  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
