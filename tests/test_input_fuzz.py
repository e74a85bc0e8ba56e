"""Fuzzing what users hand spear (issue 14, item 6): function specs (as JSON, as a guest's
child request, on the wire), settings files, and the command line's flags.

What must hold: bad input is a spear error (InvalidArgument, exit 64, one line), never
another exception or a traceback; good input round-trips unchanged.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from conftest import cli_env, examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wat_tasks import hello

from spear.config import Settings
from spear.core.models import FunctionSpec
from spear.errors import InvalidArgument, SpearError
from spear.toolkit.subtasks import parse_child
from spear.transport import _convert as cv

if TYPE_CHECKING:
    from pathlib import Path

_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_SPEC_FIELDS = [
    "artifact", "runtime", "args", "env", "dirs", "entry", "resources", "timeout_s",
    "memory_limit_bytes", "fuel", "labels", "workdir", "warm", "cpu_time_s", "open_files",
    "namespace", "max_retries", "retry_on", "priority",
]  # fmt: skip
_PLAUSIBLE = {
    "artifact": st.text(min_size=1, max_size=12),
    "runtime": st.sampled_from(["wasm", "process", "python", ""]),
    "args": st.lists(st.text(max_size=6), max_size=3),
    "env": st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=2),
    "timeout_s": st.one_of(st.floats(-1, 1e6), st.none()),
    "memory_limit_bytes": st.one_of(st.integers(-1, 2**40), st.none()),
    "resources": st.fixed_dictionaries({}, optional={"cpu_millis": st.integers(-5, 5000)}),
    "namespace": st.sampled_from(["default", "team-a", "Bad NS", "-x"]),
    "priority": st.integers(-(2**40), 2**40),
    "max_retries": st.integers(-3, 10),
}


@st.composite
def _spec_json(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in draw(st.lists(st.sampled_from(_SPEC_FIELDS), max_size=8, unique=True)):
        plausible = _PLAUSIBLE.get(field)
        if plausible is not None and draw(st.booleans()):
            out[field] = draw(plausible)
        else:
            out[field] = draw(_JSON)
    if draw(st.booleans()):
        out["artifact"] = draw(_PLAUSIBLE["artifact"])
    return out


def _same(a: FunctionSpec, b: FunctionSpec) -> bool:
    def norm(value: Any) -> Any:
        return "nan" if isinstance(value, float) and math.isnan(value) else value

    return {k: norm(v) for k, v in a.to_json().items()} == {
        k: norm(v) for k, v in b.to_json().items()
    }


@settings(max_examples=examples(300), deadline=None)
@given(data=_spec_json())
def test_a_spec_from_json_is_valid_or_refused_in_one_error(data: dict[str, Any]) -> None:
    try:
        spec = FunctionSpec.from_json(data)
    except InvalidArgument:
        return
    again = FunctionSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert _same(spec, again)
    try:
        wired = cv.spec_from_wire(cv.spec_to_wire(spec))
    except InvalidArgument:
        return  # (the wire refuses what its fields cannot hold, e.g. a negative size)
    assert wired.artifact == spec.artifact and wired.args == spec.args


@settings(max_examples=examples(200), deadline=None)
@given(data=st.one_of(_spec_json(), _JSON))
def test_a_guests_child_request_is_valid_or_refused(data: Any) -> None:
    try:
        request = parse_child(data)
    except InvalidArgument:
        return
    assert isinstance(request.spec, FunctionSpec)


_SETTING_NAMES = [
    "node_name", "cpu_millis", "memory_bytes", "max_concurrent_tasks", "kv_sync",
    "busy_timeout_s", "log_level", "log_format", "task_log_max_bytes", "object_max_bytes",
    "listen", "http_listen", "sms", "insecure", "namespace", "task_log_retention_s",
    "task_retention_s", "task_retention_records", "wasm_memory_max_bytes", "process_warm_spares",
    "process_warm_idle_s", "runner_idle_s", "stream_queue_messages", "unknown_key",
]  # fmt: skip
_TOML_VALUE = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "inf", "nan", "-0.0", "[]", "[1, 'a']", "{a = 1}"]),
    st.text(max_size=10).map(json.dumps),  # a TOML basic string (JSON escapes are TOML's)
)


@st.composite
def _toml(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))  # not even TOML, or not UTF-8
    lines = [
        f"{name} = {draw(_TOML_VALUE)}"
        for name in draw(st.lists(st.sampled_from(_SETTING_NAMES), max_size=6, unique=True))
    ]
    return "\n".join(lines).encode()


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=_toml())
def test_a_settings_file_is_read_or_refused_in_one_error(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(text)
    try:
        loaded = Settings.load(env={"SPEAR_HOME": str(tmp_path / "home")}, config_file=path)
    except InvalidArgument as exc:
        assert "\n" not in str(exc).strip()
        return
    assert loaded.data_dir == tmp_path / "home"


_FLAGS = {
    "--timeout": st.one_of(st.floats(-10, 1e9).map(repr), st.text(max_size=5)),
    "--memory": st.one_of(
        st.sampled_from(["64M", "1GiB", "0", "-1", "1e3", "9" * 30]), st.text(max_size=5)
    ),
    "--fuel": st.one_of(st.integers(-5, 2**70).map(str), st.text(max_size=5)),
    "--env": st.one_of(st.sampled_from(["A=1", "A", "=x", "A=\udcff"]), st.text(max_size=6)),
    "--dir": st.sampled_from(["/tmp", "/nonexistent", "/etc/passwd", "/tmp:/g", "::", ""]),
    "--cpu": st.one_of(st.sampled_from(["1", "0.5", "-1", "500m", "x"]), st.text(max_size=4)),
    "--namespace": st.sampled_from(["default", "team-a", "Bad", ""]),
    "--invoke": st.sampled_from(["_start", "nope", ""]),
    "--priority": st.one_of(st.integers(-(2**40), 2**40).map(str), st.text(max_size=4)),
}


@settings(
    max_examples=examples(12),  # (each a whole `spear run` process)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flags=st.lists(
        st.sampled_from(sorted(_FLAGS)).flatmap(lambda f: _FLAGS[f].map(lambda v: (f, v))),
        max_size=4,
    ),
    args=st.lists(st.text(max_size=6), max_size=2),
)
@example(flags=[("--timeout", "1.2891934942969205e-174")], args=[])  # (a run that times out)
@example(flags=[("--fuel", "1")], args=[])  # (a run that runs out of fuel: 134, as a trap)
@example(flags=[("--memory", "1e3")], args=[])  # (less than the module's one page: a trap)
def test_run_with_random_flags_is_a_run_or_one_error_line(
    tmp_path: Path, flags: list[tuple[str, str]], args: list[str]
) -> None:
    module = hello(tmp_path)
    argv = ["run", *[f"{name}={value}" for name, value in flags], str(module), "--", *args]
    argv = [a.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for a in argv]
    argv = [a.replace("\x00", "") for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "spear", *argv],
        capture_output=True,
        env=cli_env(tmp_path / "home", SPEAR_RUNNER_IDLE_S="0"),
        timeout=60,
    )
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    if proc.returncode == 0:
        assert proc.stdout == b"hello\n"
        return
    assert proc.returncode in (2, 64, 65, 66, 71, 77, 124, 134), (argv, proc.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if proc.returncode == 124:  # a tiny --timeout (1e-174 s) is valid: the task ran out of it
        assert len(lines) == 1 and re.fullmatch(r"spear: task \S+ failed: timeout", lines[0])
        return
    if proc.returncode == 134:  # a small --fuel or --memory is valid: the guest ran out of it
        failed = r"spear: task \S+ failed: (fuel exhausted|trap: .+)"
        assert len(lines) == 1 and re.fullmatch(failed, lines[0]), (argv, err)
        return
    assert len(lines) == 1 and lines[0].startswith("spear: error: "), (argv, err)


def test_the_spear_error_base_covers_what_the_fuzzers_accept() -> None:
    assert issubclass(InvalidArgument, SpearError)
    with pytest.raises(InvalidArgument):
        FunctionSpec.from_json({})
