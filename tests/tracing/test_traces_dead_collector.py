"""A collector that is down costs `spear run` one clear warning line on stderr, not
OpenTelemetry's retry messages; and only the `opentelemetry` loggers are touched, only
when tracing is set up."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from wat_tasks import hello as hello_wasm

from spear.tracing.setup import build_tracing

if TYPE_CHECKING:
    from pathlib import Path


def _dead_port() -> int:
    with socket.socket() as s:  # bound and closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_spear_run_with_a_dead_collector_warns_once_in_one_line(tmp_path: Path) -> None:
    hello = hello_wasm(tmp_path)
    env = {
        **os.environ,
        "SPEAR_TRACE_OTLP_ENDPOINT": f"http://127.0.0.1:{_dead_port()}",
        "SPEAR_DATA_DIR": str(tmp_path / "home"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "spear", "run", str(hello)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n"
    lines = proc.stderr.splitlines()
    warnings = [line for line in lines if "traces cannot be exported" in line]
    assert len(warnings) == 1, proc.stderr
    assert "Transient error" not in proc.stderr and "Traceback" not in proc.stderr


def test_only_the_opentelemetry_loggers_get_a_handler_and_only_at_setup() -> None:
    otel = logging.getLogger("opentelemetry")
    before = list(otel.handlers)
    root = list(logging.getLogger().handlers)
    import spear.tracing.sdk_logs  # noqa: F401  (importing it changes nothing)

    assert otel.handlers == before
    first = build_tracing(f"http://127.0.0.1:{_dead_port()}", "n")
    second = build_tracing(f"http://127.0.0.1:{_dead_port()}", "m")
    assert first is not None and second is not None
    first.shutdown()
    second.shutdown()
    ours = [h for h in otel.handlers if type(h).__name__ == "_ToSpearLog"]
    assert len(ours) == 1  # one handler, however many nodes set tracing up
    assert [h for h in otel.handlers if h not in before] in ([], ours)
    assert logging.getLogger().handlers == root  # nothing else touched
    assert logging.getLogger("opentelemetry.exporter").handlers == []
