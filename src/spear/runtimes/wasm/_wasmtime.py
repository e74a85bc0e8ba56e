"""What spear needs of wasmtime beyond wasmtime-py's public API: the only module that
touches its private parts, so a wasmtime upgrade is checked here (pyproject pins
`wasmtime>=50,<51`; tests/runtimes/test_wasmtime_private.py exercises every function).

Each function exists because the public way was measured too slow or is missing:

- `call_plain_entry`: instantiate and call a `() -> ()` export (every WASI command's
  `_start`) straight through the C API. wasmtime-py's wrappers (export maps, parameter
  checks) cost several times what instantiating and running a trivial module does.
- `set_wasi_args`: argv and environment from C arrays made once per task spec
  (`wasi_args`); `WasiConfig.argv`/`.env` build them again for every task.
- `DeadlineCallback` / `set_epoch_callback`: a store's epoch-deadline callback, which
  decides on each tick whether its guest goes on or traps (timeout, cancel, or a move
  off the event loop). wasmtime-py has no binding for it.
- `enable_pooling_allocator`: wasmtime's pooling instance allocator, which wasmtime-py's
  `Config` does not expose.
- `route_output` / `unroute_output`: a guest's stdout and stderr to Python sinks.
  wasmtime-py's `stdout_custom` hands wasmtime a finalizer written in Python, which
  wasmtime calls from one of its tokio threads a little after the store is gone.

No C callback here has a finalizer (each is given NULL). wasmtime may run a finalizer on a
thread of its own; one in Python that runs after the interpreter began to exit is ended by
Python with `pthread_exit`, whose unwinding through Rust aborts the whole process ("panic
in a function that cannot unwind"). So nothing enters Python from wasmtime's threads once
a run is over.

Private names relied on (wasmtime-py 50):
- `wasmtime._ffi`: `wasmtime_context_t`, `wasmtime_update_deadline_kind_t`,
  `wasm_trap_t`, `wasmtime_instance_t`, `wasmtime_extern_t`, `WASMTIME_EXTERN_FUNC`,
  `wasmtime_instance_pre_instantiate`, `wasmtime_instance_export_get`,
  `wasmtime_func_call`, `wasmtime_error_new`, `wasi_config_set_argv`,
  `wasi_config_set_env`, `wasi_config_set_{stdout,stderr}_custom`,
  `wasmtime_store_epoch_deadline_callback`,
  `wasmtime_context_set_epoch_deadline`,
  `wasmtime_pooling_allocation_config_{new,delete}`, its `..._{total_core_instances,
  total_memories,total_tables,total_stacks,linear_memory_keep_resident,
  table_keep_resident}_set`, and `wasmtime_pooling_allocation_strategy_set`;
- `wasmtime._func.maybe_raise_last_exn` (re-raises a host function's exception, as
  wasmtime-py's own calls do);
- `Store._context()`, `WasmtimeError._from_ptr`, `Trap._from_ptr`; and `.ptr()` of
  `Store`, `InstancePre`, `WasiConfig` and `Config` (public names, but wasmtime-py's own
  plumbing: its `Managed` base class says it is not exported).
"""

from __future__ import annotations

import array
import ctypes
import errno
import itertools
from typing import TYPE_CHECKING, Any, cast

import wasmtime
from wasmtime import _ffi
from wasmtime import _func as _wasm_func

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# -- calling an entry --------------------------------------------------------------------


def call_plain_entry(store: wasmtime.Store, instance_pre: Any, entry: str) -> None:
    """Instantiate `instance_pre` (a `wasmtime.InstancePre` for the store's engine) in
    `store` and call its export `entry`, which takes and returns nothing.

    Errors surface exactly as wasmtime-py raises them (its `enter_wasm`): `ExitTrap`,
    `Trap`, `WasmtimeError`, or the exception a host function raised.
    """
    context = store._context()
    trap = ctypes.POINTER(_ffi.wasm_trap_t)()
    raw = _ffi.wasmtime_instance_t()
    _check(
        _ffi.wasmtime_instance_pre_instantiate(
            instance_pre.ptr(), context, ctypes.byref(raw), ctypes.byref(trap)
        ),
        trap,
    )
    name = entry.encode()
    item = _ffi.wasmtime_extern_t()
    found = _ffi.wasmtime_instance_export_get(
        context, ctypes.byref(raw), name, len(name), ctypes.byref(item)
    )
    if not found or cast("int", item.kind) != _ffi.WASMTIME_EXTERN_FUNC.value:
        raise wasmtime.WasmtimeError(f"the module exports no function {entry!r}")
    _check(
        _ffi.wasmtime_func_call(
            context, ctypes.byref(item.of.func), None, 0, None, 0, ctypes.byref(trap)
        ),
        trap,
    )


def _check(error: Any, trap: Any) -> None:
    if error:
        exc = wasmtime.WasmtimeError._from_ptr(error)
        _wasm_func.maybe_raise_last_exn()
        raise exc
    if trap:
        trap_obj = wasmtime.Trap._from_ptr(trap)
        _wasm_func.maybe_raise_last_exn()
        raise trap_obj


