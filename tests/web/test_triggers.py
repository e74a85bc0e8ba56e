"""HTTP triggers and WebSocket routes on a real `spear serve`, with real clients (httpx,
websockets) and real agents (the C examples built to wasm, the Python example agent)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import select
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import websockets
from conftest import ROOT, Cli, assert_eventually, build_c, one_error_line
from wat_tasks import exits, hello
from web_helpers import WebDaemon

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HELLO_HTTP = ROOT / "examples" / "http" / "hello_http.c"
TRANSFORM = ROOT / "examples" / "stream_transform" / "transform.c"
PY_HTTP = ROOT / "examples" / "http" / "hello_http.py"


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


def owner(node: WebDaemon) -> dict[str, str]:
    return {
        "authorization": "Bearer " + (node.data_dir / "auth" / "owner.token").read_text().strip()
    }


def token(cli: Cli, name: str, role: str) -> dict[str, str]:
    proc = cli("token", "create", name, "--role", role)
    assert proc.returncode == 0, proc.stderr
    return {"authorization": "Bearer " + proc.stdout.decode().strip()}


def add(cli: Cli, *args: str) -> None:
    proc = cli("route", "add", *args)
    assert proc.returncode == 0, proc.stderr


def ws_url(node: WebDaemon, path: str) -> str:
    return node.url.replace("http://", "ws://") + path


@pytest.mark.parametrize("path", ["/hello\n", "/hello/...\n", "/...\n", "/a/../b", "/a//b"])
def test_a_route_path_with_a_trailing_newline_or_a_bad_segment_is_refused(path: str) -> None:
    from spear.errors import InvalidArgument
    from spear.web._routes import check_path

    with pytest.raises(InvalidArgument):
        check_path(path)
    check_path("/hello/...")  # (the same without the newline is a route path)


def test_routes_are_added_listed_removed_and_outlive_a_restart(
    data_dir: Path, cli: Cli, hello_http: Path
) -> None:
    node = WebDaemon(data_dir)
    try:
        add(cli, "/hello", str(hello_http), "--public", "-X", "GET")
        add(cli, "/ws", str(hello_http), "--websocket")
        [ws, http] = cli.json("route", "ls")[::-1]
        assert http["path"] == "/hello" and http["methods"] == ["GET"] and http["public"]
        assert ws["kind"] == "websocket" and not ws["public"] and ws["source"] == "api"
        again = cli("route", "add", "/hello", str(hello_http))
        assert again.returncode != 0 and "exists" in one_error_line(again.stderr)
        for bad in ("nope", "/api/x", "/static/...", "/a//b", "/...", "/a/../b"):
            proc = cli("route", "add", bad, str(hello_http))
            assert proc.returncode != 0, bad
            one_error_line(proc.stderr)
        assert node.get("/hello").status_code == 200
    finally:
        node.stop()
    node = WebDaemon(data_dir)  # the routes are in the node's KV
    try:
        assert [r["path"] for r in cli.json("route", "ls")] == ["/hello", "/ws"]
        assert node.get("/hello").text.startswith("Hello, web!")
        assert cli("route", "rm", "/hello").returncode == 0
        assert node.get("/hello").status_code == 404
        missing = cli("route", "rm", "/hello")
        assert missing.returncode != 0 and "no route" in one_error_line(missing.stderr)
    finally:
        node.stop()


def test_a_request_runs_the_agent_and_its_response_comes_back(
    node: WebDaemon, cli: Cli, hello_http: Path
) -> None:
    add(cli, "/hello/...", str(hello_http), "--public")
    r = httpx.post(node.url + "/hello/a/b?name=ann", content=b"the body",
                   headers={"user-agent": "test-agent/1"}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain" and r.headers["x-agent"] == "hello_http"
    assert r.text.splitlines() == [
        "Hello, ann!",
        "method=POST path=/hello rest=/a/b",
        "agent=test-agent/1",
        "body=the body",
    ]
    task_id = r.headers["x-spear-task"]
    assert len(r.headers["x-request-id"]) == 16
    record = node.get(f"/api/tasks/{task_id}").json()
    assert record["state"] == "COMPLETED"
    env = dict(record["spec"]["env"])
    assert env["REQUEST_METHOD"] == "POST" and env["X_MATCHED_ROUTE"] == "/hello/..."
    assert "HTTP_AUTHORIZATION" not in env
    assert node.get("/hello").status_code == 200  # the route's base path itself
    assert node.get("/hellox").status_code == 404


def test_routes_need_a_submitter_token_unless_public(
    node: WebDaemon, cli: Cli, hello_http: Path
) -> None:
    add(cli, "/private", str(hello_http))
    url = node.url + "/private"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer spear_nope_x"}).status_code == 401
    reader, submitter = token(cli, "r", "reader"), token(cli, "s", "submitter")
    # (a node reads a changed token file within a second: docs/security.md)
    assert_eventually(lambda: httpx.get(url, headers=reader).status_code != 401)
    assert httpx.get(url, headers=reader).status_code == 403
    assert httpx.get(url, headers=submitter, timeout=30).status_code == 200
    # The route API: reading needs a token, changing a submitter's, a process agent an admin's.
    api = node.url + "/api/routes"
    assert httpx.get(api).status_code == 401
    assert [r["path"] for r in httpx.get(api, headers=reader).json()] == ["/private"]
    wasm = {"path": "/x", "spec": {"artifact": str(hello_http)}}
    assert httpx.post(api, json=wasm, headers=reader).status_code == 403
    assert httpx.post(api, json=wasm, headers=submitter).status_code == 201
    py = {"path": "/y", "spec": {"artifact": str(PY_HTTP), "runtime": "process"}}
    refused = httpx.post(api, json=py, headers=submitter)
    assert refused.status_code == 403
    assert refused.json()["error"] == "s (submitter) may not do this: it needs admin"
    assert httpx.post(api, json=py, headers=owner(node)).status_code == 201
    assert httpx.delete(api, params={"path": "/x"}).status_code == 401
    assert httpx.post(api, content=b"{", headers=submitter).status_code == 400


def test_server_sent_events_flow_as_the_agent_writes_them(
    node: WebDaemon, cli: Cli, hello_http: Path
) -> None:
    add(cli, "/events", str(hello_http), "--public")
    seen: list[str] = []
    with httpx.stream("GET", node.url + "/events?events=20", timeout=30) as r:
        assert r.headers["content-type"] == "text/event-stream"
        task_id = r.headers["x-spear-task"]
        for line in r.iter_lines():
            if line.startswith("data: "):
                if not seen:  # the first event, while the agent still writes (20 x 50 ms)
                    assert node.get(f"/api/tasks/{task_id}").json()["state"] == "RUNNING"
                seen.append(line[6:])
    assert seen == [str(i) for i in range(1, 21)] + ["done"]


def test_a_python_agent_answers_and_streams(node: WebDaemon, cli: Cli) -> None:
    add(cli, "/py", str(PY_HTTP), "--public", "-X", "PUT", "-X", "GET")
    r = httpx.put(node.url + "/py?name=bo", content=b"{}", timeout=60, headers={"x-a": "1"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer == {"hello": "bo", "method": "PUT", "path": "/py", "body": "{}",
                      "request_id": r.headers["x-request-id"]}  # fmt: skip
    with httpx.stream("GET", node.url + "/py?count=3", timeout=60) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    assert events == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_an_agent_failure_is_a_5xx_naming_the_request_never_a_hang(
    node: WebDaemon, cli: Cli, hello_http: Path, tmp_path: Path
) -> None:
    add(cli, "/h", str(hello_http), "--public", "--timeout", "1")
    failed = httpx.get(node.url + "/h?fail=1", timeout=30)
    assert failed.status_code == 502
    body = failed.json()
    assert body["request_id"] == failed.headers["x-request-id"]
    assert "exit status 3" in body["error"]
    assert node.get(f"/api/tasks/{body['task_id']}").json()["state"] == "FAILED"
    slow = httpx.get(node.url + "/h?sleep=5000", timeout=30)  # past the route's 1 s
    assert slow.status_code == 504 and "time" in slow.json()["error"]
    # A failure once the response started leaves it unfinished: never a clean success.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(node.url + "/h?events=100", timeout=30)
    add(cli, "/crash", str(exits(tmp_path, 7)), "--public")
    crashed = httpx.get(node.url + "/crash", timeout=30)
    assert crashed.status_code == 502 and crashed.json()["task_id"]


def test_limits_body_size_methods_and_concurrency(
    node: WebDaemon, cli: Cli, hello_http: Path
) -> None:
    add(cli, "/one", str(hello_http), "--public", "--max-body", "1K", "--concurrency", "1",
        "-X", "POST")  # fmt: skip
    url = node.url + "/one"
    too_big = httpx.post(url, content=b"x" * 2048, timeout=30)
    assert too_big.status_code == 413 and too_big.json()["request_id"]
    wrong = httpx.get(url, timeout=30)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert httpx.post(url + "x", timeout=30).status_code == 404
    with httpx.stream("POST", url + "?events=40", timeout=30) as first:
        assert first.status_code == 200  # it holds the route's only slot while it streams
        busy = httpx.post(url, timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        first.read()
    assert httpx.post(url, content=b"ok", timeout=30).status_code == 200


def test_a_websocket_talks_to_the_task_both_ways(node: WebDaemon, cli: Cli, tmp_path: Path) -> None:
    add(cli, "/up", str(build_c(TRANSFORM)), "--websocket")
    add(cli, "/done", str(hello(tmp_path)), "--websocket", "--public")
    add(cli, "/bad", str(exits(tmp_path, 5)), "--websocket", "--public")

    async def talk() -> dict[str, Any]:
        got: dict[str, Any] = {}
        async with websockets.connect(ws_url(node, "/up"), additional_headers=owner(node)) as ws:
            await ws.send("hello")
            got["text"] = await ws.recv()
            await ws.send(b"bin\xfe")
            got["binary"] = await ws.recv()
            got["task"] = ws.response.headers["x-spear-task"]
        async with websockets.connect(ws_url(node, "/done")) as ws:  # the task ends first
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            got["done"] = ws.close_code
        async with websockets.connect(ws_url(node, "/bad")) as ws:
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            got["bad"] = (ws.close_code, ws.close_reason)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url(node, "/up"))
        got["refused"] = refused.value.response.status_code
        # A browser's way to send its token: subprotocols (it cannot set headers).
        secret = owner(node)["authorization"].removeprefix("Bearer ")
        offered: Any = ["spear", "bearer." + secret]
        async with websockets.connect(ws_url(node, "/up"), subprotocols=offered) as ws:
            await ws.send("via protocol")
            got["protocol"] = (ws.subprotocol, await ws.recv())
        with pytest.raises(websockets.InvalidStatus) as wrong:
            await websockets.connect(ws_url(node, "/up"), subprotocols=["spear", "bearer.x"])
        got["wrong"] = wrong.value.response.status_code
        return got

    got = asyncio.run(talk())
    assert got["text"] == "1: HELLO"
    binary = got["binary"]  # not UTF-8 text: sent as binary
    assert isinstance(binary, bytes) and binary.startswith(b"2: BIN") and len(binary) == 7
    assert got["done"] == 1000
    assert got["bad"][0] == 1011 and "failed" in got["bad"][1]
    assert got["refused"] == 401 and got["wrong"] == 401
    assert got["protocol"] == ("spear", "1: VIA PROTOCOL")
    # The browser closed: the task read the end of its input and finished.
    assert assert_eventually(
        lambda: node.get(f"/api/tasks/{got['task']}").json()["state"] == "COMPLETED"
    )


def test_a_slow_websocket_reader_holds_the_agent_back(data_dir: Path, cli: Cli) -> None:
    # A browser that stops reading: a raw socket (so no client library reads ahead of it)
    # with a small receive buffer, and small stream queues on the node. The agent echoes;
    # once every buffer between them is full, the browser's own sends stop being taken.
    node = WebDaemon(data_dir, "--config", str(_config(data_dir, "stream_queue_messages = 2")))
    try:
        add(cli, "/up", str(build_c(TRANSFORM)), "--websocket", "--public")
        host, port = node.url.removeprefix("http://").rsplit(":", 1)
        sock = _raw_websocket(host, int(port), "/up")
        total, size = 400, 64 * 1024  # 25 MiB each way
        frames = [_masked(f"{i:04d}".encode() + b"x" * (size - 4)) for i in range(total)]
        data = memoryview(b"".join(frames))
        sent = _send_until_held(sock, data)
        assert sent < len(data), "the node took everything: nothing held the sender back"
        rest = threading.Thread(target=sock.sendall, args=(data[sent:],), daemon=True)
        rest.start()  # reading again lets everything through, in order
        reader = sock.makefile("rb")
        for i in range(total):
            message = _read_frame(reader)
            assert message.startswith(f"{i + 1}: {i:04d}".encode()), message[:20]
        rest.join(timeout=30)
        sock.close()
    finally:
        node.stop()


def _config(data_dir: Path, text: str) -> Path:
    path = data_dir.with_name("spear.toml")
    path.write_text(text + "\n")
    return path


def _raw_websocket(host: str, port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big"
    )
    return bytes([0x81, 0x80 | 127]) + struct.pack(">Q", len(payload)) + mask + body


def _read_frame(reader: Any) -> bytes:
    first, second = reader.read(2)
    assert first & 0x0F in (1, 2), f"not a data frame: {first:#x}"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", reader.read(2))
    elif length == 127:
        (length,) = struct.unpack(">Q", reader.read(8))
    return bytes(reader.read(length))


def _send_until_held(sock: socket.socket, data: memoryview) -> int:
    """Send without reading until the socket stays unwritable for 2 s; what was sent."""
    sock.setblocking(False)
    sent = 0
    while sent < len(data):
        _, writable, _ = select.select([], [sock], [], 2.0)
        if not writable:
            break
        try:
            sent += sock.send(data[sent : sent + 65536])
        except BlockingIOError:
            continue
    sock.setblocking(True)
    return sent


def test_in_a_cluster_requests_and_streams_follow_the_task_to_its_node(
    tmp_path: Path, hello_http: Path
) -> None:
    # Routes on node a whose agents need a label only node b has: the scheduler places
    # each task on b, and a relays the response and the stream.
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
        add(cli_a, "/h", str(hello_http), "--public", "--label", "zone=b")
        add(cli_a, "/up", str(build_c(TRANSFORM)), "--websocket", "--public", "--label", "zone=b")

        r = httpx.get(a.url + "/h?name=far", timeout=60)
        assert r.status_code == 200 and r.text.startswith("Hello, far!"), r.text
        assert b.get(f"/api/tasks/{r.headers['x-spear-task']}").json()["node"] == "b"
        with httpx.stream("GET", a.url + "/h?events=3", timeout=60) as s:
            events = [x[6:] for x in s.iter_lines() if x.startswith("data: ")]
        assert events == ["1", "2", "3", "done"]

        async def talk() -> tuple[str, str]:
            async with websockets.connect(ws_url(a, "/up")) as ws:
                await ws.send("over there")
                reply = await ws.recv()
                return str(reply), ws.response.headers["x-spear-task"]

        reply, task_id = asyncio.run(talk())
        assert reply == "1: OVER THERE"
        assert b.get(f"/api/tasks/{task_id}").json()["node"] == "b"
    finally:
        for n in nodes:
            n.stop()
        sms.stop()


# Writes a head, then 64 KiB chunks without end (its route's timeout stops it, if nothing else).
_FLOOD_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "Content-Type: application/octet-stream\\n\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 40))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $more
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $more))))"""


def test_an_agent_far_ahead_of_a_slow_client_is_stopped(
    node: WebDaemon, cli: Cli, tmp_path: Path
) -> None:
    from conftest import build_wat

    add(cli, "/flood", str(build_wat(_FLOOD_WAT, tmp_path, "flood")), "--public",
        "--timeout", "60")  # fmt: skip
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET /flood HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = sock.recv(4096)  # the head, then nothing more is read
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    task_id = re.search(rb"x-spear-task: (\w+)", head).group(1).decode()  # type: ignore[union-attr]
    stopped = assert_eventually(
        lambda: (t := node.get(f"/api/tasks/{task_id}").json())["state"] != "RUNNING" and t,
        timeout=40,
    )
    assert stopped["state"] == "CANCELLED" and "too slowly" in stopped["reason"]
    sock.close()
