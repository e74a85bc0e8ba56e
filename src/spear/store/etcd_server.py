"""A single-member etcd on loopback, as a child process: for `spear cluster up --etcd`,
the tests and the benchmarks.

etcd binds port 0 itself and logs the address it got, so nothing picks a "free" port and
races to bind it: the client URL is read from etcd's own log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from spear.errors import StorageError, Unavailable

_SERVING = "serving client traffic"


class EtcdProcess:
    """`etcd` serving on 127.0.0.1 (ports chosen by the kernel) from `data_dir`."""

    def __init__(self, data_dir: Path, *, binary: str | None = None, name: str = "spear") -> None:
        self.data_dir = Path(data_dir)
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self.name = name
        self.endpoint: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def url(self) -> str:
        if self.endpoint is None:
            raise Unavailable("etcd is not started")
        return f"etcd://{self.endpoint}"

    def start(self, timeout_s: float = 20.0) -> str:
        """Start etcd and return its `HOST:PORT` once it serves clients."""
        if not os.path.exists(self.binary):
            raise StorageError(f"etcd not found at {self.binary} (apt-get install etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        zero = "http://127.0.0.1:0"
        cmd = [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir / "member-data"),
            "--listen-client-urls", zero, "--advertise-client-urls", zero,
            "--listen-peer-urls", zero, "--initial-advertise-peer-urls", zero,
            "--initial-cluster", f"{self.name}={zero}",
            "--logger", "zap", "--log-outputs", str(self.log_path),
            "--enable-grpc-gateway=false",
            # Heartbeats rewrite node records every second: keep etcd's history short.
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "5m",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StorageError(
                    f"etcd exited with {self.proc.returncode} at start; see {self.log_path}"
                )
            endpoint = self._served_address()
            if endpoint is not None:
                self.endpoint = endpoint
                return endpoint
            time.sleep(0.01)  # polling etcd's log for its bound port, with a deadline
        self.stop()
        raise Unavailable(f"etcd did not start serving within {timeout_s:g}s")

    def _served_address(self) -> str | None:
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if _SERVING not in line:
                continue
            try:
                address = json.loads(line).get("address")
            except ValueError:
                continue
            if isinstance(address, str) and not address.endswith(":0"):
                return address
        return None

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
