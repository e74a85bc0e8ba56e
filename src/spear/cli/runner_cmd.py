"""`spear runner status|stop`: the warm runner serving a data dir (runner.py)."""

from __future__ import annotations

import sys

import typer

from spear.cli._common import ConfigOpt, DataDirOpt, JsonOpt, emit_json, load_settings

runner_app = typer.Typer(
    help="The warm runner: a background process per data dir that runs the short commands "
    "(run, tasks, status, obj, ...) already started. It stops after runner_idle_s "
    "(SPEAR_RUNNER_IDLE_S, 300 s) without a command; 0 turns it off.",
    no_args_is_help=True,
)


@runner_app.command("status", help="Whether a runner serves the data dir, and its pid.")
def status(data_dir: DataDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    from spear.cli._runner_client import running

    settings = load_settings(data_dir, config)
    pid = running(settings.data_dir)
    if as_json:
        emit_json({"data_dir": str(settings.data_dir), "pid": pid, "running": pid is not None})
    elif pid is None:
        sys.stdout.write(f"no runner serves {settings.data_dir}\n")
    else:
        sys.stdout.write(f"runner {pid} serves {settings.data_dir}\n")


@runner_app.command("stop", help="Stop the runner serving the data dir (if one does).")
def stop(data_dir: DataDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    from spear.cli._runner_client import stop as stop_runner

    settings = load_settings(data_dir, config)
    pid = stop_runner(settings.data_dir)
    if as_json:
        emit_json({"data_dir": str(settings.data_dir), "pid": pid, "stopped": pid is not None})
    elif pid is None:
        sys.stdout.write(f"no runner serves {settings.data_dir}\n")
    else:
        sys.stdout.write(f"stopped runner {pid}\n")
