"""The `spear` command line: the typer app, built here from the command modules (each
imports only `_common` and lower layers; none imports this module). Every command is a
thin call into a node or a client.

Start-up time matters (`spear run agent.wasm` is a whole process each time), so a command
module is imported only when its command runs (or its help or completion is asked for):
`_COMMANDS` names where each lives and its one-line help for `spear --help`. Typer stays
(its annotations declare every option once); rich is never used for help or errors.

Exit codes: 0 success; 2 usage error (a bad flag or argument); a spear error's own code
(see errors.py: 64 invalid input, 65 invalid module, 66 not found, 73 storage, ...);
for `spear run`, the guest's own exit code, 124 timeout, 130 cancelled, 134 trap.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
import typer.core
import typer.main
from click import exceptions as _click_exc

from spear.cli._common import JsonOpt, choice, emit_json, json_requested
from spear.errors import SpearError

if TYPE_CHECKING:
    from collections.abc import Iterable

# name -> (module, its typer app, one-line help). A module's app holds one command or
# several (tasks: submit, tasks, status, ...), or is the group itself (obj, cluster).
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("spear.cli.run", "app", "Run a module or program to its end as a task."),
    "submit": ("spear.cli.tasks", "app", "Submit a task to a node and print its id."),
    "tasks": ("spear.cli.tasks", "app", "List tasks, newest first."),
    "status": ("spear.cli.tasks", "app", "Show one task."),
    "logs": ("spear.cli.tasks", "app", "Print a task's captured output (-f follows it)."),
    "stop": ("spear.cli.tasks", "app", "Stop (cancel) a task."),
    "result": ("spear.cli.tasks", "app", "Print a finished task's output."),
    "node": ("spear.cli.tasks", "app", "Show the node: resources, load, runtimes."),
    "obj": ("spear.cli.objects", "obj_app", "The node's object store: put, get, ls, rm, ..."),
    "serve": ("spear.cli.serve", "app", "Run a SPEARlet or the SMS as a daemon."),
    "nodes": ("spear.cli.cluster", "app", "List the nodes of the cluster."),
    "cluster": ("spear.cli.cluster", "cluster_app", "A development cluster on this machine."),
    "dashboard": ("spear.cli.dashboard", "app", "Print (or open) the web dashboard's URL."),
    "token": ("spear.cli.tokens", "token_app", "Tokens this node accepts: create, ls, rm."),
    "runner": ("spear.cli.runner_cmd", "runner_app", "The warm runner: status, stop."),
    "quota": ("spear.cli.quotas", "quota_app", "Per-namespace quotas: set, ls, rm."),
    "vec": ("spear.cli.vectors", "vec_app", "Vector collections: create, upsert, query, ..."),
    "route": ("spear.cli.routes", "route_app", "HTTP triggers and WebSocket routes: add, ls, rm."),
    "delete": ("spear.cli.retention", "app", "Delete finished tasks: records, logs, results."),
}
_GROUPS = ("obj", "cluster", "token", "runner", "quota", "vec", "route")

HELP = """spear: a serverless runtime for AI agents (WebAssembly modules and processes).

A node that runs tasks is a SPEARlet. `spear run` and the task commands use one in this
process on the data dir, or the daemon serving it (`spear serve`). A cluster is one SMS
(the metadata server: nodes, tasks, the object index) and many SPEARlets (`spear serve
--role sms`, `spear serve --sms HOST:PORT`).

Every command takes --json (one JSON document on stdout) and -h/--help."""


class _Formatter(click.HelpFormatter):
    """Help text as click writes it. typer (0.19) escapes `[` in option help for rich
    whenever rich is installed, even with rich output off: `\\[default: 50]`. Undone here."""

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = [(term, text.replace("\\[", "[")) for term, text in rows]
        super().write_dl(rows, col_max, col_spacing)


class _Context(click.Context):
    formatter_class = _Formatter


def _plain_help(command: click.Command) -> click.Command:
    command.context_class = _Context
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)
    return command


class _LazyGroup(typer.core.TyperGroup):
    context_class = _Context

    """The top-level group: imports a command's module when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = [n for n in super().list_commands(ctx) if n not in _COMMANDS]
        return [*_COMMANDS, *own]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _BUILT:
            return _BUILT[cmd_name]
        if cmd_name not in _COMMANDS or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = _COMMANDS[cmd_name]
        sub: typer.Typer = getattr(importlib.import_module(module), attr)
        command: click.Command
        if cmd_name in _GROUPS:
            command = typer.main.get_group_from_info(
                typer.models.TyperInfo(sub, name=cmd_name),
                pretty_exceptions_short=True,
                rich_markup_mode=None,
            )
        else:
            [info] = [c for c in sub.registered_commands if _name_of(c) == cmd_name]
            command = typer.main.get_command_from_info(
                info, pretty_exceptions_short=True, rich_markup_mode=None
            )
        self.commands[cmd_name] = _BUILT[cmd_name] = _plain_help(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help) for name, (_, _, help) in _COMMANDS.items()]
        for name in self.list_commands(ctx):
            if name not in _COMMANDS:
                command = super().get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit=70)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