# -- WASI arguments ----------------------------------------------------------------------


class WasiArgs:
    """argv and environment as the C arrays WASI takes: make once, set on many configs."""

    __slots__ = ("_argv", "_env", "_keep")

    def __init__(self, argv: Sequence[str], env: Sequence[tuple[str, str]]) -> None:
        keep: list[Any] = []  # the strings live as long as the arrays
        self._argv = (len(argv), _char_arrays([argv], keep)[0])
        names, values = _char_arrays([[k for k, _ in env], [v for _, v in env]], keep)
        self._env = (len(env), names, values)
        self._keep = keep

    def with_env(self, names: Sequence[bytes], values: Sequence[bytes]) -> WasiArgs:
        """These arguments with an environment of UTF-8 `names` and `values` (no NUL in
        any), made without encoding a string: an HTTP request's, per request."""
        new = WasiArgs.__new__(WasiArgs)
        keep: list[Any] = [self._keep]
        new._argv = self._argv
        new._env = (len(names), *_encoded_arrays(names, values, keep))
        new._keep = keep
        return new


_CHAR_PP = ctypes.POINTER(ctypes.POINTER(ctypes.c_char))


def _char_arrays(lists: Sequence[Sequence[str]], keep: list[Any]) -> list[Any]:
    """Each list of strings as a C `char **`: one buffer of NUL-terminated strings for
    all of them and one array of addresses each (a buffer and a cast per string cost
    several times more, and an HTTP request's environment has many)."""
    encoded = [[item.encode() for item in items] for items in lists]
    blob = ctypes.create_string_buffer(b"\0".join(b"\0".join(e) for e in encoded if e))
    keep.append(blob)
    address = ctypes.addressof(blob)
    out = []
    for items in encoded:
        offsets = array.array("Q", bytes(8 * len(items)))
        for i, item in enumerate(items):
            offsets[i] = address
            address += len(item) + 1
        if not items:
            out.append(_CHAR_PP())
            continue
        pointers = (ctypes.c_void_p * len(items)).from_buffer(offsets)
        keep.extend((offsets, pointers))
        out.append(ctypes.cast(pointers, _CHAR_PP))
    return out


_CHAR_P = ctypes.POINTER(ctypes.c_char)


def _encoded_arrays(names: Sequence[bytes], values: Sequence[bytes], keep: list[Any]) -> Any:
    """`names` and `values` as two C `char **` over one buffer: the addresses are sums
    of lengths (`accumulate`) in one array of `char *`, which ctypes takes for a `char **`
    without a cast (its two halves, by address: `from_buffer` costs more)."""
    count = len(names)
    if not count:
        return _CHAR_PP(), _CHAR_PP()
    items = (*names, *values)
    blob = ctypes.create_string_buffer(b"\0".join(items))
    starts = array.array(
        "Q", itertools.accumulate([len(x) + 1 for x in items], initial=ctypes.addressof(blob))
    )
    keep += (blob, starts)
    half = _POINTER_ARRAYS.get(count)
    if half is None:
        half = _CHAR_P * count
        if count <= 1024:
            _POINTER_ARRAYS[count] = half
    at = starts.buffer_info()[0]
    return half.from_address(at), half.from_address(at + 8 * count)


_POINTER_ARRAYS: dict[int, Any] = {}  # count -> the ctypes type `char *[count]`


def set_wasi_args(wasi: wasmtime.WasiConfig, args: WasiArgs) -> bool:
    """Give `wasi` the arguments and environment; False if wasmtime refused them."""
    if not _ffi.wasi_config_set_argv(wasi.ptr(), *args._argv):
        return False
    return not args._env[0] or bool(_ffi.wasi_config_set_env(wasi.ptr(), *args._env))


# -- epoch deadlines ---------------------------------------------------------------------

_RawDeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(_ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(_ffi.wasmtime_update_deadline_kind_t),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer()  # (NULL: see the module's docstring)
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


class DeadlineCallback:
    """One epoch-deadline callback for many stores, told apart by the key each was given.

    `decide(key)` runs on the guest's thread at each epoch tick past the store's deadline:
    None lets the guest run one more tick; a string traps it with that message. Keep one
    per agent: making the C callback costs tens of microseconds.
    """

    def __init__(self, decide: Callable[[int], str | None]) -> None:
        def on_deadline(_context: Any, key: Any, delta: Any, kind: Any) -> int:
            reason = decide(key or 0)
            if reason is None:
                delta[0] = 1
                kind[0] = _CONTINUE
                return 0
            err = _ffi.wasmtime_error_new(ctypes.c_char_p(reason.encode()))
            return ctypes.cast(err, ctypes.c_void_p).value or 0

        self._raw = _RawDeadlineCallback(on_deadline)


def set_epoch_callback(store: wasmtime.Store, callback: DeadlineCallback, key: int) -> None:
    """Have `callback` decide, with `key`, whether `store`'s guest goes on at each epoch
    tick, starting from the next one."""
    _ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback._raw, key, _NO_FINALIZER)
    _ffi.wasmtime_context_set_epoch_deadline(store._context(), 1)  # store.set_epoch_deadline(1)


