"""`DeferredAgent`: a worker agent built when a task first needs its runtime.

Every node offers both runtimes, but a short CLI process (`spear tasks`, `spear run
agent.wasm`) uses one or none: importing the wasm agent costs ~15 ms (wasmtime's
bindings) and the process agent a few more. The node holds a DeferredAgent per runtime
and the real agent is imported and made on the first `prepare` or `start`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spear.core.worker import WorkerAgent

if TYPE_CHECKING:
    from collections.abc import Callable

    from spear.core.models import Runtime, Task
    from spear.core.worker import Execution, TaskContext


class DeferredAgent(WorkerAgent):
    """The agent `make()` returns, made on first use; any other attribute is the real
    agent's (so `node.agents["process"].cgroup` reads as before)."""

    def __init__(self, runtime: Runtime, make: Callable[[], WorkerAgent]) -> None:
        self.runtime = runtime
        self._make = make
        self._agent: WorkerAgent | None = None
        self._serving = False

    @property
    def agent(self) -> WorkerAgent:
        """The real agent (made now if it was not yet)."""
        if self._agent is None:
            self._agent = self._make()
        return self._agent

    @property
    def made(self) -> bool:
        return self._agent is not None

    async def _started(self) -> WorkerAgent:
        agent = self.agent
        if not self._serving:
            self._serving = True
            await agent.start_service()
            # From now on a task's prepare and start are the real agent's own, called
            # directly: no hop through this object on every task (~2-4 us each).
            vars(self).update(prepare=agent.prepare, start=agent.start)
        return agent

    async def warm(self) -> None:
        """Make and start the real agent now (a daemon, before its first task)."""
        await self._started()

    async def prepare(self, task: Task) -> None:
        await (await self._started()).prepare(task)

    async def start(self, ctx: TaskContext) -> Execution:
        return await (await self._started()).start(ctx)

    async def aclose(self) -> None:
        if self._agent is not None:
            self._serving = False
            vars(self).pop("prepare", None)
            vars(self).pop("start", None)
            await self._agent.aclose()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_agent", "_make", "_serving"):
            raise AttributeError(name)
        return getattr(self.agent, name)
