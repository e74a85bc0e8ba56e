"""etcd as child processes: one member on loopback for the tests and `spear cluster up
--etcd`, or a cluster of members on fixed addresses with their data kept across restarts.

A single member binds port 0 itself and logs the address it got, so nothing picks a
"free" port and races to bind it: the client URL is read from etcd's own log. The members
of a cluster must know each other's peer URLs before they start, and a member restarted
must come back where its peers expect it, so a cluster's addresses are fixed: by default
etcd's own local layout (ports 2379/2380, 22379/22380, 32379/32380 on 127.0.0.1), or
anything given, such as one loopback address per member (the whole of 127.0.0.0/8 is
loopback on Linux, so tests take a random 127.x.y.0 block and keep etcd's ports).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spear.errors import InvalidArgument, StorageError, Unavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

_SERVING = "serving client traffic"
_LOCAL_PORTS = ((2379, 2380), (22379, 22380), (32379, 32380))  # etcd's Procfile layout


@dataclass(frozen=True, slots=True)
class EtcdMember:
    """Where one member of an etcd cluster serves clients and talks to its peers."""

    name: str
    host: str = "127.0.0.1"
    client_port: int = 2379
    peer_port: int = 2380

    def __post_init__(self) -> None:
        for port in (self.client_port, self.peer_port):
            if not 0 < port < 65536:
                raise InvalidArgument(f"etcd member {self.name}: port {port} out of range")
        if self.client_port == self.peer_port:
            raise InvalidArgument(f"etcd member {self.name}: client and peer ports are equal")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


def local_members(
    size: int = 3, *, hosts: Sequence[str] | None = None, name: str = "spear"
) -> list[EtcdMember]:
    """`size` members on loopback: etcd's ports on one host, or etcd's first ports on
    one host each (`hosts`)."""
    if size not in (1, 3, 5):
        raise InvalidArgument(f"an etcd cluster has 1, 3 or 5 members, not {size}")
    if hosts is not None:
        if len(hosts) != size:
            raise InvalidArgument(f"{size} etcd members need {size} hosts, got {len(hosts)}")
        return [EtcdMember(f"{name}-{i + 1}", host) for i, host in enumerate(hosts)]
    if size > len(_LOCAL_PORTS):
        raise InvalidArgument(f"give {size} hosts for {size} members on etcd's ports")
    return [
        EtcdMember(f"{name}-{i + 1}", "127.0.0.1", client, peer)
        for i, (client, peer) in enumerate(_LOCAL_PORTS[:size])
    ]


class EtcdProcess:
    """One `etcd` member from `data_dir`: alone on ports the kernel chose (`member` None),
    or as `member` of the cluster `initial_cluster` lists (`name=peer_url,...`)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        name: str = "spear",
        member: EtcdMember | None = None,
        initial_cluster: str | None = None,
        cluster_token: str = "spear-etcd",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = binary or shutil.which("etcd") or "/usr/bin/etcd"
        self.member = member
        self.name = member.name if member else name
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token
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

    def _command(self) -> list[str]:
        member = self.member
        if member is None:
            zero = "http://127.0.0.1:0"
            urls = {"client": zero, "peer": zero, "cluster": f"{self.name}={zero}"}
        else:
            urls = {
                "client": member.client_url,
                "peer": member.peer_url,
                "cluster": self.initial_cluster or f"{member.name}={member.peer_url}",
            }
        return [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir / "member-data"),
            "--listen-client-urls", urls["client"], "--advertise-client-urls", urls["client"],
            "--listen-peer-urls", urls["peer"], "--initial-advertise-peer-urls", urls["peer"],
            "--initial-cluster", urls["cluster"], "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
            "--logger", "zap", "--log-outputs", str(self.log_path),
            "--enable-grpc-gateway=false",
            # Heartbeats rewrite node records every second: keep etcd's history short.
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "5m",
        ]  # fmt: skip

    def spawn(self) -> None:
        """Start the process without waiting (a cluster's members wait for each other)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if not os.path.exists(self.binary):
            raise StorageError(f"etcd not found at {self.binary} (apt-get install etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():  # the readiness line must be this run's
            self.log_path.replace(self.log_path.with_suffix(".log.prev"))
        self.endpoint = None
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_serving(self, deadline: float) -> str:
        """Block until the member serves clients (a cluster member: once it has joined)."""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise StorageError(f"etcd exited with {code} at start; see {self.log_path}")
            endpoint = self._served_address()
            if endpoint is not None:
                self.endpoint = endpoint
                return endpoint
            time.sleep(0.01)  # polling etcd's log for its readiness line, with a deadline
        raise Unavailable(f"etcd {self.name} did not start serving in time; see {self.log_path}")

    def start(self, timeout_s: float = 20.0) -> str:
        """Start etcd and return its `HOST:PORT` once it serves clients."""
        self.spawn()
        try:
            return self.wait_serving(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise

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

    @property
    def pids(self) -> list[int]:
        """The running process's id (none when stopped)."""
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def kill(self) -> None:
        """SIGKILL, as a crash: the data dir stays as the crash left it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

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


class EtcdCluster:
    """A cluster of etcd members (3 by default, on `local_members()`), each with its data
    under `base/<member name>/`: stopped and started again, it comes back with its data."""

    def __init__(
        self,
        base: Path,
        members: Sequence[EtcdMember] | None = None,
        *,
        binary: str | None = None,
        cluster_token: str = "spear-etcd",
    ) -> None:
        self.base = Path(base)
        self.members = list(members) if members is not None else local_members()
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"etcd member names repeat: {names}")
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.processes = [
            EtcdProcess(
                self.base / m.name,
                binary=binary,
                member=m,
                initial_cluster=initial,
                cluster_token=cluster_token,
            )
            for m in self.members
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """`etcd://HOST:PORT,...`: every member, for `--kv` and `EtcdKV.connect`."""
        return "etcd://" + ",".join(self.endpoints)

    @property
    def pids(self) -> list[int]:
        """The running members' process ids."""
        return [pid for process in self.processes for pid in process.pids]

    def start(self, timeout_s: float = 30.0) -> list[str]:
        """Start every member (they need a quorum to serve) and wait until all serve."""
        for process in self.processes:
            process.spawn()
        deadline = time.monotonic() + timeout_s
        try:
            for process in self.processes:
                process.wait_serving(deadline)
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def start_member(self, index: int, timeout_s: float = 30.0) -> str:
        """(Re)start one member on its address and data; returns once it serves again."""
        process = self.processes[index]
        process.spawn()
        return process.wait_serving(time.monotonic() + timeout_s)

    def stop(self) -> None:
        """Stop every member. Safe to call twice."""
        for process in self.processes:
            process.stop()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_etcd(
    base: Path,
    members: int = 1,
    *,
    hosts: Sequence[str] | None = None,
    ephemeral: bool = False,
    timeout_s: float = 30.0,
) -> EtcdProcess | EtcdCluster:
    """Start etcd for a local spear cluster (`spear cluster up --etcd N`), data under `base`.

    `members` 1, 3 or 5 on fixed addresses (`local_members`: etcd's ports on 127.0.0.1,
    or one host each), so a restarted etcd comes back where the SMS looks for it, with
    its data. `ephemeral` (one member only): ports the kernel picks, for tests. Either
    way the result has `url` (for `--kv`), `pids` and `stop()`.
    """
    if ephemeral:
        if members != 1 or hosts is not None:
            raise InvalidArgument("an ephemeral etcd is one member on ports the kernel picks")
        process = EtcdProcess(base)
        process.start(timeout_s)
        return process
    cluster = EtcdCluster(base, local_members(members, hosts=hosts))
    cluster.start(timeout_s)
    return cluster
