"""Real `spear serve` daemons (a SPEARlet, the SMS) with their HTTP servers on port 0."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import assert_eventually, cli_env, stop_process

if TYPE_CHECKING:
    from pathlib import Path


class WebDaemon:
    """`spear serve` (`role` spearlet or sms) on free loopback ports; `url` is its HTTP
    server's, read from the file the daemon writes (DATA/<role>.http)."""

    def __init__(
        self, data_dir: Path, *extra: str, role: str = "spearlet", http: str = "127.0.0.1:0"
    ) -> None:
        self.data_dir = data_dir
        self.role = role
        if role == "sms" or "--sms" in extra:  # a cluster: certificates from one CA
            from spear.transport import tls

            ca = data_dir.parent / "ca"
            if not (ca / tls.CA_KEY).exists():
                tls.create_ca(ca)
            tls.issue(ca, data_dir.name, data_dir / "tls")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spear", "serve", "--role", role, "--listen", "127.0.0.1:0",
             "--http", http, "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(data_dir),
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            self.fail()
        self.address = line
        self.url_file = data_dir / f"{role}.http"
        self.url: str = "" if http == "off" else assert_eventually(self._url, timeout=30)
        from spear.transport.auth import read_owner_token

        # The HTTP server takes the gRPC server's tokens: the owner's, as `spear dashboard`.
        self.token = read_owner_token(data_dir) or ""
        self.headers = {"authorization": f"Bearer {self.token}"}

    def _url(self) -> str | None:
        if self.proc.poll() is not None:
            self.fail()
        try:
            return self.url_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def fail(self) -> None:
        self.proc.wait(timeout=30)
        err = self.proc.stderr.read().decode() if self.proc.stderr else ""
        pytest.fail(f"spear serve exited {self.proc.returncode}: {err}")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.get(self.url + path, timeout=10, headers=headers, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        return stop_process(self.proc, sig, timeout)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """An exposition parsed by prometheus_client: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
