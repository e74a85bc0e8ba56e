"""The `spear` command (console script `spear = "spear.cli:entry"`); app.py builds it.

`main` first offers the command to the warm runner serving the data dir (runner.py), which
runs it in a child it forks, already warm; otherwise the command runs in this process.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from spear.cli import _runner_client

    args = sys.argv[1:] if argv is None else argv
    code = _runner_client.forward(args)
    if code is not None:
        return code
    from spear.cli.app import main as run_here

    code = run_here(args)
    if args and args[0] in _runner_client.FORWARDED and _runner_client.mode() != "off":
        from spear.cli import runner

        runner.start(args)
    return code


def entry() -> None:
    """The `spear` executable (console script and `python -m spear`): `main`, then, for a
    command the warm runner forwards, the same ending as the runner's child: atexit
    handlers run, stdout and stderr flushed, `os._exit`. No interpreter teardown follows
    a task's run: a daemon thread still inside wasmtime while the interpreter finalizes
    can abort the process ("thread caused non-unwinding panic", exit -6 instead of the
    task's code; seen rarely under heavy load at the end of `spear run`)."""
    import os

    # grpc's core logs at INFO on stderr (a server's GOAWAY, say) unless told otherwise:
    # a command's stderr is its own one-line errors. Set by the executable, not on import.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = sys.argv[1:]
    code = main(args)
    from spear.cli import _runner_client

    if args and args[0] in _runner_client.FORWARDED:
        import atexit
        import contextlib

        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # (a reader gone: nothing more to say)
                stream.flush()
        os._exit(code)
    sys.exit(code)


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, for tests and documentation tools
        from spear.cli.app import app

        return app
    raise AttributeError(name)


__all__ = ["app", "entry", "main"]
