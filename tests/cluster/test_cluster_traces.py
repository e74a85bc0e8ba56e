"""One trace per task across real processes: the `spear submit` CLI, the node it asks
and the node the task is forwarded to each export their spans over OTLP/HTTP to a real
receiver; the spans share one trace id, parent to child across the processes, and
`spear status` shows it."""

# ruff: noqa: F401, F811  (fixtures imported from helpers.py are used as arguments)

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from conftest import assert_eventually, build_wat
from helpers import make_cluster, spear
from trace_helpers import OtlpReceiver
from wat_tasks import hello as hello_wasm

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    yield found
    found.close()


def test_a_forwarded_task_is_one_trace_across_three_processes(
    make_cluster: Any, receiver: OtlpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The nodes read the endpoint from their settings file; the CLI from OpenTelemetry's
    # own variable. Spans leave each process in batches every 0.2 s (the SDK's variable).
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    traced = {"trace_otlp_endpoint": receiver.url}
    cluster = make_cluster(
        nodes=2,
        node_settings={"node-1": traced, "node-2": {**traced, "labels": {"zone": "b"}}},
    )
    n1 = cluster.member("node-1").address
    hello = hello_wasm(tmp_path)
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    sent = spear("submit", "--node", n1, "--label", "zone=b", str(hello), env=otel)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.split()[0]
    waited = spear("result", "--node", n1, task_id)  # (waits for its end)
    assert waited.returncode == 0, waited.stderr

    shown = spear("status", "--node", n1, task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    trace_id = status["trace_id"]
    assert len(trace_id) == 32 and status["node"] == "node-2"
    text = spear("status", "--node", n1, task_id)
    assert f"trace:     {trace_id}" in text.stdout, text.stdout

    wanted = {"spear.submit", "spear.place", "spear.forward", "spear.task", "spear.run"}

    def whole() -> list[dict[str, Any]] | None:
        spans = receiver.of_trace(trace_id)
        return spans if wanted <= {s["name"] for s in spans} else None

    spans = assert_eventually(whole, timeout=30)
    by_name = {s["name"]: s for s in spans}
    # Who made each span, and that each hangs from the one before it, across processes.
    assert by_name["spear.submit"]["process"] == "spear-cli"
    assert by_name["spear.place"]["process"] == "node-1"
    assert by_name["spear.forward"]["process"] == "node-1"
    assert by_name["spear.task"]["process"] == "node-2"
    assert by_name["spear.run"]["process"] == "node-2"
    chain = ["spear.submit", "spear.place", "spear.forward", "spear.task", "spear.run"]
    assert by_name["spear.submit"]["parent"] == ""
    for parent, child in zip(chain, chain[1:], strict=False):
        assert by_name[child]["parent"] == by_name[parent]["span_id"], (parent, child)
    assert by_name["spear.place"]["attributes"]["spear.placed_on"] == "node-2"
    assert by_name["spear.task"]["attributes"]["spear.task.id"] == task_id
    assert by_name["spear.submit"]["attributes"]["spear.task.id"] == task_id
