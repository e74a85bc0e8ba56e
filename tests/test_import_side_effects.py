"""Importing spear changes nothing global: no patches of other libraries, no sys.path
edits, no signal handlers, warning filters or logging handlers installed.

Each check runs in a fresh interpreter, so what other tests started cannot hide a change.
"""

from __future__ import annotations

import json
import subprocess
import sys

_SNAPSHOT = r"""
import asyncio, json, logging, os, signal, sys, threading, warnings
import loguru

def snapshot():
    return {
        "sys.path": list(sys.path),
        "meta_path": [type(f).__name__ for f in sys.meta_path],
        "signals": {
            s.name: repr(signal.getsignal(s))
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE)
        },
        "warnings": len(warnings.filters),
        "logging": [repr(h) for h in logging.getLogger().handlers],
        "environ": dict(os.environ),
        "loop_policy": type(asyncio.get_event_loop_policy()).__name__,
        "excepthooks": [repr(sys.excepthook), repr(threading.excepthook)],
        "loguru_handlers": len(loguru.logger._core.handlers),
    }

before = snapshot()
import importlib, pkgutil, spear
names = [
    m.name
    for m in pkgutil.walk_packages(spear.__path__, "spear.")
    if ".__main__" not in m.name and m.name not in SKIP
]
for name in names:
    importlib.import_module(name)
for name in spear.__all__:
    getattr(spear, name)
after = snapshot()
changed = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
print(json.dumps({"imported": len(names), "changed": changed}))
"""

# The embedded model imports llama.cpp (optional).
_SKIP = {"spear.models.llama"}


def test_importing_every_module_changes_nothing_global() -> None:
    code = f"SKIP = {sorted(_SKIP)!r}\n{_SNAPSHOT}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["imported"] > 60  # the walk really reached the package's modules
    assert report["changed"] == {}


def test_the_daemons_and_clients_load_one_grpc_stack() -> None:
    """grpc.aio is spear's one gRPC stack (issue 17, item 6): the node's and the SMS's
    servers, the node's client and the CLI load no grpclib (nor its h2 libraries)."""
    code = (
        "import sys, spear.cli, spear.cli.app, spear.cli.serve, spear.node.server, "
        "spear.node.client, spear.node.peer, spear.transport.sms_server, "
        "spear.transport.sms_client, spear.store.etcd; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpclib', 'h2', 'hyperframe', 'hpack')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_spear_executable_quiets_grpc_core_logs_and_importing_spear_does_not() -> None:
    """grpc's core writes INFO lines (a server's GOAWAY) on stderr by default; a `spear`
    command's stderr is its own one-line errors, so the executable sets GRPC_VERBOSITY
    (unless the user did), and `import spear` changes no environment."""
    import os

    script = (
        "import os, sys\n"
        "import spear, spear.cli\n"
        "print(os.environ.get('GRPC_VERBOSITY'))\n"
        "sys.argv = ['spear', '--help']\n"
        "try:\n"
        "    spear.cli.entry()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('GRPC_VERBOSITY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out[0] == "None" and out[-1] == "ERROR", out
    env["GRPC_VERBOSITY"] = "DEBUG"  # the user's own choice stands
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out[-1] == "DEBUG", out
