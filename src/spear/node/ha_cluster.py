"""A cluster on this machine with a highly available SMS: several SMS processes on one
etcd (they elect a leader: core/sms_leader.py) and SPEARlets given every SMS address.
Used by the failover tests and benchmark; `LocalCluster` is the one-SMS shape."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spear.node.local_cluster import LocalCluster, Member

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass
class HaCluster(LocalCluster):
    """`sms_count` SMS processes (`sms`, `sms-2`, ...) on a private etcd."""

    sms_count: int = 3
    standbys: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.etcd = True

    @property
    def all_sms(self) -> list[Member]:
        return [m for m in [self.sms, *self.standbys] if m is not None]

    @property
    def sms_addresses(self) -> str:
        """Every SMS's address, comma-separated (what SPEARlets are given)."""
        return ",".join(m.address for m in self.all_sms)

    def start_standby(self, index: int) -> Member:
        """Start (or restart on its old address) SMS number `index` (2, 3, ...)."""
        name = f"sms-{index}"
        member = next((m for m in self.standbys if m.name == name), None)
        if member is None:
            member = Member(name, self.base / name)
            self.standbys.append(member)
        assert self.etcd_process is not None
        listen = member.address or "127.0.0.1:0"
        self.write_config(member, {})
        self._spawn(
            member, ["serve", "--role", "sms", "--listen", listen, "--kv", self.etcd_process.url]
        )
        self._await_address(member)
        return member

    def start_node(self, index: int) -> Member:
        name = f"node-{index}"
        member = next((m for m in self.members if m.name == name), None)
        if member is None:
            member = Member(name, self.base / name)
            self.members.append(member)
        extra = {"node_name": name, **self.node_settings.get(name, {})}
        self.write_config(member, extra)
        self._spawn(
            member,
            ["serve", "--role", "spearlet", "--listen", "127.0.0.1:0", "--sms", self.sms_addresses],
        )
        self._await_address(member)
        return member

    def start(self) -> HaCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self.start_sms()
        for index in range(2, self.sms_count + 1):
            self.start_standby(index)
        for i in range(1, self.nodes + 1):
            self.start_node(i)
        self.save()
        self.wait_registered()
        return self

    def leaders(self) -> Iterator[Member]:
        """The SMS processes whose log says they lead now (last word of their log)."""
        for member in self.all_sms:
            if member.alive() and _last_leadership_line(member).endswith("leads"):
                yield member

    def stop(self) -> None:
        for member in [*self.members, *self.standbys]:
            self.stop_member(member, signal.SIGTERM)
        super().stop()


def _last_leadership_line(member: Member) -> str:
    try:
        text = (member.data_dir / "stderr.log").read_text(errors="replace")
    except OSError:
        return ""
    last = ""
    for line in text.splitlines():
        if "this SMS (" in line and ("leads" in line or "no longer leads" in line):
            last = "no longer leads" if "no longer leads" in line else "leads"
    return last
