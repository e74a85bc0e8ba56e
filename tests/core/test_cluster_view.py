"""The cluster view's placement rules (core/cluster_view.py), the SMS's `find_nodes` rules
applied to a member's own copy of the node list."""

from __future__ import annotations

from spear.core.cluster import AgentInfo, NodeHealth, NodeRecord, PlacementQuery
from spear.core.cluster_view import ClusterView
from spear.core.models import Resources

MiB = 1024 * 1024


def node(
    name: str,
    free_cpu: int,
    *,
    cpu: int = 2000,
    labels: tuple[tuple[str, str], ...] = (),
    health: NodeHealth = NodeHealth.HEALTHY,
    runtimes: tuple[str, ...] = ("wasm",),
) -> NodeRecord:
    return NodeRecord(
        name=name,
        address=f"127.0.0.1:{1000 + len(name)}",
        capacity=Resources(cpu, 1024 * MiB),
        free=Resources(free_cpu, 1024 * MiB),
        labels=labels,
        agents=tuple(AgentInfo(r) for r in runtimes),
        health=health,
    )


def query(cpu: int = 100, **kw: object) -> PlacementQuery:
    return PlacementQuery(need=Resources(cpu, 64 * MiB), runtime="wasm", **kw)  # type: ignore[arg-type]


def names(view: ClusterView, q: PlacementQuery) -> list[str]:
    return [c.node.name for c in view.candidates(q)]


def test_candidates_follow_the_sms_rules_and_ranking() -> None:
    view = ClusterView("self")
    assert not view.known
    view.replace(
        [
            node("self", 2000),  # this node is never its own candidate
            node("a", 500),
            node("b", 1500),
            node("c", 1500, labels=(("zone", "x"),)),
            node("sick", 2000, health=NodeHealth.UNHEALTHY),
            node("gone", 2000, health=NodeHealth.DEAD),
            node("proc", 2000, runtimes=("process",)),
            node("full", 0),
        ]
    )
    assert view.known and view.node("self") is None and view.node("gone") is None
    # Most free CPU first, then name; unhealthy, full and other runtimes left out.
    assert names(view, query()) == ["b", "c", "a"]
    assert names(view, query(labels=(("zone", "x"),))) == ["c"]
    assert names(view, query(exclude=("b",))) == ["c", "a"]
    assert names(view, query(cpu=1000)) == ["b", "c"]
    # Could ever fit: live nodes with capacity, even when full or unhealthy.
    assert {n.name for n in view.could_ever_fit(query())} >= {"full", "sick"}
    assert view.could_ever_fit(query(cpu=5000)) == []
    assert names(view, query(labels=(("zone", "y"),))) == []


def test_reservations_and_answers_correct_the_view() -> None:
    view = ClusterView("self")
    view.replace([node("a", 300), node("b", 200)])
    version = view.version
    view.reserve("a", Resources(200, 0))  # a forward sent: a has 100 left as far as we know
    assert names(view, query()) == ["b", "a"]
    view.reserve("a", Resources(100, 0))
    assert names(view, query()) == ["b"]
    view.set_free("a", Resources(2000, 1024 * MiB))  # a's answer: it has room again
    assert names(view, query()) == ["a", "b"] and view.version > version
    view.forget("b")  # b did not answer
    assert names(view, query()) == ["a"]
    view.reserve("nobody", Resources(1, 0))  # unknown names change nothing
    view.set_free("nobody", Resources(1, 0))
    assert [n.name for n in view.nodes()] == ["a"]
