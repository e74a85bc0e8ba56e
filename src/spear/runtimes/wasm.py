"""The WebAssembly worker agent: WASI preview 1 command modules inside this process.

Each task gets its own wasmtime Store on a worker thread (wasmtime releases the GIL while
wasm runs, so tasks run in parallel). Stopping a task that may be in an infinite loop
uses epoch interruption: one ticker thread advances the engine's epoch every few
milliseconds while tasks run, and each store's deadline callback decides, for its own
task, whether to continue, or to trap because the task timed out or was cancelled.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import wasmtime
from wasmtime import _bindings as _ffi

from spear.core.models import Runtime, TaskState
from spear.errors import InvalidArgument, InvalidModule, NotFound, SpearError
from spear.runtimes import hostcall
from spear.runtimes.base import (
    EXIT_CANCELLED,
    EXIT_TIMEOUT,
    EXIT_TRAP,
    Execution,
    Outcome,
    TaskContext,
    WorkerAgent,
)
from spear.runtimes.modcache import ModuleCache, read_module_bytes

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task

TICK_S = 0.005
_INLINE_MODULE_BYTES = 64 * 1024  # see WasmWorkerAgent._prepared_before

HostFunctions = Callable[[wasmtime.Linker, wasmtime.Engine], None]

_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(_ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(_ffi.wasmtime_update_deadline_kind_t),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer(lambda _p: None)


def wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


class _Ticker:
    """Advances an engine's epoch while at least one task runs; idle otherwise."""

    def __init__(self, engines: Sequence[wasmtime.Engine]) -> None:
        self._engines = engines
        self._active = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="spear-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active == 0 and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
            time.sleep(TICK_S)
            for engine in self._engines:
                engine.increment_epoch()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=1)


@dataclass(slots=True)
class _Prepared:
    digest: str
    pre: Any  # wasmtime.InstancePre


class _Flavor:
    """An engine with its linker and module cache; fuel metering needs an engine of its own."""

    def __init__(
        self, fuel: bool, cache_dir: Path | None, host_functions: Sequence[HostFunctions]
    ) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = fuel
        self.engine = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        for define in host_functions:
            define(self.linker, self.engine)
        fingerprint = f"wasmtime{wasmtime_version()}-epoch{'-fuel' if fuel else ''}"
        self.cache = ModuleCache(self.engine, cache_dir, fingerprint)
        self.prepared: dict[str, _Prepared] = {}
        self.lock = threading.Lock()


