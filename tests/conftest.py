"""Shared fixtures: real wasm modules built from C or WAT, real data dirs, the real CLI."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import wasmtime
from hypothesis import settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent

# `pytest --hypothesis-profile=mutation` (nox -s mutation): each mutant reruns the property
# tests, so fewer examples, and no deadline (a loaded machine is not a failure).
settings.register_profile("mutation", max_examples=20, deadline=None)
# The default run: no deadline either. Its workers share the machine's cores, and an
# example that waits for one is not a failure (hypothesis's 200 ms deadline made the
# property tests flaky on 4 workers under load). And the same examples every run
# (derandomize): a run, CI's among them, fails or passes on the code, not on the draw (a
# random draw once failed CI on an example no run before had tried). New examples are
# sought with `--hypothesis-profile=explore` (docs/testing.md, "Fuzzing").
settings.register_profile("spear", deadline=None, derandomize=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile("spear")


def examples(n: int) -> int:
    """How many examples a property test draws: its own `n` in the default profile's fixed
    draw, the explorer's count (at least `n`) under `--hypothesis-profile=explore` (an
    explicit `max_examples` would otherwise override any profile's)."""
    current = settings.default
    return n if current.derandomize else max(n, current.max_examples)


# Every `spear` a test starts runs its command in its own process: no warm runner (cli/
# runner.py) is left behind by a test; tests/test_cli_runner.py starts its own.
os.environ["SPEAR_RUNNER_IDLE_S"] = "0"
# Under mutation testing (tools/mutation.py sets SPEAR_MUTATION_RUN) a test stopped by
# pytest-timeout is a hang, not an assertion: the run exits as mutmut's "timeout" (the
# status of SIGXCPU, 128 + 24), so a mutant noticed only by hanging is not counted killed.
_MUTATION_RUN = bool(os.environ.get("SPEAR_MUTATION_RUN"))
_MUTMUT_TIMEOUT_EXIT = 152


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    if _MUTATION_RUN and call.excinfo is not None:
        if str(call.excinfo.value).startswith("Timeout (>"):
            os._exit(_MUTMUT_TIMEOUT_EXIT)


# Tests that run the local model (SmolLM2 through llama.cpp, in process or behind its own
# server) take most of a core for seconds each, and a tool loop's sampled answers can take
# minutes: they run in CI's second job (`-m "chaos or browser or model"`), with the other
# slow suites, and the default run keeps its ten minutes.
_MODEL_FIXTURES = {"gguf", "model_server", "local_model"}


@pytest.hookimpl(tryfirst=True)  # (before `-m` deselects)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


_BUILD_CACHE = Path(os.environ.get("SPEAR_TEST_BUILD_DIR", "/tmp/spear-test-build"))


def build_c(source: Path, *extra: str) -> Path:
    """Compile a C file to a wasm32-wasi command module (cached by source hash)."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang missing: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32")
    digest = hashlib.sha256(source.read_bytes() + " ".join(extra).encode()).hexdigest()[:16]
    out = _BUILD_CACHE / f"{source.stem}-{digest}.wasm"
    if not out.exists():
        _BUILD_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [
            clang,
            "--target=wasm32-wasi",
            "-O2",
            "-I",
            str(ROOT / "sdk" / "c"),
            "-o",
            str(tmp),
            str(source),
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"building {source.name} failed:\n{proc.stderr}")
        tmp.replace(out)
    return out


def build_wat(text: str, directory: Path, name: str = "module") -> Path:
    path = directory / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(text))
    return path


@pytest.fixture(scope="session")
def hello_wasm() -> Path:
    return build_c(ROOT / "examples" / "hello" / "hello.c")


@pytest.fixture(scope="session")
def conformance_wasm() -> Path:
    return build_c(ROOT / "tests" / "wasm" / "conformance.c")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "spear-home"


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    env["SPEAR_HOME"] = str(data_dir)
    env["SPEAR_RUNNER_IDLE_S"] = "0"
    # The user's settings file ($XDG_CONFIG_HOME/spear/config.toml) is the test's own.
    env["XDG_CONFIG_HOME"] = str(data_dir.with_name(data_dir.name + "-xdg-config"))
    env.update(extra)
    return env


class Cli:
    """Runs the real `spear` executable (python -m spear) against one data dir."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.env = env  # for every command it runs

    def __call__(
        self, *args: str, input: bytes | None = None, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "spear", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=cli_env(self.data_dir, **{**self.env, **env}),
        )

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "spear", *args],
            env=cli_env(self.data_dir, **self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,
        )

    def json(self, *args: str) -> Any:
        proc = self(*args, "--json")
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout)


@pytest.fixture
def cli(data_dir: Path) -> Cli:
    return Cli(data_dir)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60
) -> int:
    """Signal a daemon and wait for its exit code; killed if it outlives `timeout`, and
    its pipes closed either way."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def assert_eventually(
    check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `check` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("spear: error: "), text
    return lines[0]


@pytest.fixture(scope="module")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real etcd (Debian's etcd-server) on loopback for one test module: its HOST:PORT.

    Tests share it and keep apart by namespace (EtcdKV.connect(..., namespace=...)). Module
    scope, not session: tests elsewhere check that the test process has no child left.
    """
    from spear.store.etcd_server import EtcdProcess

    etcd = EtcdProcess(tmp_path_factory.mktemp("etcd"))
    etcd.start()
    try:
        yield etcd.endpoint
    finally:
        etcd.stop()


def load_tool(name: str) -> Any:
    """A script of tools/ as a module (the protos generators)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_same_tree(fresh: Path, committed: Path) -> None:
    """`committed` holds exactly the files of `fresh`, byte for byte (generated code)."""
    import filecmp

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    assert files(fresh) == files(committed), "run `nox -s protos` and commit the result"
    stale = [
        name
        for name in sorted(files(fresh))
        if not filecmp.cmp(fresh / name, committed / name, shallow=False)
    ]
    assert not stale, f"stale generated files {stale}: run `nox -s protos` and commit them"


@contextlib.contextmanager
def fifo_giving(path: Path, data: bytes) -> Iterator[Path]:
    """A FIFO at `path` that gives `data` to its first reader (read here at the end if
    nobody did: its writer's open waits for a reader)."""
    os.mkfifo(path)
    writer = threading.Thread(target=path.write_bytes, args=(data,))
    writer.start()
    try:
        yield path
    finally:
        if writer.is_alive():
            with path.open("rb") as unblock:
                unblock.read()
        writer.join()
