"""runtimes/wasm/_wasmtime.py: each use of wasmtime's private API does what wasmtime-py's
public one does (or, where it has none, what wasmtime documents), on real modules."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import wasmtime

from spear.runtimes.wasm import _wasmtime

_EXIT = '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'


def _engine(config: wasmtime.Config | None = None) -> wasmtime.Engine:
    config = config or wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def _pre(engine: wasmtime.Engine, wat: str, linker: wasmtime.Linker | None = None) -> Any:
    if linker is None:
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
    return linker.instantiate_pre(wasmtime.Module(engine, wat))


def _store(engine: wasmtime.Engine, wasi: wasmtime.WasiConfig | None = None) -> wasmtime.Store:
    store = wasmtime.Store(engine)
    store.set_wasi(wasi or wasmtime.WasiConfig())
    store.set_epoch_deadline(1_000_000)
    return store


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        call()
    except wasmtime.ExitTrap as exc:
        return "exit", exc.code
    except wasmtime.Trap as exc:
        return "trap", exc.trap_code
    except Exception as exc:
        return type(exc).__name__, str(exc).splitlines()[0]
    return "returned", None


@pytest.mark.parametrize(
    ("body", "ending"),
    [
        ("", ("returned", None)),
        ("(call $exit (i32.const 7))", ("exit", 7)),
        ("unreachable", ("trap", wasmtime.TrapCode.UNREACHABLE)),
        (
            "(drop (i32.div_u (i32.const 1) (i32.const 0)))",
            ("trap", wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO),
        ),
        ("(call $host)", ("ValueError", "from the host")),
    ],
)
def test_a_plain_entry_ends_as_wasmtime_pys_own_call_does(
    body: str, ending: tuple[str, Any]
) -> None:
    engine = _engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    def host() -> None:
        raise ValueError("from the host")

    linker.define_func("env", "host", wasmtime.FuncType([], []), host)
    wat = f"""(module {_EXIT} (import "env" "host" (func $host)) (memory (export "memory") 1)
      (func (export "_start") {body}))"""
    pre = _pre(engine, wat, linker)
    ours = _outcome(lambda: _wasmtime.call_plain_entry(_store(engine), pre, "_start"))

    def public() -> None:
        store = _store(engine)
        pre.instantiate(store).exports(store)["_start"](store)

    assert ours == _outcome(public) == ending


def test_an_entry_that_is_not_there() -> None:
    engine = _engine()
    pre = _pre(engine, '(module (func (export "other")))')
    with pytest.raises(wasmtime.WasmtimeError, match="exports no function '_start'"):
        _wasmtime.call_plain_entry(_store(engine), pre, "_start")


def test_the_guest_sees_the_arguments_and_environment() -> None:
    # The exit status is argv's buffer size * 10 + the environment's.
    wat = f"""(module {_EXIT}
      (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_sizes_get"
        (func $envs (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $args (i32.const 0) (i32.const 4)))
        (drop (call $envs (i32.const 8) (i32.const 12)))
        (call $exit (i32.add (i32.mul (i32.load (i32.const 4)) (i32.const 10))
                             (i32.load (i32.const 12))))))"""
    engine = _engine()
    pre = _pre(engine, wat)
    codes = []
    for argv, env in [(["m", "ab"], [("K", "V")]), (["m"], []), (["prog"], [("AB", "")])]:
        wasi = wasmtime.WasiConfig()
        assert _wasmtime.set_wasi_args(wasi, _wasmtime.WasiArgs(argv, env))
        codes.append(
            _outcome(lambda w=wasi: _wasmtime.call_plain_entry(_store(engine, w), pre, "_start"))
        )
    # "m\0ab\0" and "K=V\0"; "m\0" and nothing; "prog\0" and "AB=\0"
    assert codes == [("exit", 54), ("exit", 20), ("exit", 54)]


def test_the_deadline_callback_decides_at_each_tick() -> None:
    engine = _engine()
    pre = _pre(engine, '(module (func (export "_start") (loop $l (br $l))))')
    seen: list[int] = []

    def decide(key: int) -> str | None:
        seen.append(key)
        return "stopped by the test" if len(seen) >= 3 else None

    callback = _wasmtime.DeadlineCallback(decide)
    store = _store(engine)
    _wasmtime.set_epoch_callback(store, callback, 42)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.001):
            engine.increment_epoch()

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        with pytest.raises(wasmtime.WasmtimeError, match="stopped by the test"):
            _wasmtime.call_plain_entry(store, pre, "_start")
    finally:
        done.set()
        ticker.join()
    assert seen == [42, 42, 42]


def test_the_pooling_allocator_holds_as_many_instances_as_slots() -> None:
    config = wasmtime.Config()
    _wasmtime.enable_pooling_allocator(config, slots=1, keep_resident=4096)
    engine = _engine(config)
    wat = '(module (memory 1) (func (export "_start")))'
    pre = _pre(engine, wat)
    store = _store(engine)
    _wasmtime.call_plain_entry(store, pre, "_start")  # the one slot
    with pytest.raises(wasmtime.WasmtimeError):
        _wasmtime.call_plain_entry(store, pre, "_start")  # the pool has no second
    store.close()
    _wasmtime.call_plain_entry(_store(engine), pre, "_start")  # its slot is free again
    # (an engine without the pool instantiates twice in one store)
    plain = _engine()
    other = _store(plain)
    for _ in range(2):
        _wasmtime.call_plain_entry(other, _pre(plain, wat), "_start")


def test_no_other_module_touches_wasmtimes_private_api() -> None:
    import ast
    from pathlib import Path

    import spear

    root = Path(spear.__file__).parent
    private = {"_ffi", "_func", "_from_ptr", "maybe_raise_last_exn"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_wasmtime.py" or "_gen" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wasmtime"):
                names = [node.module or "", *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("wasmtime.")]
            elif isinstance(node, ast.Attribute) and node.attr in private:
                names = [node.attr]
            elif (  # store._context() (other classes have a `_context` of their own)
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_context"
            ):
                names = ["_context"]
            if any(part.startswith("_") for n in names for part in n.split(".")):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []
    assert (root / "runtimes" / "wasm" / "_wasmtime.py").is_file()
