"""A cluster on this machine: one SMS and N SPEARlets as processes on loopback, each with
its own data dir and a kernel-chosen port (optionally on a private etcd). Used by
`spear cluster up/down`, the cluster tests and the cluster benchmark.

Layout under `base`: `sms/`, `node-1/`, ... (data dirs), `etcd/` with `--etcd`, and
`cluster.json` naming every process (pid, address), which `spear cluster down` reads.
The cluster's CA is `ca/` (made on first start); each process gets its certificate in its
data dir's `tls/`, and `launcher/` holds the one this launcher calls with (`credentials`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path  # noqa: TC003 - dataclass field type
from typing import TYPE_CHECKING, Any

from spear.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from spear.transport.channels import Credentials

STATE_FILE = "cluster.json"


@dataclass
class Member:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    pid: int = 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _toml(values: dict[str, Any]) -> str:
    lines = []
    tables = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append(
                f"[{key}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in value.items())
            )
        else:
            lines.append(f"{key} = {json.dumps(value)}\n")
    return "".join(lines) + "\n".join(tables)


@dataclass
class LocalCluster:
    base: Path
    nodes: int = 3
    etcd: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    node_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    sms: Member | None = None
    members: list[Member] = field(default_factory=list)
    etcd_process: Any = None
    startup_timeout_s: float = 30.0
    ca: Path | None = None  # the cluster's CA (default base/ca); clusters may share one
    # etcd on fixed addresses, its data kept under base/etcd/ across restarts (issue 16):
    # 1, 3 or 5 members (0: one member on ports the kernel picks, for tests), on etcd's
    # local ports or one host each (`etcd_hosts`, e.g. 127.x.y.1-3).
    etcd_members: int = 0
    etcd_hosts: tuple[str, ...] | None = None

    def _spawn(self, member: Member, args: list[str]) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
        env["SPEAR_HOME"] = str(member.data_dir)
        env["SPEAR_CONFIG"] = str(member.data_dir / "config.toml")
        out = open(member.data_dir / "stdout.log", "wb")
        err = open(member.data_dir / "stderr.log", "wb")
        member.proc = subprocess.Popen(
            [sys.executable, "-m", "spear", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        out.close()
        err.close()
        member.pid = member.proc.pid
        member.address = ""

    def _await_address(self, member: Member) -> str:
        deadline = time.monotonic() + self.startup_timeout_s
        path = member.data_dir / "stdout.log"
        while time.monotonic() < deadline:
            text = path.read_text() if path.exists() else ""
            if text.strip():
                member.address = text.split()[0]
                return member.address
            if member.proc is not None and member.proc.poll() is not None:
                err = (member.data_dir / "stderr.log").read_text()[-2000:]
                raise Unavailable(f"{member.name} exited with {member.proc.returncode}: {err}")
            time.sleep(0.02)  # polling the child's first line, with a deadline
        raise Unavailable(f"{member.name} did not report an address in time")

    @property
    def ca_dir(self) -> Path:
        return self.ca or self.base / "ca"

    def _certify(self, name: str, directory: Path) -> None:
        """A certificate from the cluster's CA for `name` in `directory` (kept if there)."""
        from spear.transport import tls

        if not (self.ca_dir / tls.CA_KEY).exists():
            tls.create_ca(self.ca_dir)
        if not tls.TlsFiles(directory).present:
            tls.issue(self.ca_dir, name, directory)

    def credentials(self) -> Credentials:
        """How this launcher (tests, benchmarks) calls the cluster's processes: with a
        certificate of its own from the cluster's CA."""
        from spear.transport.channels import Credentials
        from spear.transport.tls import TlsFiles

        directory = self.base / "launcher"
        self._certify("launcher", directory)
        return Credentials(tls=TlsFiles(directory))

    def write_config(self, member: Member, extra: dict[str, Any]) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        self._certify(member.name, member.data_dir / "tls")
        values = {**self.timings, **extra}
        (member.data_dir / "config.toml").write_text(_toml(values))

    def start_sms(self, listen: str = "127.0.0.1:0") -> str:
        """Start (or restart, e.g. on its old `listen` address) the SMS."""
        if self.sms is None:
            self.sms = Member("sms", self.base / "sms")
        kv: list[str] = []
        if self.etcd:
            if self.etcd_process is None:
                from spear.store.etcd_server import start_etcd

                self.etcd_process = start_etcd(
                    self.base / "etcd",
                    self.etcd_members or 1,
                    hosts=self.etcd_hosts,
                    ephemeral=not self.etcd_members,
                )
            kv = ["--kv", self.etcd_process.url]
        self.write_config(self.sms, {})
        self._spawn(self.sms, ["serve", "--role", "sms", "--listen", listen, *kv])
        return self._await_address(self.sms)

    def start_node(self, index: int) -> Member:
        name = f"node-{index}"
        member = next((m for m in self.members if m.name == name), None)
        if member is None:
            member = Member(name, self.base / name)
            self.members.append(member)
        assert self.sms is not None
        extra = {"node_name": name, **self.node_settings.get(name, {})}
        self.write_config(member, extra)
        self._spawn(
            member,
            ["serve", "--role", "spearlet", "--listen", "127.0.0.1:0", "--sms", self.sms.address],
        )
        self._await_address(member)
        return member

    def start(self) -> LocalCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self.start_sms()
        for i in range(1, self.nodes + 1):
            self.start_node(i)
        self.save()
        self.wait_registered()
        return self

    def wait_registered(self) -> None:
        """Return once the SMS lists every running SPEARlet as healthy."""
        import anyio

        from spear.transport.sms_client import SmsClient

        assert self.sms is not None
        want = {m.name for m in self.members if m.alive()}
        credentials = self.credentials()

        async def healthy() -> set[str]:
            address = self.sms.address if self.sms else ""
            async with SmsClient(address, timeout_s=5, credentials=credentials) as client:
                return {n.name for n in await client.nodes(live_only=True)}

        deadline = time.monotonic() + self.startup_timeout_s
        while not want <= anyio.run(healthy):
            if time.monotonic() > deadline:
                raise Unavailable(f"not every node registered with the SMS: {sorted(want)}")
            time.sleep(0.02)  # polling the SMS, with a deadline

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise NotFound(f"no member {name}")

    def save(self) -> None:
        procs = [m for m in [*self.members, self.sms] if m is not None]
        state = {
            "sms": self.sms.address if self.sms else "",
            "etcd": self.etcd_process.url if self.etcd_process else "",
            "etcd_pids": self.etcd_process.pids if self.etcd_process else [],
            "members": [
                {"name": m.name, "address": m.address, "pid": m.pid, "data_dir": str(m.data_dir)}
                for m in procs
            ],
        }
        (self.base / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @staticmethod
    def stop_member(member: Member, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        proc = member.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)
        if self.sms is not None:
            self.stop_member(self.sms)
        if self.etcd_process is not None:
            self.etcd_process.stop()
        (self.base / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_saved(base: Path, timeout_s: float = 15.0) -> int:
    """Stop the processes a `cluster.json` under `base` names; returns how many were running."""
    try:
        state = json.loads((base / STATE_FILE).read_text())
    except FileNotFoundError:
        raise NotFound(f"no cluster is running under {base}") from None
    pids = [int(m["pid"]) for m in state.get("members", [])]
    if state.get("etcd_pid"):  # (a cluster.json from before etcd clusters)
        pids.append(int(state["etcd_pid"]))
    pids.extend(int(pid) for pid in state.get("etcd_pids", ()))
    stopped = 0
    for pid in pids:  # SPEARlets first (they deregister), then the SMS, then etcd
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        stopped += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)  # waiting for a non-child process to exit, with a deadline
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (base / STATE_FILE).unlink(missing_ok=True)
    return stopped
