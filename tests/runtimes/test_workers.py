"""runtimes/wasm/workers.py: the worker pool wasm guests run on."""

from __future__ import annotations

import threading

import anyio
import pytest

from spear.runtimes.wasm.workers import WorkerPool


async def test_results_and_errors_come_back_to_their_callers() -> None:
    pool = WorkerPool(4, core=2)
    try:
        results = {}

        async def one(i: int) -> None:
            results[i] = await pool.run(lambda: i * i)

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
        assert results == {i: i * i for i in range(500)}

        def boom() -> None:
            raise KeyError("from the thread")

        with pytest.raises(KeyError, match="from the thread"):
            await pool.run(boom)
        assert pool.threads <= 4
    finally:
        pool.close()


async def test_cleanup_runs_after_the_result_is_delivered() -> None:
    pool = WorkerPool(2, core=1)
    delivered = threading.Event()
    seen: list[bool] = []
    try:

        def cleanup() -> None:
            seen.append(delivered.wait(10))

        value = await pool.run(lambda: "done", cleanup=cleanup)
        delivered.set()  # the caller has the result while cleanup still waits for this
        assert value == "done"
        with anyio.fail_after(10):
            while not seen:
                await anyio.sleep(0.01)
        assert seen == [True]
    finally:
        pool.close()


async def test_jobs_that_block_get_threads_of_their_own_up_to_the_limit() -> None:
    pool = WorkerPool(8, core=1)
    started = threading.Semaphore(0)
    release = threading.Event()

    def sleeper() -> int:
        started.release()
        release.wait(30)
        return 1

    try:
        done = []

        async def one() -> None:
            done.append(await pool.run(sleeper))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
            # All eight run at once although the pool started with one thread: it grew
            # because no thread was free to take the waiting jobs.
            for _ in range(8):
                assert await anyio.to_thread.run_sync(started.acquire, True, 20)
            assert pool.threads == 8
            release.set()
        assert done == [1] * 8
    finally:
        release.set()
        pool.close()
    assert pool.threads == 0  # close() waited for every thread to stop
