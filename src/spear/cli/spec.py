"""The options that describe a task, shared by `spear run` and `spear submit`."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from spear.config import parse_size
from spear.core.models import DEFAULT_RETRY_ON, DirMapping, FunctionSpec, Resources, Runtime
from spear.errors import InvalidArgument

ArgsArg = Annotated[list[str] | None, typer.Argument(help="Arguments for the task.")]
EnvOpt = Annotated[
    list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE for the task (repeatable).")
]
DirOpt = Annotated[
    list[str] | None,
    typer.Option("--dir", help="HOST_DIR[::GUEST_DIR] to preopen read-write (repeatable)."),
]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Stop the task after SECONDS.")]
MemoryOpt = Annotated[str | None, typer.Option("--memory", help="Memory limit, e.g. 64M or 1GiB.")]
FuelOpt = Annotated[int | None, typer.Option("--fuel", help="Stop after this many units of fuel.")]
InvokeOpt = Annotated[str, typer.Option("--invoke", help="Export to call.")]
RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        click_type=click.Choice(("wasm", "process")),
        help="The runtime (default: process for .py, else wasm).",
    ),
]
WarmOpt = Annotated[
    bool, typer.Option("--warm", help="process: fork a .py agent from a warm Python.")
]
ReuseOpt = Annotated[
    bool,
    typer.Option(
        "--reuse",
        help="process: keep a warm .py agent's process for the next task of the same "
        "function, its imports and globals kept (implies --warm).",
    ),
]
CpuTimeOpt = Annotated[
    float | None, typer.Option("--cpu-time", help="process: CPU seconds (RLIMIT_CPU).")
]
OpenFilesOpt = Annotated[
    int | None, typer.Option("--open-files", help="process: open files (RLIMIT_NOFILE).")
]
WorkdirOpt = Annotated[
    str | None, typer.Option("--workdir", help="process: the working directory.")
]
MaxRetriesOpt = Annotated[
    int,
    typer.Option(
        "--max-retries", help="Run the task again up to N times if it fails (see --retry-on)."
    ),
]
RetryOnOpt = Annotated[
    str | None,
    typer.Option(
        "--retry-on",
        help="Which failures to retry, comma-separated: node-lost, process-lost, timeout, "
        "exit (default: node-lost,process-lost).",
    ),
]

LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        help="NAME=VALUE a node must carry (repeatable); spear/inputs=KEY,... names input "
        "objects (data affinity), mcp.allow=GLOB,... narrows the MCP tools it may call.",
    ),
]


def parse_retry_on(text: str | None) -> tuple[str, ...]:
    """`--retry-on`'s kinds (the spec checks each one)."""
    if text is None:
        return DEFAULT_RETRY_ON
    return tuple(kind.strip() for kind in text.split(",") if kind.strip())


def pick_runtime(module: str, flag: str | None) -> Runtime:
    if flag is None:
        return Runtime.PROCESS if module.endswith(".py") else Runtime.WASM
    try:
        return Runtime(flag)
    except ValueError:
        raise InvalidArgument(f"--runtime must be wasm or process, not {flag!r}") from None


def parse_pair(text: str, flag: str = "--env") -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InvalidArgument(f"{flag} expects NAME=VALUE, got {text!r}")
    return name, value


def build_spec(
    artifact: str,
    args: list[str] | None,
    *,
    runtime: str | None,
    env: list[str] | None,
    dirs: list[str] | None,
    timeout: float | None,
    memory: str | None,
    fuel: int | None,
    invoke: str,
    warm: bool,
    cpu_time: float | None,
    open_files: int | None,
    workdir: str | None,
    labels: list[str] | None = None,
    resources: Resources | None = None,
    max_retries: int = 0,
    retry_on: str | None = None,
    priority: int = 0,
    reuse: bool = False,
) -> FunctionSpec:
    """The FunctionSpec the task options describe (a leading `--` in `args` is ours)."""
    task_args = list(args or ())
    if task_args[:1] == ["--"]:
        task_args = task_args[1:]
    else:
        _warn_of_own_options(task_args)
    return FunctionSpec(
        artifact=artifact,
        runtime=pick_runtime(artifact, runtime),
        args=tuple(task_args),
        env=tuple(parse_pair(e) for e in env or ()),
        dirs=tuple(DirMapping.parse(d) for d in dirs or ()),
        entry=invoke,
        timeout_s=timeout,
        memory_limit_bytes=parse_size(memory) if memory is not None else None,
        fuel=fuel,
        warm=warm or reuse,
        cpu_time_s=cpu_time,
        open_files=open_files,
        workdir=workdir,
        labels=tuple(parse_pair(lb, "--label") for lb in labels or ()),
        resources=resources if resources is not None else Resources(),
        max_retries=max_retries,
        retry_on=parse_retry_on(retry_on),
        priority=priority,
        reuse=reuse,
    )


def _warn_of_own_options(task_args: list[str]) -> None:
    """Say so when an argument after MODULE is one of this command's own options: it goes
    to the agent (`spear run agent.wasm --data-dir X` runs in the default data dir). A
    `--` before the agent's arguments says they are its, and silences this."""
    context = click.get_current_context(silent=True)
    if context is None:
        return
    own = {name for p in context.command.params for name in (*p.opts, *p.secondary_opts)}
    for arg in task_args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name in own:
            click.echo(
                f"spear: warning: {name} after the module is the agent's argument, not "
                f"spear's: put spear's options before the module (or -- before the "
                f"agent's arguments, to say they are its)",
                err=True,
            )
            return
