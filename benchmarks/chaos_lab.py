"""A spear cluster in network namespaces, for the chaos suite and the faults benchmark.

Every process has an address of its own: the three etcd members, two SMS processes (one
leads, elected through etcd; the other stands by), the SPEARlets and the load generator
each live in a network namespace this lab creates, joined by veth pairs to a bridge in
one more namespace (the hub), on a random 10.x.y.0/24. Faults are
the kernel's: SIGKILL, a link set down (a partition), a token bucket on a link (tc tbf:
delay, and drops once its queue is full; this kernel has no netem module and no
iptables), a full tmpfs under a node's data dir. `down()` removes every namespace,
process and mount it made. Needs root (`ip netns`); `available()` says whether it can run.

Every wait is bounded in time (deadlines), every loop in count.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"
SMS_PORT = 7000
NODE_PORT = 7070
TIMINGS = {"heartbeat_s": 0.3, "unhealthy_after_s": 1.5, "dead_after_s": 3.0}
SMS_NAMES = ("sms", "sms2")
SMS_LEASE_TTL_S = 2  # the leader's election lease (core/sms_leader.py), its least


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None if this machine can host the lab, else why not."""
    if os.geteuid() != 0:
        return "the chaos lab needs root (ip netns)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the chaos lab needs iproute2 (ip, tc)"
    if not os.path.exists(ETCD_BINARY):
        return "the chaos lab needs etcd"
    name = f"spear-probe-{os.getpid()}"
    probe = _run("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"ip netns add failed: {probe.stderr.strip()}"
    _run("ip", "netns", "del", name, check=False)
    return None


@dataclass
class Proc:
    name: str
    ns: str
    ip: str
    data_dir: Path
    popen: subprocess.Popen[bytes] | None = None
    address: str = ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Lab:
    base: Path
    nodes: int = 3
    etcd_members: int = 3
    tag: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    procs: dict[str, Proc] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    etcd: Any = None
    subnet: str = ""

    # -- the network -------------------------------------------------------------------

    def ns(self, name: str) -> str:
        return f"sp{self.tag}-{name}"

    def _ip(self, index: int) -> str:
        return f"{self.subnet}.{index}"

    def _add_host(self, name: str, index: int) -> Proc:
        """A namespace with one interface, eth0 at 10.x.y.<index>, on the hub's bridge."""
        ns = self.ns(name)
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        hub = self.ns("hub")
        outside = f"v{self.tag}{name}"[:15]
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", outside, "netns", hub)
        _run("ip", "-n", hub, "link", "set", outside, "master", "br0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{self._ip(index)}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        proc = Proc(name, ns, self._ip(index), self.base / name)
        self.procs[name] = proc
        return proc

    def hub_link(self, name: str) -> str:
        return f"v{self.tag}{name}"[:15]

    def up(self) -> Lab:
        self.base.mkdir(parents=True, exist_ok=True)
        self.subnet = f"10.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        hub = self.ns("hub")
        _run("ip", "netns", "add", hub)
        self.namespaces.append(hub)
        _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", hub, "link", "set", "br0", "up")
        for i in range(1, self.etcd_members + 1):
            self._add_host(f"e{i}", 10 + i)
        for i, name in enumerate(SMS_NAMES):
            self._add_host(name, 20 + i)
        for i in range(1, self.nodes + 1):
            self._add_host(f"n{i}", 30 + i)
        self._add_host("cli", 50)
        self._certificates()
        return self

    def down(self) -> None:
        for proc in self.procs.values():
            self.kill(proc.name, signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.stop()
        for mount in self.mounts:
            _run("umount", "-l", str(mount), check=False)
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    # -- processes ---------------------------------------------------------------------

    def _certificates(self) -> None:
        from spear.transport import tls

        ca = self.base / "ca"
        tls.create_ca(ca)
        for proc in self.procs.values():
            if proc.name.startswith("e"):
                continue
            name = "launcher" if proc.name == "cli" else proc.name
            tls.issue(ca, name, proc.data_dir / "tls", hosts=(proc.ip,))

    def _env(self, proc: Proc) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
        env["SPEAR_HOME"] = str(proc.data_dir)
        env["SPEAR_CONFIG"] = str(proc.data_dir / "config.toml")
        return env

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = self.procs[name]
        proc.data_dir.mkdir(parents=True, exist_ok=True)
        with (
            open(proc.data_dir / "stdout.log", "wb") as out,
            open(proc.data_dir / "stderr.log", "ab") as err,
        ):
            proc.popen = subprocess.Popen(
                ["ip", "netns", "exec", proc.ns, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self._env(proc),
                start_new_session=True,
            )
        return proc.popen

    def _await_address(self, proc: Proc, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        path = proc.data_dir / "stdout.log"
        while time.monotonic() < deadline:
            text = path.read_text() if path.exists() else ""
            if text.strip():
                proc.address = text.split()[0]
                return proc.address
            if proc.popen is not None and proc.popen.poll() is not None:
                err = (proc.data_dir / "stderr.log").read_text()[-2000:]
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {err}")
            time.sleep(0.05)  # polling the child's first line, with a deadline
        raise RuntimeError(f"{proc.name} did not report its address in time")

    def _config(self, proc: Proc, extra: dict[str, Any]) -> None:
        lines = [f"{k} = {json.dumps(v)}\n" for k, v in {**TIMINGS, **extra}.items()]
        (proc.data_dir / "config.toml").write_text("".join(lines))

    def start_etcd(self) -> str:
        from spear.store.etcd_server import EtcdCluster, EtcdMember

        # etcd runs in its member's namespace: a wrapper enters it (its second argument
        # is the member's name, `--name eN`).
        wrapper = self.base / "etcd-in-netns.sh"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.ns("")}"$2" {ETCD_BINARY} "$@"\n')
        wrapper.chmod(0o755)
        members = [
            EtcdMember(f"e{i}", self.procs[f"e{i}"].ip) for i in range(1, self.etcd_members + 1)
        ]
        self.etcd = EtcdCluster(self.base / "etcd", members, binary=str(wrapper))
        self.etcd.start(timeout_s=60)
        return str(self.etcd.url)

    def start_sms(self, name: str | None = None) -> str:
        """Start one SMS (`name`), or each of them (the first to stand leads)."""
        if name is None:
            for each in SMS_NAMES:
                self.start_sms(each)
            return self.sms_addresses()
        sms = self.procs[name]
        self._config(sms, {"sms_lease_ttl_s": SMS_LEASE_TTL_S})
        kv = self.start_etcd() if self.etcd is None else str(self.etcd.url)
        listen = f"{sms.ip}:{SMS_PORT}"
        self.spawn(name, [sys.executable, "-m", "spear", "serve", "--role", "sms",
                          "--listen", listen, "--kv", kv])  # fmt: skip
        return self._await_address(sms)

    def sms_addresses(self) -> str:
        """Every SMS's address, as SPEARlets and clients take them (`--sms a,b`)."""
        return ",".join(f"{self.procs[n].ip}:{SMS_PORT}" for n in SMS_NAMES)

    def leader(self, timeout_s: float = 30.0) -> str:
        """The name of the one SMS whose log says it leads now (waiting for one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leading = [n for n in SMS_NAMES if self._leads(n)]
            if len(leading) == 1:
                return leading[0]
            time.sleep(0.05)  # polling the logs, with a deadline
        raise RuntimeError("no single SMS leads")

    def _leads(self, name: str) -> bool:
        proc = self.procs[name]
        if not proc.alive():
            return False
        try:
            text = (proc.data_dir / "stderr.log").read_text(errors="replace")
        except OSError:
            return False
        said = [ln for ln in text.splitlines() if "this SMS (" in ln and "leads" in ln]
        return bool(said) and "no longer leads" not in said[-1]

    def start_node(self, name: str) -> str:
        node = self.procs[name]
        self._config(node, {"node_name": name, "cpu_millis": 2000})
        listen = f"{node.ip}:{NODE_PORT}"
        self.spawn(name, [sys.executable, "-m", "spear", "serve", "--role", "spearlet",
                          "--listen", listen, "--sms", self.sms_addresses()])  # fmt: skip
        return self._await_address(node)

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def start(self, tmpfs_node: str | None = None, tmpfs_mib: int = 64) -> Lab:
        """etcd, the SMS, then the SPEARlets (`tmpfs_node`'s data dir on a small tmpfs)."""
        self.start_sms()
        for name in self.node_names():
            if name == tmpfs_node:
                path = self.procs[name].data_dir
                path.mkdir(parents=True, exist_ok=True)
                tls_copy = self.base / f"{name}-tls"
                shutil.copytree(path / "tls", tls_copy)
                _run("mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m", "tmpfs", str(path))
                self.mounts.append(path)
                shutil.copytree(tls_copy, path / "tls")
            self.start_node(name)
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen is None or proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        try:
            proc.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=20)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`spear ARGS` from the client's namespace, as the launcher."""
        cli = self.procs["cli"]
        env = self._env(cli)
        del env["SPEAR_CONFIG"]
        env["SPEAR_TLS_DIR"] = str(cli.data_dir / "tls")
        return subprocess.run(
            ["ip", "netns", "exec", cli.ns, sys.executable, "-m", "spear", *args],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip

    def nodes_health(self) -> dict[str, str]:
        out = self.cli("nodes", "--sms", self.sms_addresses(), "--json")
        if out.returncode != 0:
            return {}
        return {n["name"]: n["health"] for n in json.loads(out.stdout)}

    def wait_healthy(self, names: list[str], timeout_s: float = 60.0) -> float:
        """Seconds until the SMS lists every one of `names` healthy."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            health = self.nodes_health()
            if all(health.get(n) == "healthy" for n in names):
                return time.monotonic() - t0
            time.sleep(0.2)  # polling the SMS, with a deadline
        raise RuntimeError(f"nodes not healthy in {timeout_s} s: {self.nodes_health()}")

    # -- faults ------------------------------------------------------------------------

    def partition(self, name: str, cut: bool) -> None:
        """Cut `name` off the network (its link to the bridge down), or join it again."""
        _run("ip", "-n", self.ns("hub"), "link", "set", self.hub_link(name),
             "down" if cut else "up")  # fmt: skip

    def slow_link(self, name: str, on: bool) -> None:
        """A narrow, shallow link both ways (tc tbf): packets wait, and drop once the
        queue holds more than `latency` of them."""
        pairs = ((self.ns("hub"), self.hub_link(name)), (self.ns(name), "eth0"))
        for ns, dev in pairs:
            if on:
                _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                     "256kbit", "burst", "4kb", "latency", "50ms")  # fmt: skip
            else:
                _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)

    def fill_disk(self, name: str, on: bool) -> None:
        """Fill the tmpfs under `name`'s data dir (or free it again)."""
        filler = self.procs[name].data_dir / "filler"
        if on:
            _run("dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=4096", check=False)
        else:
            filler.unlink(missing_ok=True)


def load_command(
    lab: Lab, out: Path, duration_s: float, rate: float, marks: Path, stop: Path
) -> list[str]:
    """The load generator's command line (benchmarks/chaos_load.py, in the client's ns)."""
    addresses = ",".join(lab.procs[n].address for n in lab.node_names())
    return [sys.executable, str(Path(__file__).with_name("chaos_load.py")),
            "--nodes", addresses, "--tls", str(lab.procs["cli"].data_dir / "tls"),
            "--out", str(out), "--duration", str(duration_s), "--rate", str(rate),
            "--marks", str(marks), "--stop-file", str(stop)]  # fmt: skip
