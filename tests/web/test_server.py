"""The HTTP server of a real `spear serve`: JSON API, live feeds, /metrics, `spear dashboard`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import Cli, assert_eventually, one_error_line
from wat_tasks import hello, ticker
from web_helpers import WebDaemon, samples

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def node(data_dir: Path) -> Iterator[WebDaemon]:
    d = WebDaemon(data_dir)
    try:
        yield d
    finally:
        d.stop()


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """Server-sent events as (event, JSON data), as they arrive."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event or "message", json.loads(line[len("data: ") :])
            event = None


def test_a_node_serves_its_tasks_results_and_metrics(
    node: WebDaemon, cli: Cli, tmp_path: Path
) -> None:
    assert node.url.startswith("http://127.0.0.1:")
    page = node.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert node.get("/static/app.js").status_code == 200
    info = node.get("/api/info").json()
    assert info["role"] == "spearlet" and info["address"] == node.address
    [own] = node.get("/api/nodes").json()
    assert own["health"] == "healthy" and own["cpu_millis"] > 0

    proc = cli("submit", "--wait", str(hello(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.decode().split()[0]
    [row] = node.get("/api/tasks").json()
    assert row["id"] == task_id and row["state"] == "COMPLETED" and row["exit_code"] == 0
    record = node.get(f"/api/tasks/{task_id}").json()
    assert [s for s, _ in record["history"]] == ["PENDING", "RUNNING", "COMPLETED"]
    assert node.get(f"/api/tasks/{task_id}/result").json()["text"] == "hello\n"
    assert [o["key"] for o in node.get("/api/objects?prefix=results/").json()] == [
        f"results/{task_id}"
    ]
    missing = node.get("/api/tasks/nosuchtask")
    assert missing.status_code == 404 and "nosuchtask" in missing.json()["error"]
    assert node.get("/api/tasks?state=bogus").status_code == 400

    metrics = node.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    got = samples(metrics.text)
    done = (("namespace", "default"), ("runtime", "wasm"), ("state", "COMPLETED"))
    assert got[("spear_tasks_finished_total", done)] == 1
    assert got[("spear_task_end_to_end_seconds_count", (("runtime", "wasm"),))] == 1
    assert got[("spear_task_run_seconds_count", (("runtime", "wasm"),))] == 1
    running = (("namespace", "default"), ("runtime", "wasm"), ("state", "running"))
    assert got[("spear_tasks", running)] == 0
    assert got[("spear_admission_queue_depth", ())] == 0
    assert got[("spear_resources_capacity", (("resource", "cpu_millis"),))] == own["cpu_millis"]
    assert got[("spear_objects", ())] == 1
    assert got[("spear_objects_bytes", ())] == len("hello\n")
    assert got[("process_resident_memory_bytes", ())] > 0

    # `spear dashboard` finds the URL the daemon wrote: a link with the owner's token.
    assert cli("dashboard").stdout.decode().strip() == f"{node.url}/?token={node.token}"
    assert cli.json("dashboard")["metrics"] == node.url + "/metrics"


def test_the_http_server_takes_the_same_tokens(node: WebDaemon, cli: Cli) -> None:
    for path in ("/", "/api/tasks", "/metrics", "/static/app.js"):
        refused = httpx.get(node.url + path, timeout=10)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == "Bearer"
    forged = node.get("/api/tasks", headers={"authorization": "Bearer spear_x_y"})
    assert forged.status_code == 401 and "not accepted" in forged.json()["error"]
    # The link `spear dashboard` prints: the token goes into a cookie, out of the address.
    link = cli("dashboard").stdout.decode().strip()
    with httpx.Client(timeout=10) as browser:
        first = browser.get(link)
        assert first.status_code == 303 and first.headers["location"] == "/"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = browser.get(node.url + "/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert browser.get(node.url + "/api/tasks").status_code == 200
    # A token bound to a namespace scrapes /metrics, and sees its namespace's dashboard
    # (test_dashboard_actions.py): the owner's tasks in `default` are not there.
    assert cli("submit", "--wait", "--runtime", "process", "/bin/true").returncode == 0
    reader = (
        cli("token", "create", "prom", "--role", "reader", "--namespace", "team-a")
        .stdout.decode()
        .strip()
    )
    as_reader = {"authorization": f"Bearer {reader}"}
    # (a running node sees a new token within a second)
    assert_eventually(lambda: node.get("/metrics", headers=as_reader).status_code == 200)
    assert node.get("/api/tasks", headers=as_reader).json() == []
    assert len(node.get("/api/tasks").json()) == 1
    assert httpx.get(f"{node.url}/?token={reader}", timeout=10).status_code == 303


def test_the_task_list_feed_shows_new_tasks_and_their_states(
    node: WebDaemon, cli: Cli, tmp_path: Path
) -> None:
    module = str(ticker(tmp_path, 3, 200))
    with httpx.stream(
        "GET", node.url + "/api/events/tasks", timeout=30, headers=node.headers
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        feed = events(response)
        assert next(feed) == ("snapshot", [])
        task_id = cli("submit", module).stdout.decode().strip()
        seen = []
        for event, data in feed:
            assert event == "task" and data["id"] == task_id
            seen.append(data["state"])
            if data["state"] == "COMPLETED":
                break
    assert seen[-1] == "COMPLETED" and set(seen) <= {"PENDING", "RUNNING", "COMPLETED"}


def test_a_task_feed_follows_its_logs_as_written(node: WebDaemon, cli: Cli, tmp_path: Path) -> None:
    # (4.8 s of naps: room for a daemon starved by a busy machine to stream the first
    # ticks while the task still runs; at 2.4 s a loaded CI run saw none before the end)
    task_id = cli("submit", str(ticker(tmp_path, 8, 600))).stdout.decode().strip()
    order: list[tuple[str, str]] = []
    state_at_first_log = None
    with httpx.stream(
        "GET", f"{node.url}/api/events/tasks/{task_id}", timeout=30, headers=node.headers
    ) as response:
        for event, data in events(response):
            if event == "end":
                break
            if event == "log" and state_at_first_log is None:  # (asked as it arrives)
                state_at_first_log = node.get(f"/api/tasks/{task_id}").json()["state"]
            order.append((event, data["text"] if event == "log" else data["state"]))
    assert "".join(text for event, text in order if event == "log") == "tick\n" * 8 + "done\n"
    # As written: the first tick arrived while the task ran, before its end. (Its last line
    # may come before or after its COMPLETED: they are written apart, the log first.)
    assert state_at_first_log == "RUNNING"
    ended = order.index(("task", "COMPLETED"))
    early = "".join(text for event, text in order[:ended] if event == "log")
    assert early.startswith("tick\n")
    assert ("task", "RUNNING") in order[:ended]
    with httpx.stream(
        "GET", f"{node.url}/api/events/tasks/nosuch", timeout=30, headers=node.headers
    ) as response:
        assert next(events(response))[0] == "error"


def test_only_loopback_names_are_answered_on_a_loopback_bind(node: WebDaemon) -> None:
    # A page elsewhere that resolves its own name to 127.0.0.1 (DNS rebinding) is refused.
    assert node.get("/api/info", headers={"host": "evil.example"}).status_code == 400
    assert node.get("/api/info", headers={"host": "localhost"}).status_code == 200


def test_a_stop_with_open_feeds_is_prompt_and_removes_the_url_file(
    data_dir: Path, cli: Cli
) -> None:
    node = WebDaemon(data_dir)
    try:
        with httpx.stream(
            "GET", node.url + "/api/events/tasks", timeout=30, headers=node.headers
        ) as response:
            assert next(events(response))[0] == "snapshot"
            t0 = time.monotonic()
            assert node.stop() == 0
            assert time.monotonic() - t0 < 10
    finally:
        node.stop()
    assert not node.url_file.exists()
    assert "no dashboard" in one_error_line(cli("dashboard").stderr)


def test_http_off_and_a_bad_address(data_dir: Path, cli: Cli) -> None:
    node = WebDaemon(data_dir, http="off")
    try:
        assert (data_dir / "spearlet.addr").exists()
        assert not (data_dir / "spearlet.http").exists()
        assert cli("dashboard").returncode == 76
    finally:
        node.stop()
    bad = cli("serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:nope")
    assert bad.returncode == 64
    assert "--http expects HOST:PORT" in one_error_line(bad.stderr)


def test_neither_import_spear_nor_spear_run_loads_the_web_stack(tmp_path: Path) -> None:
    heavy = ("starlette", "uvicorn", "prometheus_client")
    code = (
        "import sys, spear, spear.web\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "from spear.cli import main\n"
        f"main(['run', '--data-dir', {str(tmp_path / 'home')!r}, {str(hello(tmp_path))!r}])\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "hello", "[]"]
