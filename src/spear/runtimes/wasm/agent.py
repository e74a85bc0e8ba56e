"""The WebAssembly worker agent: WASI preview 1 command modules inside this process.

Each task gets its own wasmtime Store on a worker thread (wasmtime releases the GIL while
wasm runs, so tasks run in parallel). Stopping a task that may be in an infinite loop
uses epoch interruption: one ticker thread advances the engine's epoch every few
milliseconds while tasks run, and each store's deadline callback decides, for its own
task, whether to continue, or to trap because the task timed out or was cancelled.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import anyio.to_thread
import wasmtime

from spear.core.models import FunctionSpec, Runtime, TaskState
from spear.core.worker import (
    EXIT_CANCELLED,
    EXIT_TIMEOUT,
    EXIT_TRAP,
    Execution,
    ExecutionControl,
    Outcome,
    TaskContext,
    WorkerAgent,
)
from spear.errors import InvalidArgument, InvalidModule, NotFound
from spear.runtimes.wasm import _wasmtime, held_output, hostcalls, wasmtime_version
from spear.runtimes.wasm.hostcalls import abi
from spear.runtimes.wasm.modcache import ModuleCache, read_module_bytes
from spear.runtimes.wasm.workers import WorkerPool

if TYPE_CHECKING:
    from pathlib import Path

    from spear.core.models import Task

TICK_S = 0.005

HostFunctions = Callable[[wasmtime.Linker, wasmtime.Engine], None]


class _Ticker:
    """Advances the engines' epochs while tasks run, and for `LINGER_S` after the last one.

    Lingering keeps a steady stream of short tasks from waking the ticker thread for each
    one (a thread wake-up costs more than a trivial task); an idle node stops ticking.
    """

    LINGER_S = 2.0

    def __init__(self, engines: Sequence[wasmtime.Engine]) -> None:
        self.engines = engines  # replaced whole (never changed in place) as flavors come
        self._active = 0
        self._last_exit = 0.0
        self._sleeping = False
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="spear-epoch", daemon=True)
                self._thread.start()
            elif self._sleeping:
                self._cond.notify()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._last_exit = time.monotonic()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._stopped
                    and self._active == 0
                    and time.monotonic() - self._last_exit >= self.LINGER_S
                ):
                    self._sleeping = True
                    self._cond.wait()
                    self._sleeping = False
                if self._stopped:
                    return
            time.sleep(TICK_S)
            with self._cond:  # (see `stop`)
                if self._stopped:
                    return
                for engine in self.engines:
                    engine.increment_epoch()

    def stop(self) -> None:
        """No engine is touched once this returns, even if the thread is slow to end: an
        increment still running while the interpreter exits would use an engine being
        freed (a likely cause of the rare abort "panic in a function that cannot unwind"
        at the end of `spear run` under heavy load, not reproduced on demand)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=1)


# A guest may run inline on the event loop (no thread hand-off: a trivial task takes a
# third of the time) once its module's runs proved short: each run within INLINE_SHORT_S
# counts one up (to INLINE_AFTER_RUNS), each longer one down, a move to a thread to zero.
# A guest still running after INLINE_BUDGET_S inline is moved to a thread.
INLINE_AFTER_RUNS = 3
INLINE_SHORT_S = 0.001
INLINE_BUDGET_S = 0.002
# An execution that prefers inline runs (`prefer_inline`: HTTP request mode) runs its
# guest inline without the short-run history, unless the module was moved off the loop
# in its last INLINE_RETRY_AFTER runs.
INLINE_RETRY_AFTER = 32
# What a guest run inline may import: WASI calls that cannot block without preopened
# directories or an inherited stdin (both rule inline out). No sleeping (poll_oneoff), no
# sockets, no spear hostcalls (they reach the event loop, which is busy running it).
_BLOCKING_WASI = frozenset({"poll_oneoff", "sock_accept", "sock_recv", "sock_send"})
_WASI_MODULES = frozenset({"wasi_snapshot_preview1", "wasi_unstable"})


