"""Request mode's environment, made from a per-route template (web/_cgi.py `EncodedEnv`),
is `request_env`'s: the same variables, values and order, whether the guest runs inline
or on a thread; and `spear route ls` shows each route's mode."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import Cli, build_wat
from web_helpers import WebDaemon

from spear.web._cgi import EncodedEnv, request_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Writes a head and its whole environment block ("K=V\0K=V\0..."), in one write, through
# WASI alone.
ENV_DUMP = """(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 8166) "Content-Type: text/plain\\n\\n")
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 1024) (i32.const 8192)))
    (i32.store (i32.const 64) (i32.const 8166))
    (i32.store (i32.const 68) (i32.add (i32.const 26) (i32.load (i32.const 4))))
    (drop (call $w (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 80)))))"""

BASE = (("GREETING", "hé"), ("PATH_INFO", "set by the spec"))
SCOPES: list[dict[str, Any]] = [
    {"method": "GET", "path": "/a", "query_string": b"", "headers": []},
    {
        "method": "POST",
        "path": "/a/b/é",
        "query_string": b"x=1&y=\xe9",
        "client": ("10.0.0.2", 4000),
        "server": ("node.example", 8080),
        "headers": [
            (b"host", b"node.example:8080"),
            (b"content-type", b"text/plain"),
            (b"x-many", b"one"),
            (b"authorization", b"Bearer secret"),
            (b"cookie", b"a=b"),
            (b"x-many", b"two"),
            (b"x-latin", b"caf\xe9"),
            (b"x-nul", b"a\x00b"),
            (b"content-type", b"again"),
            (b"content-length", b"7"),
        ],
    },
    {"method": "PUT", "path": "/a", "query_string": b"q", "server": None, "headers": []},
]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("body_length", [0, 7])
def test_the_encoded_environment_is_request_envs(scope: dict[str, Any], body_length: int) -> None:
    template = EncodedEnv(BASE, "/a", "/a/...")
    for _ in range(2):  # (the second time with the header names remembered)
        names, values = template.encode(scope, "/b", body_length, "0123456789abcdef")
        client = scope.get("client")
        expected = request_env(
            method=scope["method"],
            path=scope["path"],
            script_name="/a",
            path_info="/b",
            query=scope["query_string"].decode("latin-1"),
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]],
            body_length=body_length,
            client=client[0] if client else "",
            server=scope.get("server"),
            request_id="0123456789abcdef",
            route="/a/...",
        )
        want = [(k.encode(), v.encode()) for k, v in (*BASE, *expected)]
        assert list(zip(names, values, strict=True)) == want


@pytest.fixture
def node(data_dir: Path) -> Iterator[WebDaemon]:
    d = WebDaemon(data_dir)
    try:
        yield d
    finally:
        d.stop()


def _env(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return response.content.decode().split("\0")[:-1]


def test_a_request_mode_guest_sees_what_a_task_mode_guest_sees(
    node: WebDaemon, cli: Cli, tmp_path: Path
) -> None:
    module = str(build_wat(ENV_DUMP, tmp_path, "env_dump"))
    for path, mode in (("/req/...", "request"), ("/task/...", "task")):
        proc = cli("route", "add", path, module, "--public", "--env", "GREETING=hé",
                   "--mode", mode)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    listed = {r["path"]: r["mode"] for r in json.loads(cli("route", "ls", "--json").stdout)}
    assert listed == {"/req/...": "request", "/task/...": "task"}
    lines = cli("route", "ls").stdout.decode().splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["/req/...", "GET,POST", "request"],
        ["/task/...", "GET,POST", "task"],
    ]
    headers = [("x-many", "one"), ("x-many", "two"), ("content-type", "text/plain"),
               ("x-latin", b"caf\xe9"), ("authorization", "Bearer not-passed")]  # fmt: skip
    with httpx.Client(timeout=60) as client:
        task = _env(client.post(node.url + "/task/x?q=1", content=b"body", headers=headers))
        seen = [
            _env(client.post(node.url + "/req/x?q=1", content=b"body", headers=headers))
            for _ in range(6)  # (the first on a worker thread, the next inline)
        ]
    per_route = ("X_REQUEST_ID=", "X_MATCHED_ROUTE=", "SCRIPT_NAME=", "REQUEST_URI=")

    def same(env: list[str]) -> list[str]:
        return [v for v in env if not v.startswith(per_route)]

    assert "GREETING=hé" in task and "HTTP_X_MANY=one, two" in task and "PATH_INFO=/x" in task
    assert "HTTP_X_LATIN=café" in task and not any("not-passed" in v for v in task)
    for env in seen:
        assert same(env) == same(task)
        assert "X_MATCHED_ROUTE=/req/..." in env and "REQUEST_URI=/req/x?q=1" in env
    assert len({v for env in seen for v in env if v.startswith("X_REQUEST_ID=")}) == len(seen)
