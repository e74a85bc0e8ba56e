"""The hook that keeps ended tasks' results (core/results.py), on a real node: each
namespace's results at its own keys, one namespace's failure said and not keeping the
others', and a failure to release references said with no result stored.

Written for mutation testing: each test states one behaviour exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from log_capture import SpearLog
from wat_tasks import hello

import spear
from spear.core.models import FunctionSpec, TaskState
from spear.core.namespaces import result_key
from spear.errors import ResourceExhausted, StorageError

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


async def _value(node: spear.LocalNode, key: str) -> bytes | None:
    try:
        return bytes((await node.objects.get(key))[0])
    except spear.NotFound:
        return None


async def test_each_namespaces_results_are_kept_at_its_keys_and_one_failure_stays_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = str(hello(tmp_path))
    async with spear.LocalNode(tmp_path / "home") as node:
        real = node.objects.store_results

        async def store_results(items: Any, *, key: Any) -> None:
            if key("x") == result_key("full", "x"):
                raise ResourceExhausted("the namespace's quota is used up")
            await real(items, key=key)

        monkeypatch.setattr(node.objects, "store_results", store_results)
        specs = [FunctionSpec(module, namespace=ns) for ns in ("team-a", "full", "team-b")]
        with SpearLog("WARNING", "{message}") as logged:
            done = await node.run_many([*specs, specs[0]])
        assert [t.state for t in done] == [TaskState.COMPLETED] * 4
        by_namespace = {t.spec.namespace: t for t in done[:3]}
        for ns in ("team-a", "team-b"):
            task = by_namespace[ns]
            assert await _value(node, result_key(ns, task.id)) == b"hello\n"
            assert await _value(node, f"results/{task.id}") is None  # (not the default's)
        assert await _value(node, result_key("team-a", done[3].id)) == b"hello\n"
        full = by_namespace["full"]
        assert await _value(node, result_key("full", full.id)) is None
        assert [line.rstrip() for line in logged] == [
            f"task(s) {full.id}: references or result not stored: the namespace's quota is used up"
        ]


async def test_a_failure_to_release_references_is_said_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = str(hello(tmp_path))
    async with spear.LocalNode(tmp_path / "home") as node:

        async def release_holders(holders: Any) -> None:
            raise StorageError("the disk said no")

        monkeypatch.setattr(node.objects, "release_holders", release_holders)
        with SpearLog("WARNING", "{message}") as logged:
            done = await node.run_many([FunctionSpec(module)] * 2)
        ids = [t.id for t in done]
        assert [await _value(node, result_key("default", i)) for i in ids] == [None, None]
        # One line per group of tasks that ended together (the wave's, unless one ended
        # EARLY_FINISH_S before the other), each task named once.
        named: list[str] = []
        for line in logged:
            tasks, _, reason = line.rstrip().partition(": references or result not stored: ")
            assert reason == "the disk said no"
            named += tasks.removeprefix("task(s) ").split(", ")
        assert sorted(named) == sorted(ids)
