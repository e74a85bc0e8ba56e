"""The chat example (examples/chat) in a real headless Chromium: the page, served by an
agent's HTTP route, talks over a WebSocket route to an agent that streams the local
model's answer (SmolLM2, docs/models.md) piece by piece."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT, Cli
from test_dashboard_browser import WAIT_MS, Page, browser, shots
from web_helpers import WebDaemon

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.browser
__all__ = ["browser", "shots"]  # (fixtures, used by name)
CHAT = ROOT / "examples" / "chat"


def test_the_chat_page_streams_an_answer_over_a_websocket(
    data_dir: Path, cli: Cli, browser: Any, shots: Path
) -> None:
    node = WebDaemon(data_dir)
    try:
        for args in (
            ("/chat/ws", str(CHAT / "chat_agent.py"), "--websocket", "--public",
             "--env", "CHAT_MAX_TOKENS=24"),
            ("/chat", str(CHAT / "page.py"), "--public", "-X", "GET"),
        ):  # fmt: skip
            proc = cli("route", "add", *args)
            assert proc.returncode == 0, proc.stderr
        tab = Page(browser)
        page = tab.page
        page.goto(node.url + "/chat")
        page.wait_for_selector("#status:text-is('connected')", timeout=WAIT_MS)
        page.fill("#q", "What is the capital of France?")
        page.click("#send")
        # The answer grows in place as the pieces arrive, then the agent says it is done.
        page.wait_for_function(
            "document.querySelector('p.bot')?.textContent.length > 0", timeout=60_000
        )
        page.wait_for_selector("#status:text-is('answered')", timeout=120_000)
        answer = page.text_content("p.bot") or ""
        assert answer.strip(), "no answer"
        assert page.text_content("p.you") == "What is the capital of France?"
        assert not page.is_disabled("#q")  # ready for the next question, same socket
        page.screenshot(path=str(shots / "chat.png"))
        assert tab.errors == []
    finally:
        node.stop()
