"""A process task dies with the node that started it (issue 16).

A node killed outright (SIGKILL, the OOM killer) cannot stop its tasks' processes, and
they would run on as orphans: a task the restarted node records lost (and the cluster
may run again elsewhere) would still be running here, and its output would go nowhere.
So each child asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`).

The parent is the thread that started the child: the supervisor's worker thread, which
lives until it has reaped the child (supervisor.py), so a thread that ends never kills a
running task. The request must be made in the child, between fork and exec:
- with limits to apply the child runs Python code there already (`preexec_fn`): the
  `prctl` call is added to it (`in_child`);
- without, subprocess starts the child with vfork, and code run there would cost it that
  fast path (~2 ms -> ~28 ms per spawn from a node with wasmtime loaded): util-linux's
  `setpriv --pdeathsig KILL` asks instead and then execs the task's program (~1 ms more)
  (`wrapped`). Only a program the kernel runs itself (an ELF file, or a script with a
  `#!` line) is wrapped: setpriv's exec would run anything else through /bin/sh, where
  the node refuses it with "cannot execute" (126).
Where neither is available (no prctl in libc, no setpriv) the child starts as before.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


def in_child() -> Callable[[], None] | None:
    """What a `preexec_fn` calls so that the child dies with its parent (None: nothing
    can). Made before forking: the child only calls it."""
    prctl = _prctl()
    if prctl is None:
        return None
    return functools.partial(prctl, _PR_SET_PDEATHSIG, signal.SIGKILL)


def wrapped(argv: Sequence[str]) -> list[str]:
    """`argv` run so that it dies with its parent, without code between fork and exec."""
    setpriv = _setpriv()
    if setpriv is None or not _runs_directly(argv[0]):
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def _runs_directly(program: str) -> bool:
    """Whether the kernel runs `program` itself: an ELF file or a `#!` script."""
    try:
        with open(program, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" or head.startswith(b"#!")
