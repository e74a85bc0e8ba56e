"""HTTP routes in request mode (`spear route add --mode request`) on a real `spear serve`:
the guest runs in the node's process without a task; what is kept of each request is in
memory, looked up by its request id (docs/triggers.md#request-mode)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
import pytest
from conftest import ROOT, Cli, assert_eventually, build_c, build_wat, one_error_line
from web_helpers import WebDaemon

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HELLO_HTTP = ROOT / "examples" / "http" / "hello_http.c"
_WRITE = """
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $out (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $w (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))"""
# "Content-Type: text/plain", a blank line, "ok": WASI alone, short: it runs inline.
TINY = f"""(module {_WRITE}
  (data (i32.const 64) "Content-Type: text/plain\\n\\nok\\n")
  (func (export "_start") (call $out (i32.const 1) (i32.const 64) (i32.const 29))))"""
# Says why on stderr, then exits 3.
FAILS = f"""(module {_WRITE}
  (data (i32.const 64) "the database is gone\\n")
  (func (export "_start")
    (call $out (i32.const 2) (i32.const 64) (i32.const 21)) (call $exit (i32.const 3))))"""
# Imports a spear hostcall: it cannot run without a task, so it runs as one.
HOSTCALL = f"""(module
  (import "spear" "abi_version" (func $abi (result i32))) {_WRITE}
  (data (i32.const 64) "ok\\n")
  (func (export "_start")
    (drop (call $abi)) (call $out (i32.const 1) (i32.const 64) (i32.const 3))))"""


@pytest.fixture
def node(data_dir: Path) -> Iterator[WebDaemon]:
    d = WebDaemon(data_dir)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def hello_http() -> Path:
    return build_c(HELLO_HTTP)


def add(cli: Cli, *args: str) -> None:
    proc = cli("route", "add", *args, "--mode", "request")
    assert proc.returncode == 0, proc.stderr


def lookup(cli: Cli, *args: str) -> dict:  # type: ignore[type-arg]
    proc = cli("route", "requests", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_a_request_runs_the_guest_without_a_task(
    node: WebDaemon, cli: Cli, tmp_path: Path, hello_http: Path
) -> None:
    add(cli, "/tiny", str(build_wat(TINY, tmp_path, "tiny")), "--public")
    add(cli, "/hello/...", str(hello_http), "--public")
    ids = []
    for _ in range(8):  # (the first runs on a worker thread, the next inline)
        r = httpx.get(node.url + "/tiny", timeout=30)
        assert (r.status_code, r.text, r.headers["content-type"]) == (200, "ok\n", "text/plain")
        assert "x-spear-task" not in r.headers
        ids.append(r.headers["x-request-id"])
    # The CGI convention as in task mode (this guest sleeps: it runs on a worker thread).
    r = httpx.post(node.url + "/hello/a?name=ann", content=b"the body", timeout=30,
                   headers={"user-agent": "test-agent/1"})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-agent"] == "hello_http"
    assert r.text.splitlines() == ["Hello, ann!", "method=POST path=/hello rest=/a",
                                   "agent=test-agent/1", "body=the body"]  # fmt: skip
    assert node.get("/api/tasks").json() == []  # no task was recorded
    record = lookup(cli, ids[-1])
    assert record["status"] == 200 and record["route"] == "/tiny" and record["ran"] == "here"
    assert record["reason"] is None and record["seconds"] > 0
    listed = [x["request_id"] for x in lookup(cli, "--limit", "3")]
    assert listed == [r.headers["x-request-id"], *ids[::-1][:2]]
    assert lookup(cli, "--failed") == []


def test_a_failure_is_a_5xx_that_names_what_to_look_up(
    node: WebDaemon, cli: Cli, tmp_path: Path, hello_http: Path
) -> None:
    add(cli, "/fails", str(build_wat(FAILS, tmp_path, "fails")), "--public")
    for _ in range(5):  # on a thread, then inline: the same answer
        failed = httpx.get(node.url + "/fails", timeout=30)
        body = failed.json()
        assert failed.status_code == 502 and "exit status 3" in body["error"]
        assert body["request_id"] == failed.headers["x-request-id"]
        assert body["lookup"] == f"spear route requests {body['request_id']}"
        record = lookup(cli, body["request_id"])
        assert (record["status"], record["exit_code"]) == (502, 3)
        assert record["stderr"] == "the database is gone\n"
    shown = cli("route", "requests", body["request_id"])
    assert b"exit_code   3" in shown.stdout and b"  the database is gone" in shown.stdout
    assert len(lookup(cli, "--failed")) == 5
    assert cli("route", "requests", "0123456789abcdef").returncode != 0
    add(cli, "/h", str(hello_http), "--public", "--timeout", "1")
    slow = httpx.get(node.url + "/h?sleep=5000", timeout=30)  # past the route's 1 s
    assert slow.status_code == 504 and "time" in slow.json()["error"]
    assert lookup(cli, slow.headers["x-request-id"])["exit_code"] == 124
    # A failure once the response started leaves it unfinished: never a clean success.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(node.url + "/h?events=100", timeout=30)
    missing = tmp_path / "gone.wasm"
    add(cli, "/gone", str(build_wat(TINY, tmp_path, "gone")), "--public")
    (tmp_path / "gone.wasm").unlink()
    gone = httpx.get(node.url + "/gone", timeout=30)
    assert gone.status_code >= 500 and str(missing) in gone.json()["error"]


def test_events_stream_as_written_and_limits_hold(
    node: WebDaemon, cli: Cli, hello_http: Path
) -> None:
    add(cli, "/one", str(hello_http), "--max-body", "1K", "--concurrency", "1")
    url = node.url + "/one"
    assert httpx.get(url, timeout=30).status_code == 401  # not public: a token
    auth = node.headers
    too_big = httpx.post(url, content=b"x" * 2048, headers=auth, timeout=30)
    assert too_big.status_code == 413
    seen: list[str] = []
    # 100 events 50 ms apart: the guest writes for 5 s, time enough to look while it still
    # writes, on a loaded machine too. (Looked up through the API, not a `spear` command:
    # a loaded CI's slow start of that command saw the record already, twice.)
    with httpx.stream("GET", url + "?events=100", headers=auth, timeout=30) as first:
        assert first.headers["content-type"] == "text/event-stream"
        rid = first.headers["x-request-id"]
        busy = httpx.get(url, headers=auth, timeout=30)  # it holds the only slot
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        for line in first.iter_lines():
            if line.startswith("data: "):
                if not seen:  # the first event, while the guest still writes: no record yet
                    records = node.get("/api/routes/requests").json()
                    assert rid not in {x["request_id"] for x in records}
                seen.append(line[6:])
    assert seen == [str(i) for i in range(1, 101)] + ["done"]
    assert lookup(cli, rid)["status"] == 200


def test_a_module_that_needs_hostcalls_runs_as_a_task(
    node: WebDaemon, cli: Cli, tmp_path: Path
) -> None:
    add(cli, "/abi", str(build_wat(HOSTCALL, tmp_path, "abi")), "--public")
    r = httpx.get(node.url + "/abi", timeout=30)
    assert (r.status_code, r.text) == (200, "ok\n")
    task_id = r.headers["x-spear-task"]
    assert node.get(f"/api/tasks/{task_id}").json()["state"] == "COMPLETED"
    assert lookup(cli, r.headers["x-request-id"])["ran"] == f"task {task_id}"


def test_request_mode_is_for_wasm_http_routes(cli: Cli, tmp_path: Path) -> None:
    proc = cli("route", "add", "/ws", str(tmp_path / "a.wasm"), "--websocket", "--mode",
               "request", "--url", "http://127.0.0.1:9")  # fmt: skip
    assert "request mode" in one_error_line(proc.stderr) and proc.returncode != 0
    proc = cli("route", "add", "/x", "a.wasm", "--mode", "fast", "--url", "http://127.0.0.1:9")
    assert "mode" in one_error_line(proc.stderr) and proc.returncode != 0


def test_in_a_cluster_a_request_placed_elsewhere_runs_as_a_task_there(
    tmp_path: Path, hello_http: Path
) -> None:
    # Node a serves both routes; /far's agent needs a label only node b has.
    sms = WebDaemon(tmp_path / "sms", role="sms")
    nodes: list[WebDaemon] = []
    try:
        for name, extra in (("a", ""), ("b", '[labels]\nzone = "b"\n')):
            config = tmp_path / f"{name}.toml"
            config.write_text(f'node_name = "{name}"\n{extra}')
            nodes.append(WebDaemon(tmp_path / name, "--sms", sms.address, "--config", str(config)))
        a, b = nodes
        assert_eventually(lambda: len(sms.get("/api/nodes").json()) == 2, timeout=30)
        cli_a = Cli(tmp_path / "a")
        add(cli_a, "/near", str(hello_http), "--public")
        add(cli_a, "/far", str(hello_http), "--public", "--label", "zone=b")
        near = httpx.get(a.url + "/near?name=here", timeout=60)
        assert near.status_code == 200 and near.text.startswith("Hello, here!")
        assert "x-spear-task" not in near.headers
        far = httpx.get(a.url + "/far?name=far", timeout=60)
        assert far.status_code == 200 and far.text.startswith("Hello, far!"), far.text
        task_id = far.headers["x-spear-task"]
        assert b.get(f"/api/tasks/{task_id}").json()["node"] == "b"
        assert lookup(cli_a, far.headers["x-request-id"])["ran"] == f"task {task_id}"
    finally:
        for n in nodes:
            n.stop()
        sms.stop()
