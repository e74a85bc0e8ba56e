"""Request mode: an HTTP route's WASM agent run in the node's process, without a task.

A route in `mode = "request"` runs each request's guest straight through the node's
WASM worker agent (its compiled-module cache, InstancePre and pooled instances, inline on
the event loop once the module's runs proved short): no task record in the KV, no log
file, no stored result. What is kept is this module's `RequestLog`, the last requests and
the last failures in memory, which `spear route requests` (GET /api/routes/requests)
shows by request id, the id every answer carries. A request that cannot run here (the
module imports spear hostcalls, the node is draining, or in a cluster the scheduler would
place it elsewhere) runs as a task, as in task mode (docs/triggers.md#request-mode).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spear.core.models import FunctionSpec, Runtime, Task, TaskState
from spear.core.worker import ExecutionControl, NodeServices, TaskContext, TaskIO
from spear.web._cgi import EncodedEnv, ResponseHead

if TYPE_CHECKING:
    from collections.abc import Callable

    from spear.core.worker import Execution
    from spear.node.api import NodeAPI
    from spear.web._routes import Route

KEEP_REQUESTS = 512  # the last requests kept, and separately the last failures
STDERR_TAIL_BYTES = 4096  # of what a request's guest wrote to stderr, the last bytes kept


@dataclass(slots=True)
class RequestRecord:
    """What is kept of one request-mode request (in memory, see `RequestLog`)."""

    request_id: str
    route: str
    method: str
    path: str
    started_at: float  # wall clock
    status: int = 0  # the HTTP status answered (0: none, the client went away first)
    seconds: float = 0.0
    ran: str = "here"  # "here" (request mode), or "task <id>" (it fell back to a task)
    exit_code: int | None = None
    reason: str | None = None  # why the guest failed (exit status, trap, timeout, cancel)
    stderr: bytearray = field(default_factory=bytearray)

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data
        if len(self.stderr) > STDERR_TAIL_BYTES:
            del self.stderr[: len(self.stderr) - STDERR_TAIL_BYTES]

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500 or self.reason is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "route": self.route,
            "method": self.method,
            "path": self.path,
            "started_at": self.started_at,
            "status": self.status,
            "seconds": round(self.seconds, 6),
            "ran": self.ran,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "stderr": self.stderr.decode("utf-8", "replace"),
        }


class RequestLog:
    """The node's last request-mode requests, and its last failed ones, in memory.

    Two bounded rings: a burst of successes never pushes the failures out. The records
    are gone when the node stops (request mode's trade: docs/triggers.md#request-mode)."""

    def __init__(self, keep: int = KEEP_REQUESTS) -> None:
        self.recent: collections.deque[RequestRecord] = collections.deque(maxlen=keep)
        self.failures: collections.deque[RequestRecord] = collections.deque(maxlen=keep)
        self.served = 0
        self.failed = 0

    def add(self, record: RequestRecord) -> None:
        self.recent.append(record)
        self.served += 1
        if record.failed:
            self.failures.append(record)
            self.failed += 1

    def find(self, request_id: str) -> RequestRecord | None:
        for ring in (self.failures, self.recent):
            for record in reversed(ring):
                if record.request_id == request_id:
                    return record
        return None

    def latest(self, limit: int, failed: bool = False) -> list[RequestRecord]:
        ring = self.failures if failed else self.recent
        return list(ring)[::-1][:limit]


class RoutePlan:
    """What a request-mode route's requests share, made on its first: its spec with the
    route's timeout, its environment's fixed part (`EncodedEnv`), and the responses its
    guest wrote before, parsed (a guest that answers the same bytes again is not parsed
    again)."""

    __slots__ = ("env", "heads", "route", "spec")
    KEEP_HEADS = 64  # distinct responses remembered, each up to HEAD_CACHE_BYTES
    HEAD_CACHE_BYTES = 1024

    def __init__(self, route: Route) -> None:
        spec = route.spec
        timeout = (
            route.timeout_s if spec.timeout_s is None else min(spec.timeout_s, route.timeout_s)
        )
        self.route = route
        self.spec = with_fields(spec, timeout_s=timeout)  # (its env: the route's own)
        self.env = EncodedEnv(spec.env, route.base, route.path)
        self.heads: dict[bytes, Answer] = {}

    def answer(self, output: bytes) -> Answer:
        """The guest's whole `output` as a response: status, headers, body."""
        known = self.heads.get(output)
        if known is not None:
            return known
        head = ResponseHead()
        if not head.feed(output):
            head.end()
        length = () if any(name == b"content-length" for name, _ in head.headers) else (
            (b"content-length", str(len(head.body_start)).encode()),
        )  # fmt: skip
        answer = Answer(head.status, tuple(head.headers), length, head.body_start)
        if len(output) <= self.HEAD_CACHE_BYTES:
            if len(self.heads) >= self.KEEP_HEADS:
                self.heads.clear()
            self.heads[output] = answer
        return answer


@dataclass(frozen=True, slots=True)
class Answer:
    """A guest's parsed response: its headers, then `x-request-id`, then `length` (its
    Content-Length, if the guest set none)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    length: tuple[tuple[bytes, bytes], ...]
    body: bytes


class DirectRunner:
    """Starts request-mode guests on the node behind `api` (an InProcessNode or a
    ClusterNode: anything with `.node`, the Spearlet, and for a cluster `.scheduler`)."""

    def __init__(self, api: NodeAPI) -> None:
        self.api = api
        self.log = RequestLog()
        self._name = ""
        self._plans: dict[str, RoutePlan] = {}

    def plan(self, route: Route) -> RoutePlan:
        """`route`'s plan, made again when the route was replaced."""
        plan = self._plans.get(route.path)
        if plan is None or plan.route is not route:
            if len(self._plans) >= 4096:
                self._plans.clear()
            plan = self._plans[route.path] = RoutePlan(route)
        return plan

    def here(self, spec: FunctionSpec) -> bool:
        """Whether a request of `spec` may run here, in this process, now."""
        api: Any = self.api
        if spec.runtime is not Runtime.WASM or getattr(api, "draining", False):
            return False
        local = getattr(api, "local", None)  # a ClusterNode: its InProcessNode
        if local is not None and getattr(local, "draining", False):
            return False
        scheduler = getattr(api, "scheduler", None)
        return scheduler is None or bool(scheduler.fits_here_now(spec))

    async def start(
        self,
        spec: FunctionSpec,
        request_id: str,
        stdin: bytes | None,
        stdout: Callable[[bytes], None],
        stderr: Callable[[bytes], None],
        env: tuple[list[bytes], list[bytes]] | None = None,
    ) -> tuple[Execution, ExecutionControl] | None:
        """The guest's execution, ready to run (`run_now()`, else `await wait()`), or None
        if its module needs more than WASI (it runs as a task then). `env`: its
        environment, encoded (`EncodedEnv`), in place of the spec's."""
        node: Any = getattr(self.api, "node", None)
        agent = None if node is None else node.agents.get(Runtime.WASM)
        if agent is None:
            return None
        task = Task(
            id=f"request-{request_id}",
            spec=spec,
            state=TaskState.RUNNING,
            created_at=time.time(),
            node=node.name,
        )
        await agent.prepare(task)  # (the compiled module and its InstancePre, cached)
        timeout = spec.timeout_s
        control = ExecutionControl(None if timeout is None else time.monotonic() + timeout)
        ctx = TaskContext(task, control, TaskIO(stdout, stderr, stdin), _no_agent_log, _NO_SERVICES)
        execution = await agent.start(ctx)
        if not getattr(execution, "wasi_only", False):
            return None
        if env is not None:
            execution.wasi_env = env
        return execution, control


# A WASI-only guest's context offers it no service (it has no hostcall to reach one).
_NO_SERVICES = NodeServices()


def _no_agent_log(_level: str, _message: str) -> None:
    """A WASI-only guest has no hostcall to log with; nothing reaches here."""


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(FunctionSpec))


def with_fields(spec: FunctionSpec, **changes: Any) -> FunctionSpec:
    """`dataclasses.replace(spec, **changes)` without checking the spec again: for a
    route's spec (checked when the route was added) given a request's CGI variables
    (header names are HTTP tokens, values have no NUL: web/_cgi.py), for each request."""
    new = object.__new__(FunctionSpec)
    for name in _SPEC_FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(spec, name))
    return new
