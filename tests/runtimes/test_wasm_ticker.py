"""The epoch ticker (runtimes/wasm/agent.py `_Ticker`): once stopped it never touches an
engine again, even when its thread is too slow to end within `stop`'s wait (an increment
running while the interpreter exits and frees the engine would be use after free)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from spear.runtimes.wasm import agent

if TYPE_CHECKING:
    import pytest


class _Engine:
    def __init__(self) -> None:
        self.ticks = 0

    def increment_epoch(self) -> None:
        self.ticks += 1


def test_a_stopped_ticker_never_ticks_again_even_if_its_thread_was_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = _Engine()
    ticker = agent._Ticker([engine])  # type: ignore[list-item]
    asleep, wake = threading.Event(), threading.Event()
    real_sleep = time.sleep

    def slow_sleep(seconds: float) -> None:
        if threading.current_thread().name == "spear-epoch":
            asleep.set()
            wake.wait(30)  # (a thread the machine did not run for a while)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(agent.time, "sleep", slow_sleep)
    monkeypatch.setattr(threading.Thread, "join", lambda self, timeout=None: None)
    with ticker:
        assert asleep.wait(30)
    ticker.stop()  # (its wait for the thread ends at once here: join is a no-op)
    ticks = engine.ticks
    wake.set()
    thread = ticker._thread
    assert thread is not None
    deadline = time.monotonic() + 30
    while thread.is_alive() and time.monotonic() < deadline:
        real_sleep(0.01)
    assert not thread.is_alive()
    assert engine.ticks == ticks  # woken after the stop: it ended without ticking


def test_a_running_ticker_ticks_its_engines() -> None:
    engine = _Engine()
    ticker = agent._Ticker([engine])  # type: ignore[list-item]
    try:
        with ticker:
            deadline = time.monotonic() + 30
            while engine.ticks < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert engine.ticks >= 3
    finally:
        ticker.stop()
