"""Warm children run in the cgroup their spare made while it waited
(runtimes/process/spare_cgroups.py): real fork servers, real cgroup v2 directories, real
hostcall connections."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from spear import FunctionSpec, Runtime, TaskState
from tests.conftest import assert_eventually
from tests.runtimes.test_process import (
    agent_of,
    cgroups_here,
    new_node,
    no_children_left,
    script,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["cgroups_here", "no_children_left"]  # (fixtures)

pytestmark = pytest.mark.usefixtures("cgroups_here")


def warm(path: str) -> FunctionSpec:
    return FunctionSpec(path, runtime=Runtime.PROCESS, warm=True)


async def test_a_warm_task_runs_in_its_spares_own_cgroup_removed_after(tmp_path: Path) -> None:
    where = script(
        tmp_path,
        """
        import os
        print(os.getpid(), open("/proc/self/cgroup").read().split("::")[1].strip())
        """,
    )
    async with new_node(tmp_path) as node:
        seen = []
        for _ in range(3):
            task = await node.run(warm(where))
            assert task.state is TaskState.COMPLETED
            pid, path = (await node.logs_of(task.id)).split()
            node_cgroup = agent_of(node).cgroup
            assert node_cgroup is not None
            assert path.decode() == f"{node_cgroup.path}/warm-{int(pid)}"
            seen.append(node_cgroup.directory / f"warm-{int(pid)}")
        assert len(set(seen)) == 3  # one each
        assert_eventually(lambda: not any(d.exists() for d in seen))
        spares = agent_of(node).warm_spares  # the spares waiting, each in its own
        assert_eventually(lambda: len(list(node_cgroup.directory.glob("warm-*"))) == spares)
    assert not node_cgroup.directory.exists()  # (and gone with the node)


async def test_a_warm_task_started_cold_gets_a_task_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server gone before the task began: it runs cold, in a cgroup the node
    made for it, and its hostcalls are admitted from there."""
    from spear.runtimes.process.forkserver import ForkServer, WarmUnavailable

    def gone(self: ForkServer, *args: object, **kw: object) -> None:
        raise WarmUnavailable("gone")

    monkeypatch.setattr(ForkServer, "spawn", gone)
    agent_py = script(
        tmp_path,
        """
        import os
        from spear import agent
        agent.put("cold", open("/proc/self/cgroup").read().encode())
        """,
    )
    async with new_node(tmp_path) as node:
        task = await node.run(warm(agent_py))
        assert task.state is TaskState.COMPLETED, await node.logs_of(task.id, "stderr")
        data, _ = await node.objects.get("cold")
        assert os.path.basename(bytes(data).decode().strip()) == task.id
