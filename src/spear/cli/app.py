"""The `spear` command line: the typer app, built here from the command modules (each
imports only `_common` and lower layers; none imports this module). Every command is a
thin call into a node or a client.

Exit codes: 0 success; 2 usage error (a bad flag or argument); a spear error's own code
(see errors.py: 64 invalid input, 65 invalid module, 66 not found, 73 storage, ...);
for `spear run`, the guest's own exit code, 124 timeout, 130 cancelled, 134 trap.
"""

from __future__ import annotations

import sys

import typer
from click import exceptions as _click_exc

from spear.cli import cluster, dashboard, objects, run, serve, tasks
from spear.cli._common import JsonOpt, emit_json
from spear.errors import SpearError

app = typer.Typer(
    name="spear",
    help="spear: a serverless runtime for AI agents (WebAssembly modules and processes).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version(as_json: JsonOpt = False) -> None:
    from spear import __version__
    from spear.runtimes.wasm.agent import wasmtime_version
    from spear.runtimes.wasm.hostcalls.abi import ABI_VERSION

    info = {"spear": __version__, "wasmtime": wasmtime_version(), "hostcall_abi": ABI_VERSION}
    if as_json:
        emit_json(info)
    else:
        sys.stdout.write(" ".join(f"{k} {v}" for k, v in info.items()) + "\n")


# Every command is registered here, in the order `spear --help` lists them.
about = typer.Typer()
about.command(help="Print spear's version and its runtime's.")(version)
app.add_typer(run.app)  # run
app.add_typer(tasks.app)  # submit, tasks, status, logs, stop, result, node
app.add_typer(serve.app)  # serve
app.add_typer(cluster.app)  # nodes
app.add_typer(dashboard.app)  # dashboard
app.add_typer(objects.obj_app, name="obj")
app.add_typer(cluster.cluster_app, name="cluster")
app.add_typer(about)  # version


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
