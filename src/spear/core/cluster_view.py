"""A SPEARlet's view of the other nodes' free resources, so it places a task without asking
the SMS first (issue #17).

The view is refreshed from the SMS's node list (`ClusterView.refresh`, once per heartbeat
period: one call per node per period, not one per task), corrected by every answer a
peer gives to a forward (its free resources as it answered), and debited by this node's
own forwards in between. It may still be stale (another node filled the peer
meanwhile): the receiver then refuses, and the sender places the task again (spillback,
core/scheduler.py). Placement rules are the SMS's (`core/sms.py` `find_nodes`): live nodes
with the runtime, every selector label, and room; ranked by `rank_candidates`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from spear.core.cluster import Candidate, NodeHealth

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from spear.core.cluster import NodeRecord, PlacementQuery
    from spear.core.models import Resources


def rank_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The placement policy, best first: the node holding most of the task's input objects
    (data affinity), then the one with most free CPU, then most free memory (spreading
    load), then by name (a stable tie-break)."""
    return sorted(
        candidates,
        key=lambda c: (
            -c.objects_held,
            -c.node.free.cpu_millis,
            -c.node.free.memory_bytes,
            c.node.name,
        ),
    )


class ClusterView:
    """The other live nodes as last seen: their records, with `free` kept current."""

    def __init__(self, own_name: str) -> None:
        self.own_name = own_name
        self._nodes: dict[str, NodeRecord] = {}
        self.refreshed_at = 0.0  # time.monotonic() of the last full refresh; 0: never
        self.version = 0  # bumped by every change: a waiter tells "nothing new" apart

    @property
    def known(self) -> bool:
        """Whether the view was filled from the SMS at least once."""
        return self.refreshed_at > 0

    def nodes(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    def node(self, name: str) -> NodeRecord | None:
        return self._nodes.get(name)

    def replace(self, records: Iterable[NodeRecord]) -> None:
        """The SMS's list of nodes (this one left out): the view starts again from it."""
        self._nodes = {r.name: r for r in records if r.name != self.own_name and r.health.live}
        self.refreshed_at = time.monotonic()
        self.version += 1

    def set_free(self, name: str, free: Resources) -> None:
        """What a peer said it has free as it answered a forward."""
        record = self._nodes.get(name)
        if record is not None and record.free != free:
            self._nodes[name] = dataclasses.replace(record, free=free)
            self.version += 1

    def reserve(self, name: str, need: Resources) -> None:
        """Debit a forward to `name` until its answer (or the next refresh) says better."""
        record = self._nodes.get(name)
        if record is not None:
            self._nodes[name] = dataclasses.replace(record, free=record.free - need)

    def forget(self, name: str) -> None:
        """A node that did not answer: not chosen again until the SMS lists it again."""
        if self._nodes.pop(name, None) is not None:
            self.version += 1

    def _eligible(self, query: PlacementQuery) -> list[NodeRecord]:
        return [
            n
            for n in self._nodes.values()
            if n.name not in query.exclude
            and query.runtime in n.runtimes
            and n.has_labels(query.labels)
            and query.need.fits_in(n.capacity)
        ]

    def candidates(self, query: PlacementQuery) -> list[Candidate]:
        """Healthy nodes with room for the task now, best first (no data affinity: a task
        naming input objects is placed by the SMS, which holds the object index)."""
        return rank_candidates(
            [
                Candidate(n)
                for n in self._eligible(query)
                if n.health is NodeHealth.HEALTHY and query.need.fits_in(n.free)
            ]
        )

    def could_ever_fit(self, query: PlacementQuery) -> list[NodeRecord]:
        """Live nodes that could run the task once they have room, most free first."""
        return [c.node for c in rank_candidates([Candidate(n) for n in self._eligible(query)])]
