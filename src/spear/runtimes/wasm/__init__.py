"""The WebAssembly runtime: a worker agent on wasmtime, its module cache, worker threads
and the `spear` hostcall module."""

from __future__ import annotations

import functools


@functools.cache
def wasmtime_version() -> str:
    """The installed wasmtime's version, without importing it (`spear node` needs no
    runtime): it keys the module cache, and nodes report it.

    Read from the name of the `wasmtime-X.Y.Z.dist-info` folder beside the package;
    importlib.metadata gives the same answer but costs ~5 ms to import and search.
    """
    import importlib.util
    import os

    spec = importlib.util.find_spec("wasmtime")
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        try:
            names = os.listdir(site)
        except OSError:
            names = []
        for name in names:
            if name.startswith("wasmtime-") and name.endswith(".dist-info"):
                return name[len("wasmtime-") : -len(".dist-info")]
    import importlib.metadata

    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"
