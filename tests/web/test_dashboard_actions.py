"""Submitting and cancelling from the dashboard's API (web/_actions.py), on a real
`spear serve`: roles and namespaces as gRPC applies them, CSRF, bad forms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import assert_eventually
from wat_tasks import hello, ticker
from web_helpers import WebDaemon

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Tokens:
    def __init__(self, data_dir: Path) -> None:
        from spear.transport.auth import Role, TokenStore

        store = TokenStore(data_dir)
        self.reader = store.issue("ann", Role.READER, "team-a")
        self.submitter = store.issue("sam", Role.SUBMITTER, "team-a")


@pytest.fixture
def served(data_dir: Path) -> Iterator[tuple[WebDaemon, Tokens]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = Tokens(data_dir)  # before the daemon starts: it knows them at once
    d = WebDaemon(data_dir)
    try:
        yield d, tokens
    finally:
        d.stop()


def as_(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def post(node: WebDaemon, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    headers = {**node.headers, **kw.pop("headers", {})}
    return httpx.post(node.url + path, json=body, headers=headers, timeout=10, **kw)


def state_of(node: WebDaemon, task_id: str, headers: dict[str, str] | None = None) -> str:
    return str(node.get(f"/api/tasks/{task_id}", headers=headers or {}).json()["state"])


def test_an_admin_submits_and_cancels(served: tuple[WebDaemon, Tokens], tmp_path: Path) -> None:
    node, _ = served
    made = post(node, "/api/tasks", {"artifact": str(hello(tmp_path))})
    assert made.status_code == 201, made.text
    task = made.json()
    assert task["namespace"] == "default" and task["runtime"] == "wasm"
    assert_eventually(lambda: state_of(node, task["id"]) == "COMPLETED", timeout=30)
    assert node.get(f"/api/tasks/{task['id']}/result").json()["text"] == "hello\n"

    # The process runtime is an admin's; args as a shell splits them, stdin given.
    proc = post(
        node,
        "/api/tasks",
        {"runtime": "process", "artifact": "/bin/sh", "args": "-c 'cat; echo \" two\"'",
         "stdin": "one"},
    )  # fmt: skip
    assert proc.status_code == 201, proc.text
    pid = proc.json()["id"]
    assert_eventually(lambda: state_of(node, pid) == "COMPLETED", timeout=30)
    assert node.get(f"/api/tasks/{pid}/result").json()["text"] == "one two\n"

    slow = post(node, "/api/tasks", {"artifact": str(ticker(tmp_path, 200, 200))}).json()["id"]
    assert_eventually(lambda: state_of(node, slow) == "RUNNING", timeout=30)
    cancelled = post(node, f"/api/tasks/{slow}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert_eventually(lambda: state_of(node, slow) == "CANCELLED", timeout=30)
    record = node.get(f"/api/tasks/{slow}").json()
    assert "dashboard" in record["reason"]
    assert post(node, "/api/tasks/nosuchtask/cancel").status_code == 404


def test_roles_and_namespaces_as_grpc_applies_them(
    served: tuple[WebDaemon, Tokens], tmp_path: Path
) -> None:
    node, tokens = served
    module = str(hello(tmp_path))
    admins = post(node, "/api/tasks", {"artifact": module}).json()["id"]  # in `default`

    # A reader sees its namespace's dashboard, and may change nothing.
    reader = as_(tokens.reader)
    info = node.get("/api/info", headers=reader).json()
    assert info["caller"]["may_run"] == [] and info["caller"]["may_cancel"] is False
    refused = post(node, "/api/tasks", {"artifact": module}, headers=reader)
    assert refused.status_code == 403 and "may only read" in refused.json()["error"]
    assert post(node, f"/api/tasks/{admins}/cancel", headers=reader).status_code == 403

    # A submitter of team-a runs WASM there, not on the host, not in another namespace.
    sam = as_(tokens.submitter)
    info = node.get("/api/info", headers=sam).json()
    assert info["caller"]["may_run"] == ["wasm"] and info["caller"]["namespace"] == "team-a"
    made = post(node, "/api/tasks", {"artifact": module}, headers=sam)
    assert made.status_code == 201 and made.json()["namespace"] == "team-a"
    mine = made.json()["id"]
    host = post(node, "/api/tasks", {"runtime": "process", "artifact": "/bin/true"}, headers=sam)
    assert host.status_code == 403 and "may not run process" in host.json()["error"]
    other = post(node, "/api/tasks", {"artifact": module, "namespace": "default"}, headers=sam)
    assert other.status_code == 403 and "team-a" in other.json()["error"]
    # The admin's task in `default` does not exist for team-a: not listed, not cancelled.
    assert post(node, f"/api/tasks/{admins}/cancel", headers=sam).status_code == 404
    assert_eventually(lambda: state_of(node, mine, reader) == "COMPLETED", timeout=30)
    assert [t["id"] for t in node.get("/api/tasks", headers=reader).json()] == [mine]
    assert node.get(f"/api/tasks/{admins}", headers=reader).status_code == 404
    both = {t["id"] for t in node.get("/api/tasks").json()}
    assert both == {admins, mine}  # the admin sees every namespace


def test_a_browser_change_needs_the_csrf_token_and_this_origin(
    served: tuple[WebDaemon, Tokens], tmp_path: Path
) -> None:
    node, _ = served
    module = {"artifact": str(hello(tmp_path))}
    with httpx.Client(timeout=10, base_url=node.url) as browser:
        assert browser.get(f"/?token={node.token}").status_code == 303  # the cookie is set
        csrf = browser.get("/api/info").json()["caller"]["csrf"]
        bare = browser.post("/api/tasks", json=module)  # the cookie alone: refused
        assert bare.status_code == 403 and "x-spear-csrf" in bare.json()["error"]
        wrong = browser.post("/api/tasks", json=module, headers={"x-spear-csrf": "0" * 32})
        assert wrong.status_code == 403
        host = node.url.removeprefix("http://")
        evil = browser.post(
            "/api/tasks",
            json=module,
            headers={"x-spear-csrf": csrf, "origin": "http://evil.example"},
        )
        assert evil.status_code == 403 and "another site" in evil.json()["error"]
        ok = browser.post(
            "/api/tasks", json=module, headers={"x-spear-csrf": csrf, "origin": f"http://{host}"}
        )
        assert ok.status_code == 201, ok.text
    # No cookie, no token: nothing.
    assert httpx.post(node.url + "/api/tasks", json=module, timeout=10).status_code == 401


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"artifact": "relative.wasm"}, "absolute path"),
        ({"artifact": ""}, "name the agent"),
        ({"artifact": "/x.wasm", "runtime": "jvm"}, "unknown runtime"),
        ({"artifact": "/x.wasm", "args": "'unclosed"}, "args"),
        ({"artifact": "/x.wasm", "args": [1, 2]}, "args must be"),
        ({"artifact": "/x.wasm", "timeout_s": -1}, "timeout_s"),
        ([1, 2], "JSON object"),
        ({"artifact": "/x.wasm", "stdin": "x" * (1024 * 1024)}, "larger than"),
    ],
)
def test_a_bad_form_is_one_clear_error(
    served: tuple[WebDaemon, Tokens], body: Any, says: str
) -> None:
    node, _ = served
    answer = post(node, "/api/tasks", body)
    assert answer.status_code == 400 and says in answer.json()["error"]
    assert "\n" not in answer.json()["error"]