@dataclass(slots=True)
class _Prepared:
    digest: str
    pre: Any  # wasmtime.InstancePre
    module: wasmtime.Module
    plain_entry: bool = False  # the entry takes and returns nothing: called directly
    inline: bool = False  # its imports allow running it inline (see _BLOCKING_WASI)
    short_runs: int = 0  # up with each run under INLINE_SHORT_S, down with each longer
    # Its InstancePre on the flavor's pooled engine, for inline runs (see POOL_SLOTS); None
    # until the module qualifies for inline runs, False if the pool cannot hold it.
    pooled_pre: Any = None
    wasi_only: bool = False  # it imports WASI alone (no spear hostcalls, no host functions)
    skip_inline: int = 0  # runs left before `prefer_inline` tries inline again (after a move)

    def ran(self, seconds: float, moved: bool) -> None:
        if moved:
            self.short_runs = 0
            self.skip_inline = INLINE_RETRY_AFTER
            return
        if self.skip_inline:
            self.skip_inline -= 1
        if seconds >= INLINE_SHORT_S:  # long, or one short run held up (a GC pause)
            self.short_runs = max(0, self.short_runs - 1)
        elif self.short_runs < INLINE_AFTER_RUNS:
            self.short_runs += 1


_MOVED = Outcome(TaskState.RUNNING, 0, "moved to a worker thread")
_NO_HOLD = contextlib.nullcontext()
_COMPLETED = Outcome(TaskState.COMPLETED, 0)


def _may_run_inline(module: wasmtime.Module) -> bool:
    return all(
        imp.module in _WASI_MODULES and imp.name not in _BLOCKING_WASI for imp in module.imports
    )


def _call(prepared: _Prepared, entry: str, store: wasmtime.Store, pre: Any) -> None:
    """Instantiate the prepared module (`pre`: its InstancePre for the store's engine) in
    `store` and call its `entry`: a `() -> ()` one (every WASI command's `_start`) through
    the C API directly (see `_wasmtime.call_plain_entry`)."""
    if prepared.plain_entry:
        _wasmtime.call_plain_entry(store, pre, entry)
    else:
        instance = pre.instantiate(store)
        instance.exports(store)[entry](store)


_LAUNCH: dict[FunctionSpec, _wasmtime.WasiArgs] = {}


def _launch_args(spec: FunctionSpec) -> _wasmtime.WasiArgs:
    """argv and the environment for `spec` as WASI takes them, made once per spec (by value)."""
    hit = _LAUNCH.get(spec)
    if hit is None:
        if len(_LAUNCH) >= 4096:
            _LAUNCH.clear()
        argv = [os.path.basename(spec.artifact), *spec.args]
        hit = _LAUNCH[spec] = _wasmtime.WasiArgs(argv, spec.env)
    return hit


_ARGV: dict[tuple[str, tuple[str, ...]], _wasmtime.WasiArgs] = {}


def _argv_args(spec: FunctionSpec) -> _wasmtime.WasiArgs:
    """argv for `spec` as WASI takes it, without an environment (see `wasi_env`)."""
    key = (spec.artifact, spec.args)
    hit = _ARGV.get(key)
    if hit is None:
        if len(_ARGV) >= 4096:
            _ARGV.clear()
        hit = _ARGV[key] = _wasmtime.WasiArgs([os.path.basename(spec.artifact), *spec.args], ())
    return hit


def _engine_config(fuel: bool) -> wasmtime.Config:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = fuel
    return config


# Inline runs use an engine of their own with wasmtime's pooling allocator: an instance
# reuses a slot made once instead of mapping and unmapping its memory (a trivial guest
# takes a quarter less time). Inline runs are one at a time, so a few slots suffice; a
# guest that does not fit a slot (several memories, a large table) runs on the other.
POOL_SLOTS = 4
_POOL_KEEP_RESIDENT = 64 * 1024  # bytes of a slot's memory kept mapped between guests


def _pooled_engine(fuel: bool) -> wasmtime.Engine:
    config = _engine_config(fuel)
    _wasmtime.enable_pooling_allocator(config, POOL_SLOTS, _POOL_KEEP_RESIDENT)
    return wasmtime.Engine(config)