class WasmWorkerAgent(WorkerAgent):
    runtime = Runtime.WASM

    def __init__(
        self,
        cache_dir: Path | None,
        host_functions: Sequence[HostFunctions] = (),
        max_threads: int = 64,
    ) -> None:
        self._cache_dir = cache_dir
        self._host_functions = [hostcall.define_all, *host_functions]
        self._flavors: dict[bool, _Flavor] = {}
        self._prepared_for: dict[str, _Prepared] = {}  # task id -> what prepare() checked
        self._flavor_lock = threading.Lock()
        self._ticker = _Ticker([])
        self._limiter = anyio.CapacityLimiter(max_threads)

    def _flavor(self, fuel: bool) -> _Flavor:
        with self._flavor_lock:
            flavor = self._flavors.get(fuel)
            if flavor is None:
                flavor = _Flavor(fuel, self._cache_dir, self._host_functions)
                self._flavors[fuel] = flavor
                self._ticker._engines = [f.engine for f in self._flavors.values()]
            return flavor

    @property
    def cache_stats(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for flavor in self._flavors.values():
            for key, value in flavor.cache.stats.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def _prepare_sync(self, task: Task) -> _Prepared:
        spec = task.spec
        for mapping in spec.dirs:
            if not os.path.isdir(mapping.host):
                raise NotFound(f"--dir: no such directory: {mapping.host}")
        flavor = self._flavor(spec.fuel is not None)
        data = read_module_bytes(spec.artifact)
        digest, module = flavor.cache.load(data, os.path.basename(spec.artifact))
        key = f"{digest}:{spec.entry}"
        with flavor.lock:
            prepared = flavor.prepared.get(key)
        if prepared is not None:
            return prepared
        export = next((e for e in module.exports if e.name == spec.entry), None)
        if export is None or not isinstance(export.type, wasmtime.FuncType):
            hint = " (is it a WASI command module?)" if spec.entry == "_start" else ""
            raise InvalidModule(f"{spec.artifact} exports no function {spec.entry!r}{hint}")
        try:
            pre = flavor.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InvalidModule(f"{spec.artifact} cannot be linked: {first}") from None
        prepared = _Prepared(digest, pre)
        with flavor.lock:
            if len(flavor.prepared) > 1024:
                flavor.prepared.clear()
            flavor.prepared[key] = prepared
        return prepared

    def _prepared_before(self, task: Task) -> _Prepared | None:
        """The prepared module if these exact bytes were prepared before, read inline.

        Only for a small module file and no directories to check: reading and hashing it
        takes microseconds, less than the hop to a worker thread it saves on a warm run.
        """
        spec = task.spec
        flavor = self._flavors.get(spec.fuel is not None)
        if flavor is None or spec.dirs:
            return None
        try:
            if os.stat(spec.artifact).st_size > _INLINE_MODULE_BYTES:
                return None
            data = read_module_bytes(spec.artifact)
        except (OSError, SpearError):
            return None  # the worker thread reports it
        key = f"{hashlib.sha256(data).hexdigest()}:{spec.entry}"
        with flavor.lock:
            return flavor.prepared.get(key)

    async def prepare(self, task: Task) -> None:
        prepared = self._prepared_before(task)
        if prepared is None:
            # Compiling is slow and blocking: on a worker thread, like the directory checks.
            prepared = await anyio.to_thread.run_sync(
                self._prepare_sync, task, limiter=self._limiter
            )
        # start() runs what was checked here, without reading and hashing the file again.
        with self._flavor_lock:
            if len(self._prepared_for) > 100_000:  # tasks prepared but never started
                self._prepared_for.clear()
            self._prepared_for[task.id] = prepared

    async def start(self, ctx: TaskContext) -> Execution:
        with self._flavor_lock:
            prepared = self._prepared_for.pop(ctx.task.id, None)
        if prepared is None:
            prepared = self._prepare_sync(ctx.task)
        flavor = self._flavor(ctx.task.spec.fuel is not None)
        return _WasmExecution(self, flavor, prepared, ctx)

    async def aclose(self) -> None:
        self._ticker.stop()


class _WasmExecution(Execution):
    def __init__(
        self, agent: WasmWorkerAgent, flavor: _Flavor, prepared: _Prepared, ctx: TaskContext
    ) -> None:
        self._agent = agent
        self._flavor = flavor
        self._prepared = prepared
        self._ctx = ctx

    def kill(self, reason: str = "cancelled") -> None:
        self._ctx.control.cancel(reason)

    async def wait(self) -> Outcome:
        return await anyio.to_thread.run_sync(self._run, limiter=self._agent._limiter)

    def _configure(self, store: wasmtime.Store, stdin_path: str | None) -> None:
        spec = self._ctx.task.spec
        wasi = wasmtime.WasiConfig()
        wasi.argv = [os.path.basename(spec.artifact), *spec.args]
        wasi.env = [list(pair) for pair in spec.env]
        for mapping in spec.dirs:
            try:
                wasi.preopen_dir(mapping.host, mapping.guest)
            except wasmtime.WasmtimeError:
                raise InvalidArgument(f"--dir: cannot open {mapping.host}") from None
        io = self._ctx.io
        wasi.stdout_custom = _writer(io.stdout)
        wasi.stderr_custom = _writer(io.stderr)
        if io.stdin == "inherit":
            wasi.inherit_stdin()
        elif stdin_path is not None:
            wasi.stdin_file = stdin_path
        store.set_wasi(wasi)
        if spec.memory_limit_bytes is not None:
            store.set_limits(memory_size=spec.memory_limit_bytes)
        if spec.fuel is not None:
            store.set_fuel(spec.fuel)

    def _run(self) -> Outcome:
        ctx = self._ctx
        control = ctx.control
        if control.cancelled:
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, control.cancel_reason)
        stdin_path = None
        if isinstance(ctx.io.stdin, bytes):
            fd, stdin_path = tempfile.mkstemp(prefix="spear-stdin-")
            with os.fdopen(fd, "wb") as f:
                f.write(ctx.io.stdin)
        store = wasmtime.Store(self._flavor.engine)
        stop_reason: list[str] = []

        def on_deadline(_ctx: Any, _data: Any, delta: Any, kind: Any) -> int:
            if control.cancelled:
                stop_reason.append("cancelled")
            elif control.deadline is not None and time.monotonic() >= control.deadline:
                stop_reason.append("timeout")
            else:
                delta[0] = 1
                kind[0] = 0  # continue
                return 0
            err = _ffi.wasmtime_error_new(ctypes.c_char_p(stop_reason[-1].encode()))
            return ctypes.cast(err, ctypes.c_void_p).value or 0

        callback = _DeadlineCallback(on_deadline)
        try:
            self._configure(store, stdin_path)
            _ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback, None, _NO_FINALIZER)
            store.set_epoch_deadline(1)
            with self._agent._ticker, hostcall.bound(ctx):
                try:
                    instance = self._prepared.pre.instantiate(store)
                    instance.exports(store)[ctx.task.spec.entry](store)
                    return Outcome(TaskState.COMPLETED, 0)
                except wasmtime.ExitTrap as exc:
                    code = exc.code
                    if code == 0:
                        return Outcome(TaskState.COMPLETED, 0)
                    return Outcome(TaskState.FAILED, code, f"exit status {code}")
                except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                    return self._failure(exc, stop_reason)
        finally:
            store.close()
            del callback
            if stdin_path is not None:
                os.unlink(stdin_path)

    def _failure(self, exc: Exception, stop_reason: list[str]) -> Outcome:
        control = self._ctx.control
        if stop_reason and stop_reason[-1] == "cancelled":
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, control.cancel_reason)
        if stop_reason and stop_reason[-1] == "timeout":
            return Outcome(TaskState.FAILED, EXIT_TIMEOUT, "timeout")
        if isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            return Outcome(TaskState.FAILED, EXIT_TRAP, "fuel exhausted")
        return Outcome(TaskState.FAILED, EXIT_TRAP, f"trap: {_trap_message(exc)}")


def _trap_message(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # wasmtime puts the backtrace first and the cause last ("Caused by: ... wasm trap: X").
    for line in reversed(lines):
        if line.startswith("wasm trap:"):
            return line[len("wasm trap:") :].strip()
    for i, line in enumerate(lines):
        if line.startswith("Caused by:") and i + 1 < len(lines):
            return lines[-1].lstrip("0123456789: ")
    return lines[0] if lines else type(exc).__name__


def _writer(sink: Callable[[bytes], None]) -> Callable[[bytes], int]:
    def write(data: bytes) -> int:
        sink(data)
        return len(data)

    return write
