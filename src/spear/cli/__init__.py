"""The `spear` command (console script `spear = "spear.cli:main"`); app.py builds it.

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


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, for tests and documentation tools
        from spear.cli.app import app

        return app
    raise AttributeError(name)


__all__ = ["app", "main"]
