"""A real Prometheus (Debian's `prometheus`) scrapes a real SPEARlet and a real SMS; the
values are checked through Prometheus's own query API."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import ROOT, Cli, assert_eventually, build_c
from wat_tasks import hello
from web_helpers import WebDaemon

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow


def _listening_port(pid: int) -> int | None:
    """The TCP port process `pid` listens on (it was told port 0): its sockets' inodes
    matched against /proc/net/tcp's listening entries."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus missing: apt-get install prometheus (scripts/quickstart.sh)")

    class Prometheus:
        url = ""
        proc: subprocess.Popen[bytes] | None = None

        def start(self, targets: dict[str, tuple[str, str]]) -> None:
            # Each job sends its target's token (the HTTP server takes the node's tokens).
            jobs = "".join(
                f"  - job_name: {job}\n    authorization:\n      credentials: '{token}'\n"
                f"    static_configs:\n      - targets: ['{target}']\n"
                for job, (target, token) in targets.items()
            )
            config = tmp_path / "prometheus.yml"
            config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")
            self.log = (tmp_path / "prometheus.log").open("wb")
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 "--web.listen-address=127.0.0.1:0"],
                stdout=self.log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            pid = self.proc.pid
            port = assert_eventually(lambda: _listening_port(pid), timeout=30, interval=0.1)
            self.url = f"http://127.0.0.1:{port}"

        def query(self, expr: str) -> list[dict[str, Any]]:
            answer = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
            body = answer.json()
            assert body["status"] == "success", body
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        def value(self, expr: str) -> float | None:
            result = self.query(expr)
            return float(result[0]["value"][1]) if result else None

    p = Prometheus()
    try:
        yield p
    finally:
        if p.proc is not None:
            p.proc.terminate()
            try:
                p.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
            p.log.close()


def test_prometheus_scrapes_a_node_and_the_sms(tmp_path: Path, prometheus: Any) -> None:
    # A model whose endpoint is down: a model call counted without loading a model.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    routing = tmp_path / "models.toml"
    routing.write_text(f'[models.down]\nbase_url = "http://127.0.0.1:{port}/v1"\n')
    config = tmp_path / "config.toml"
    config.write_text(f'heartbeat_s = 0.2\nmodels_config = "{routing}"\n')
    sms = WebDaemon(tmp_path / "sms", "--config", str(config), role="sms")
    node = None
    try:
        node = WebDaemon(tmp_path / "node", "--config", str(config), "--sms", sms.address)
        cli = Cli(tmp_path / "node")
        proc = cli("submit", "--wait", str(hello(tmp_path)))
        assert proc.returncode == 0, proc.stderr
        agent = str(build_c(ROOT / "tests" / "wasm" / "model_agent.c"))
        ask = '{"model": "down", "messages": [{"role": "user", "content": "hi"}]}'
        cli("submit", "--wait", agent, "chat", ask)
        prometheus.start(
            {
                "spearlet": (node.url.removeprefix("http://"), node.token),
                "sms": (sms.url.removeprefix("http://"), sms.token),
            }
        )

        def scraped(expr: str, want: float) -> bool:
            return prometheus.value(expr) == want

        assert_eventually(lambda: scraped('sum(up{job=~"spearlet|sms"})', 2), timeout=60)
        assert_eventually(
            lambda: scraped(
                'spear_tasks_finished_total{job="spearlet",state="COMPLETED",namespace="default"}',
                1,
            )
        )
        assert prometheus.value('spear_task_end_to_end_seconds_count{runtime="wasm"}') == 2
        assert prometheus.value("spear_objects") == 2  # the two tasks' results
        assert (prometheus.value("spear_objects_bytes") or 0) > len("hello\n")
        down = 'spear_model_requests_total{model="down",kind="chat",outcome="unavailable"}'
        assert prometheus.value(down) == 1
        assert prometheus.value('spear_sms_nodes{health="healthy"}') == 1
        [age] = prometheus.query("spear_sms_node_heartbeat_age_seconds")
        assert float(age["value"][1]) < 5
        # Heartbeats go on: the counter Prometheus sees grows between two scrapes.
        first = prometheus.value("spear_sms_heartbeats_total")
        assert first is not None and first > 0
        assert_eventually(
            lambda: (prometheus.value("spear_sms_heartbeats_total") or 0) > first, timeout=30
        )
    finally:
        if node is not None:
            node.stop()
        sms.stop()