class _Flavor:
    """An engine with its linker and module cache; fuel metering needs an engine of its own.
    Its pooled engine for inline runs is made when a module first qualifies for them."""

    def __init__(
        self, fuel: bool, cache_dir: Path | None, host_functions: Sequence[HostFunctions]
    ) -> None:
        self.fuel = fuel
        self.engine = wasmtime.Engine(_engine_config(fuel))
        self.pooled: tuple[wasmtime.Engine, wasmtime.Linker] | None = None
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
        default_memory_bytes: int = 0,
    ) -> None:
        """`default_memory_bytes`: a guest's linear-memory cap unless its spec sets one
        (0: wasm's own 4 GiB)."""
        self.default_memory_bytes = default_memory_bytes
        self._cache_dir = cache_dir
        self._host_functions = [hostcalls.define_all, *host_functions]
        self._flavors: dict[bool, _Flavor] = {}
        # task id -> what prepare() checked, and the stat of the file it came from
        self._prepared_for: dict[str, tuple[_Prepared, tuple[int, ...] | None]] = {}
        self._flavor_lock = threading.Lock()
        self._ticker = _Ticker([])
        self._pool = WorkerPool(max_threads, name="spear-wasm")
        self._run_counts = {"inline": 0, "moved": 0, "thread": 0, "pooled": 0}
        self._pooled_live = 0  # pooled stores not yet freed (loop thread only)
        # Running stores' stop checks, by the key their deadline callback is given: one
        # callback serves every store (a ctypes callback costs tens of microseconds to make).
        self._stops: dict[int, _Stop] = {}
        self._stop_keys = itertools.count(1)
        self._on_deadline = _wasmtime.DeadlineCallback(self._deadline)
        # Module files prepared before, by what stat said of them then, and the key of
        # what was prepared from their bytes: a warm run reads no file.
        self._seen_files: dict[tuple[str, str], tuple[tuple[int, ...], str, bool]] = {}

    def _flavor(self, fuel: bool) -> _Flavor:
        with self._flavor_lock:
            flavor = self._flavors.get(fuel)
            if flavor is None:
                flavor = _Flavor(fuel, self._cache_dir, self._host_functions)
                self._flavors[fuel] = flavor
                self._tick_engines()
            return flavor

    def _tick_engines(self) -> None:
        engines = [f.engine for f in self._flavors.values()]
        engines += [f.pooled[0] for f in self._flavors.values() if f.pooled is not None]
        self._ticker.engines = engines

    def _make_pooled(self, flavor: _Flavor, prepared: _Prepared) -> None:
        """Make the prepared module's InstancePre on the flavor's pooled engine (on a
        worker thread: deserializing the compiled module takes a while), or mark that the
        pool cannot hold it."""
        with self._flavor_lock:
            if flavor.pooled is None:
                engine = _pooled_engine(flavor.fuel)
                linker = wasmtime.Linker(engine)
                linker.define_wasi()  # all an inline guest may import
                held_output.define_fd_write(linker)  # (its output: held_output.py)
                flavor.pooled = (engine, linker)
                self._tick_engines()
            engine, linker = flavor.pooled
        try:
            module = wasmtime.Module.deserialize(engine, prepared.module.serialize())
            prepared.pooled_pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError:  # more memories or table entries than a slot holds
            prepared.pooled_pre = False

    @property
    def run_stats(self) -> dict[str, int]:
        """Guests run inline on the event loop, moved from it, and run on threads; and
        of those run inline (moved ones included), how many in a pooled instance."""
        return dict(self._run_counts)

    @property
    def cache_stats(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for flavor in self._flavors.values():
            for key, value in flavor.cache.stats.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def _prepare_sync(self, task: Task) -> tuple[_Prepared, tuple[int, ...] | None]:
        """The prepared module of the task's file, with the file's stat as it was read."""
        spec = task.spec
        for mapping in spec.dirs:
            if not os.path.isdir(mapping.host):
                if os.path.exists(mapping.host):
                    raise InvalidArgument(
                        f"--dir: {mapping.host} is not a directory (--dir maps a directory"
                        " into the guest; to give it one file, map the directory holding it)"
                    )
                raise NotFound(f"--dir: no such directory: {mapping.host}")
        flavor = self._flavor(spec.fuel is not None)
        before = _stat_key(spec.artifact)
        data = read_module_bytes(spec.artifact)
        digest, module = flavor.cache.load(data, os.path.basename(spec.artifact))
        key = f"{digest}:{spec.entry}"
        if before is not None and before == _stat_key(spec.artifact):  # unchanged as read
            if len(self._seen_files) > 4096:
                self._seen_files.clear()
            self._seen_files[(spec.artifact, spec.entry)] = (before, key, spec.fuel is not None)
        with flavor.lock:
            prepared = flavor.prepared.get(key)
        if prepared is not None:
            return prepared, before
        export = next((e for e in module.exports if e.name == spec.entry), None)
        if export is None or not isinstance(export.type, wasmtime.FuncType):
            hint = " (is it a WASI command module?)" if spec.entry == "_start" else ""
            raise InvalidModule(f"{spec.artifact} exports no function {spec.entry!r}{hint}")
        try:
            pre = flavor.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InvalidModule(f"{spec.artifact} cannot be linked: {first}") from None
        plain = not export.type.params and not export.type.results
        prepared = _Prepared(
            digest, pre, module, plain_entry=plain, inline=plain and _may_run_inline(module)
        )
        prepared.wasi_only = all(imp.module in _WASI_MODULES for imp in module.imports)
        with flavor.lock:
            if len(flavor.prepared) > 1024:
                flavor.prepared.clear()
            flavor.prepared[key] = prepared
        return prepared, before

    def _prepared_before(self, task: Task) -> tuple[_Prepared, tuple[int, ...] | None] | None:
        """The prepared module if this file was prepared before, as it was then.

        Nothing is read here: the file's stat is checked just before the run (by the
        worker thread, which prepares it again if it changed in any way; or before
        running it inline, which a changed file rules out).
        """
        spec = task.spec
        if spec.dirs:
            return None
        fuel = spec.fuel is not None
        flavor = self._flavors.get(fuel)
        seen = self._seen_files.get((spec.artifact, spec.entry))
        if flavor is None or seen is None or seen[2] is not fuel:
            return None
        with flavor.lock:
            prepared = flavor.prepared.get(seen[1])
        return None if prepared is None else (prepared, seen[0])

    async def prepare(self, task: Task) -> None:
        prepared = self._prepared_before(task)
        if prepared is None:
            # Compiling is slow and blocking: on a worker thread, like the directory checks.
            prepared = await self._pool.run(functools.partial(self._prepare_sync, task))
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

    def _deadline(self, key: int) -> str | None:
        """A running store's epoch deadline passed: None to go on, or why to stop it."""
        stop = self._stops.get(key)
        if stop is None:
            return None
        if stop.control.cancelled:
            reason = "cancelled"
        elif stop.control.deadline is not None and time.monotonic() >= stop.control.deadline:
            reason = "timeout"
        elif stop.move_after is not None and time.monotonic() >= stop.move_after:
            reason = "move"
        else:
            return None
        stop.reason = reason
        return reason

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)  # guests were told to stop
        self._ticker.stop()