# Commands already built from their modules' typer apps (a click command holds no state of
# one invocation): the warm runner builds the short commands once for all its children.
_BUILT: dict[str, click.Command] = {}


def _root_group() -> click.Group:
    """The top-level group, built once (from `app`'s callback and options: ~5 ms)."""
    if "" not in _BUILT:
        _BUILT[""] = typer.main.get_command(app)
    group = _BUILT[""]
    assert isinstance(group, click.Group)
    return group


def build_commands(names: Iterable[str]) -> None:
    """Import and build these commands now (the warm runner, before it forks)."""
    group = _root_group()
    ctx = click.Context(group)
    for name in names:
        group.get_command(ctx, name)


def _name_of(info: typer.models.CommandInfo) -> str:
    assert info.callback is not None
    return info.name or typer.main.get_command_name(info.callback.__name__)


def _print_version(value: bool) -> None:
    if value:
        from spear._version import version

        sys.stdout.write(f"spear {version()}\n")
        raise typer.Exit()


app = typer.Typer(
    name="spear",
    cls=_LazyGroup,
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion [bash|zsh|fish]: typer's (click's underneath)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_print_version,
            help="Print spear's version and exit (`spear version`: its runtime's too).",
        ),
    ] = False,
) -> None:
    pass


@app.command(help="Print spear's version and its runtime's.")
def version(as_json: JsonOpt = False) -> None:
    from spear._version import version
    from spear.runtimes.wasm import wasmtime_version
    from spear.runtimes.wasm.hostcalls.abi import ABI_VERSION

    info = {"spear": version(), "wasmtime": wasmtime_version(), "hostcall_abi": ABI_VERSION}
    if as_json:
        emit_json(info)
    else:
        sys.stdout.write(" ".join(f"{k} {v}" for k, v in info.items()) + "\n")


@app.command(
    help="Print the completion script for SHELL (bash, zsh or fish). Load it with "
    "`source <(spear completion bash)`, or install it where the shell looks: "
    '`spear completion zsh > "${fpath[1]}/_spear"`, '
    "`spear completion fish > ~/.config/fish/completions/spear.fish`. "
    "(`spear --install-completion` does that for the shell you are in.)"
)
def completion(
    shell: Annotated[str, typer.Argument(click_type=choice("bash", "zsh", "fish"))],
) -> None:
    from click.shell_completion import get_completion_class

    # typer registered its completion classes (the ones its completion answers) in click's
    # table while it built the root group with its completion options.
    make = get_completion_class(shell)
    assert make is not None
    root = click.get_current_context().find_root().command
    script = make(root, {}, "spear", "_SPEAR_COMPLETE").source()
    sys.stdout.write(script.strip() + "\n")  # (zsh wants #compdef on the first line)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr for any error, never a traceback (and with
    --json, the error as JSON on stdout too)."""
    try:
        code = _root_group().main(args=argv, prog_name="spear", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _click_exc.NoArgsIsHelpError:
        return 2  # the help text is already printed
    except _click_exc.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _error("usage", exc.format_message(), 2, json_requested(), hint)
    except _click_exc.ClickException as exc:
        return _error("usage", exc.format_message(), exc.exit_code, json_requested())
    except typer.Abort:
        sys.stderr.write("spear: interrupted\n")
        return 130
    except SpearError as exc:
        return _error(exc.code, str(exc), exc.exit_code, json_requested())
    except KeyboardInterrupt:
        sys.stderr.write("spear: interrupted\n")
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:
        from spear.store.diskspace import no_space

        full = no_space(exc)
        if full is not None:
            return _error(full.code, str(full), full.exit_code, json_requested())
        reason = str(exc.strerror or exc)
        where = f"{exc.filename}: " if exc.filename else ""  # (which file, when it is known)
        return _error("io", where + reason, 74, json_requested())


def _error(code: str, message: str, exit_code: int, as_json: bool, hint: str = "") -> int:
    sys.stderr.write(f"spear: error: {message}{hint}\n")
    if as_json:
        emit_json({"error": {"code": code, "message": message, "exit_code": exit_code}})
    return exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
