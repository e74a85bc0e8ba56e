"""The `spear` import module of WASM agents (contract: docs/hostcalls.md).

`abi` holds the conventions (guest memory, -errno results, buffers filled with -ENOSPC and
the needed length) and the registry; each family of calls lives in a module of its own
and registers itself when imported, here.
"""

from __future__ import annotations

import wasmtime

from spear.runtimes.wasm.hostcalls import basic, models, objects, streams  # noqa: F401
from spear.runtimes.wasm.hostcalls import subtasks as _subtasks  # noqa: F401
from spear.runtimes.wasm.hostcalls import tools as _tools  # noqa: F401
from spear.runtimes.wasm.hostcalls import vectors as _vectors  # noqa: F401
from spear.runtimes.wasm.hostcalls.abi import MODULE, REGISTRY, adapt


def define_all(linker: wasmtime.Linker, engine: wasmtime.Engine) -> None:
    """Define every registered hostcall in `linker` under the `spear` module."""
    for defn in REGISTRY.values():
        linker.define_func(
            MODULE,
            defn.name,
            wasmtime.FuncType(list(defn.params), list(defn.results)),
            adapt(defn),
            access_caller=True,
        )


def registered() -> list[str]:
    return sorted(REGISTRY)