def _stat_key(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(slots=True)
class _Stop:
    control: ExecutionControl
    reason: str | None = None
    move_after: float | None = None  # run inline: stop it to move it past this time


class _WasmExecution(Execution):
    def __init__(
        self,
        agent: WasmWorkerAgent,
        flavor: _Flavor,
        prepared: tuple[_Prepared, tuple[int, ...] | None],
        ctx: TaskContext,
    ) -> None:
        self._agent = agent
        self._flavor = flavor
        self._prepared, self._seen = prepared
        self._ctx = ctx
        self._store: wasmtime.Store | None = None
        self._pooled = False  # its store is one of the pool's (see POOL_SLOTS)
        self._output: tuple[int, int] | None = None  # its guest's route_output keys
        self._token: Any = None
        # Run inline whenever the module allows it (see INLINE_RETRY_AFTER), not only
        # once its runs proved short: for callers that wait on the loop anyway.
        self.prefer_inline = False
        # Its spec is this run's alone (an HTTP request's environment): its WASI
        # arguments are made for it, not kept in the cache of specs (`_launch_args`).
        self.one_off_spec = False
        # The guest's environment as UTF-8 names and values, in place of its spec's `env`
        # (an HTTP request's, encoded by web/_cgi.py's EncodedEnv): set before it runs.
        self.wasi_env: tuple[Sequence[bytes], Sequence[bytes]] | None = None

    def kill(self, reason: str = "cancelled") -> None:
        self._ctx.control.cancel(reason)

    @property
    def wasi_only(self) -> bool:
        """Whether the guest imports WASI alone: it needs nothing of its context but its
        standard streams, environment and limits (HTTP request mode, web/_direct.py)."""
        return self._prepared.wasi_only

    async def wait(self) -> Outcome:
        outcome = self.run_now()
        if outcome is not None:
            return outcome
        self._agent._run_counts["thread"] += 1
        self._token = anyio.lowlevel.current_token()  # where the guest's hostcalls go
        return await self._agent._pool.run(self._run, cleanup=self._cleanup)

    def run_now(self) -> Outcome | None:
        if not self._inline_ok():
            return None
        outcome = self._run(inline=True)
        self._cleanup()
        if outcome is _MOVED:
            self._agent._run_counts["moved"] += 1
            return None
        self._agent._run_counts["inline"] += 1
        return outcome

    def _inline_ok(self) -> bool:
        """Whether to run this guest right here on the event loop (see `_Prepared.inline`):
        a guest that can neither block nor touch anything outside itself, whose last runs
        were all short, and whose module file is as it was prepared."""
        prepared, ctx = self._prepared, self._ctx
        proven = prepared.short_runs >= INLINE_AFTER_RUNS or (
            self.prefer_inline and not prepared.skip_inline and prepared.pooled_pre is not None
        )
        return (
            prepared.inline
            and proven
            and not ctx.task.spec.dirs
            and ctx.io.stdin != "inherit"
            and not ctx.control.cancelled
            and self._seen is not None
            and self._seen == _stat_key(ctx.task.spec.artifact)
        )

    def _configure(
        self,
        store: wasmtime.Store,
        stdin_path: str | None,
        stdout: Callable[[bytes], None],
        stderr: Callable[[bytes], None],
    ) -> None:
        spec = self._ctx.task.spec
        wasi = wasmtime.WasiConfig()
        if self.wasi_env is not None:
            args = _argv_args(spec).with_env(*self.wasi_env)
        elif self.one_off_spec:
            args = _wasmtime.WasiArgs([os.path.basename(spec.artifact), *spec.args], spec.env)
        else:
            args = _launch_args(spec)
        if not _wasmtime.set_wasi_args(wasi, args):
            raise InvalidArgument("the task's arguments or environment cannot be passed")
        for mapping in spec.dirs:
            try:
                wasi.preopen_dir(mapping.host, mapping.guest)
            except wasmtime.WasmtimeError:
                raise InvalidArgument(f"--dir: cannot open {mapping.host}") from None
        io = self._ctx.io
        if not self._pooled:  # (a pooled run's fd_write is held_output's: no WASI stream)
            self._output = _wasmtime.route_output(wasi, stdout, stderr)
        if io.stdin == "inherit":
            wasi.inherit_stdin()
        elif stdin_path is not None:
            wasi.stdin_file = stdin_path
        store.set_wasi(wasi)
        memory = spec.memory_limit_bytes or self._agent.default_memory_bytes
        if memory:
            store.set_limits(memory_size=memory)
        if spec.fuel is not None:
            store.set_fuel(spec.fuel)

    def _run(self, inline: bool = False) -> Outcome:
        """Run the guest to its end: on a worker thread, or `inline` on the event loop.

        Inline, the guest's output is held back until it ends, and a guest still running
        after `INLINE_BUDGET_S` is stopped and `_MOVED` returned: it had no effect outside
        itself (see `_Prepared.inline`), so it starts again from scratch on a worker
        thread, and its module is not run inline again until it proves short again.
        """
        ctx = self._ctx
        control = ctx.control
        if control.cancelled:
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, control.cancel_reason)
        stdin_path = None
        if isinstance(ctx.io.stdin, bytes):
            fd, stdin_path = tempfile.mkstemp(prefix="spear-stdin-")
            with os.fdopen(fd, "wb") as f:
                f.write(ctx.io.stdin)
        agent = self._agent
        if not inline and (self._seen is None or self._seen != _stat_key(ctx.task.spec.artifact)):
            # The module file changed since it was prepared (or cannot be checked).
            self._prepared, self._seen = agent._prepare_sync(ctx.task)
        prepared = self._prepared
        held: list[tuple[Callable[[bytes], None], bytes]] = []
        if inline:
            stdout: Callable[[bytes], None] = lambda data: held.append((ctx.io.stdout, data))  # noqa: E731
            stderr: Callable[[bytes], None] = lambda data: held.append((ctx.io.stderr, data))  # noqa: E731
        else:
            stdout, stderr = ctx.io.stdout, ctx.io.stderr
        pooled = (
            inline and prepared.pooled_pre and agent._pooled_live < POOL_SLOTS
        )  # (inline runs are one at a time: the pool is never short, this only makes sure)
        if pooled:
            store = wasmtime.Store(self._flavor.pooled[0])  # type: ignore[index]
            pre = prepared.pooled_pre
            agent._pooled_live += 1
            agent._run_counts["pooled"] += 1
            self._pooled = True
        else:
            store = wasmtime.Store(self._flavor.engine)
            pre = prepared.pre
        key = next(agent._stop_keys)
        stop = agent._stops[key] = _Stop(control)
        try:
            self._configure(store, stdin_path, stdout, stderr)
            _wasmtime.set_epoch_callback(store, agent._on_deadline, key)
            # (An inline guest imports no hostcall: it needs no task bound to its thread.)
            previous = None if inline else abi.bind(ctx, self._token)
            started = time.monotonic()
            if inline:
                stop.move_after = started + INLINE_BUDGET_S
            try:
                with agent._ticker, held_output.holding(stdout, stderr) if pooled else _NO_HOLD:
                    _call(prepared, ctx.task.spec.entry, store, pre)
                outcome = _COMPLETED
            except wasmtime.ExitTrap as exc:
                code = exc.code
                if code == 0:
                    outcome = _COMPLETED
                elif (why := agent._deadline(key)) in ("cancelled", "timeout"):
                    # It exited on its own, but because it was being stopped (a hostcall
                    # it waited in answered ECANCELED) before the epoch check caught it.
                    outcome = self._failure(exc, why)
                else:
                    outcome = Outcome(TaskState.FAILED, code, f"exit status {code}")
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                outcome = _MOVED if stop.reason == "move" else self._failure(exc, stop.reason)
            finally:
                if previous is not None:
                    abi.bind(*previous)
            prepared.ran(time.monotonic() - started, moved=outcome is _MOVED)
            if (
                not inline
                and prepared.pooled_pre is None
                and prepared.inline
                and (prepared.short_runs >= INLINE_AFTER_RUNS or self.prefer_inline)
            ):  # its next runs are inline: ready its pooled instances here, on the thread
                agent._make_pooled(self._flavor, prepared)
        except BaseException:
            self._store = store
            self._cleanup()
            raise
        finally:
            del agent._stops[key]
            if self._output is not None:
                _wasmtime.unroute_output(self._output)
                self._output = None
            if stdin_path is not None:
                os.unlink(stdin_path)
        if outcome is not _MOVED:
            for sink, data in held:
                sink(data)
        # Freeing the store takes a while: after the outcome is on its way (`_cleanup`).
        self._store = store
        return outcome

    def _cleanup(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
        if self._pooled:
            self._pooled = False
            self._agent._pooled_live -= 1

    def _failure(self, exc: Exception, stop_reason: str | None) -> Outcome:
        control = self._ctx.control
        if stop_reason == "cancelled":
            return Outcome(TaskState.CANCELLED, EXIT_CANCELLED, control.cancel_reason)
        if stop_reason == "timeout":
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
