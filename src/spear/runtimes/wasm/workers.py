"""Worker threads for blocking guest code, with results handed to the event loop in bursts.

Each job runs a blocking function (a wasm call) on a thread and resolves an asyncio future
with its result. What `anyio.to_thread` does per call, this does for many calls at once:

- Results reach the event loop in bursts: a thread that finishes a job queues the result
  and wakes the loop only if no wake-up is already on its way, so ten thousand short jobs
  cost a few wake-ups, not ten thousand.
- Few threads for short jobs: the pool keeps `core` threads (one per CPU) busy and adds
  threads only when jobs wait and none was picked up for `spawn_after_s`, which means
  every thread is held by a long-running guest. Sleeping agents each get a thread that
  way, up to `max_threads`, while a burst of short jobs is not spread over dozens of
  threads that would only pass Python's GIL back and forth.
- Idle threads beyond `core` exit after `idle_s`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, TypeVar

from spear._logging import logger

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
_STOP = object()


class WorkerPool:
    def __init__(
        self,
        max_threads: int,
        *,
        core: int | None = None,
        spawn_after_s: float = 0.005,
        idle_s: float = 10.0,
        name: str = "spear-worker",
    ) -> None:
        self.max_threads = max(1, max_threads)
        self.core = min(self.max_threads, core or os.cpu_count() or 2)
        self._spawn_after_s = spawn_after_s
        self._idle_s = idle_s
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0  # jobs submitted and not yet picked up
        self._lock = threading.Lock()
        self._idle = 0
        self._taken = 0  # jobs picked up so far: the watcher's measure of progress
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._all: set[threading.Thread] = set()  # the pool's threads
        # Per event loop: finished jobs waiting to be delivered by the wake-up on its way.
        self._done: dict[asyncio.AbstractEventLoop, deque[Any]] = {}

    @property
    def threads(self) -> int:
        return len(self._all)

    async def run(self, fn: Callable[[], T], cleanup: Callable[[], None] | None = None) -> T:
        """`fn()` on a worker thread; its result, or its exception raised here.

        `cleanup()` runs on that thread after the result is on its way to the loop
        (freeing what the caller does not need to wait for).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.submit(loop, fn, future, cleanup)
        return await future

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[], Any],
        future: asyncio.Future[Any],
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            self._queued += 1
            if self._queued > self._idle:  # no idle thread left for this job
                if len(self._all) < self.core:
                    self._start_thread()
                elif self._watcher is None and len(self._all) < self.max_threads:
                    self._watcher = threading.Thread(
                        target=self._watch, name=f"{self._name}-watch", daemon=True
                    )
                    self._watcher.start()
        self._jobs.put((loop, fn, future, cleanup))

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._all.add(thread)
        thread.start()

    def _watch(self) -> None:
        """Add threads while jobs wait and no thread took one for `spawn_after_s`.

        No progress means every thread is held by a long-running guest. The pool then
        doubles (sleeping agents get their threads within a few periods); a backlog of
        short jobs that keeps moving never grows it.
        """
        taken = -1
        while True:
            with self._lock:
                if self._closed or not self._queued or len(self._all) >= self.max_threads:
                    self._watcher = None
                    return
                stalled = self._taken == taken and self._idle == 0
                if stalled:
                    room = self.max_threads - len(self._all)
                    for _ in range(min(self._queued, len(self._all), room)):
                        self._start_thread()
                taken = self._taken
            time.sleep(self._spawn_after_s)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            with self._lock:
                self._idle += 1
            timeout = None if len(self._all) <= self.core else self._idle_s
            try:
                job = jobs.get(timeout=timeout)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if len(self._all) > self.core:
                        self._all.discard(threading.current_thread())
                        return
                continue
            with self._lock:
                self._idle -= 1
                if job is _STOP:
                    self._all.discard(threading.current_thread())
                    return
                self._queued -= 1
                self._taken += 1
            loop, fn, future, cleanup = job
            try:
                result = (True, fn())
            except BaseException as exc:  # delivered to the awaiting task, not lost here
                result = (False, exc)
            self._deliver(loop, future, result)
            del result, fn, future
            if cleanup is not None:
                try:
                    cleanup()
                except Exception:  # pragma: no cover - freeing must not kill the thread
                    logger.exception("worker cleanup failed")
                del cleanup

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any
    ) -> None:
        with self._lock:
            done = self._done.get(loop)
            if done is not None:  # a wake-up is on its way and takes this too
                done.append((future, result))
                return
            self._done[loop] = deque([(future, result)])
        try:
            loop.call_soon_threadsafe(self._drain, loop)
        except RuntimeError:  # the loop closed: nobody awaits these any more
            with self._lock:
                self._done.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            done = self._done.pop(loop, None)
        for future, (ok, value) in done or ():
            if future.done():  # the awaiting task was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the threads once they finish what they run, waiting up to `timeout_s`.

        Waiting matters at exit: a thread still freeing a wasm store when the interpreter
        shuts down would be torn down inside wasmtime.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in range(len(self._all)):
                    self._jobs.put(_STOP)
            threads = list(self._all)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