# -- the pooling allocator ---------------------------------------------------------------


def enable_pooling_allocator(config: wasmtime.Config, slots: int, keep_resident: int) -> None:
    """Use wasmtime's pooling instance allocator with `slots` instances, memories, tables
    and stacks, keeping `keep_resident` bytes of each memory and table mapped between uses."""
    pool = _ffi.wasmtime_pooling_allocation_config_new()
    try:
        for limit in ("total_core_instances", "total_memories", "total_tables", "total_stacks"):
            getattr(_ffi, f"wasmtime_pooling_allocation_config_{limit}_set")(pool, slots)
        _ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pool, keep_resident)
        _ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, keep_resident)
        _ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)  # (copied)
    finally:
        _ffi.wasmtime_pooling_allocation_config_delete(pool)


# -- guest output ------------------------------------------------------------------------

_OutputCallback = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_size_t
)
_sinks: dict[int, Callable[[bytes], object]] = {}
_sink_keys = itertools.count(1)


def _on_output(key: Any, data: Any, size: int) -> int:
    # On a tokio thread of wasmtime's, inside the guest's fd_write, which waits for it.
    sink = _sinks.get(key or 0)
    if sink is None:
        return -errno.EIO
    try:
        sink(ctypes.string_at(data, size))
    except Exception:
        return -errno.EIO
    return size


_ON_OUTPUT = _OutputCallback(_on_output)


def route_output(
    wasi: wasmtime.WasiConfig, stdout: Callable[[bytes], object], stderr: Callable[[bytes], object]
) -> tuple[int, int]:
    """Send the guest's stdout and stderr to `stdout` and `stderr` (called on wasmtime's
    threads, each write whole) until `unroute_output` is given the keys returned. A write
    after that, which WASI never makes once the guest has returned, fails with EIO."""
    keys = next(_sink_keys), next(_sink_keys)
    _sinks[keys[0]], _sinks[keys[1]] = stdout, stderr
    _ffi.wasi_config_set_stdout_custom(wasi.ptr(), _ON_OUTPUT, keys[0], _NO_FINALIZER)
    _ffi.wasi_config_set_stderr_custom(wasi.ptr(), _ON_OUTPUT, keys[1], _NO_FINALIZER)
    return keys


def unroute_output(keys: tuple[int, int]) -> None:
    """Forget the sinks `route_output` gave `keys`: call once the guest has returned."""
    for key in keys:
        _sinks.pop(key, None)


# -- raw host functions ------------------------------------------------------------------

_ADDRESS = ctypes.c_void_p
_kept: list[Any] = []  # the C callbacks of raw functions, alive as long as the process
_MEMORY = b"memory"


def define_raw_function(
    linker: wasmtime.Linker, module: str, name: str, params: int, fn: Callable[..., int]
) -> None:
    """Define `module.name`, `(i32 x params) -> i32`, in `linker`, calling `fn(base, size,
    *args)` with the caller's exported memory as its address and size (0, 0 without one)
    and the arguments as unsigned ints; its result is the function's.

    Through the C API's unchecked callback: wasmtime-py's `define_func` trampoline (its
    value conversions, a Caller and an Extern object per call) costs several times what a
    small host function does. `fn` must not raise: an exception is the result 29 (EIO).
    """
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32] * params, [i32])

    def callback(_env: Any, caller: Any, raw: Any, _count: int) -> int:
        try:
            item = _ffi.wasmtime_extern_t()
            base = size = 0
            if _ffi.wasmtime_caller_export_get(caller, _MEMORY, len(_MEMORY), ctypes.byref(item)):
                if cast("int", item.kind) == _ffi.WASMTIME_EXTERN_MEMORY.value:
                    context = _ffi.wasmtime_caller_context(caller)
                    memory = ctypes.byref(item.of.memory)
                    data = _ffi.wasmtime_memory_data(context, memory)
                    # (the pointer's value read by address: `ctypes.cast` makes a cycle)
                    base = _ADDRESS.from_address(ctypes.addressof(data)).value or 0
                    size = _ffi.wasmtime_memory_data_size(context, memory)
            args = [raw[i].i32 & 0xFFFFFFFF for i in range(params)]
            raw[0].i32 = fn(base, size, *args)
        except Exception:
            raw[0].i32 = 29
        return 0  # (no trap)

    raw_callback = _ffi.wasmtime_func_unchecked_callback_t(callback)
    _kept.append(raw_callback)
    m, n = module.encode(), name.encode()
    error = _ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), m, len(m), n, len(n), ty.ptr(), raw_callback, None, _NO_FINALIZER
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


__all__ = [
    "DeadlineCallback",
    "WasiArgs",
    "call_plain_entry",
    "define_raw_function",
    "enable_pooling_allocator",
    "route_output",
    "set_epoch_callback",
    "set_wasi_args",
    "unroute_output",
]
