"""SMS wire messages <-> core/cluster.py models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.core.cluster import (
    AgentInfo,
    Candidate,
    NodeHealth,
    NodeRecord,
    ObjectLocation,
    Placement,
    PlacementQuery,
)
from spear.transport._convert import optional, resources_from_wire, resources_to_wire
from spear.transport._gen.pb import sms_pb2
from spear.transport._gen.pb import spearlet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Iterable

_HEALTH_TO_WIRE = {
    NodeHealth.HEALTHY: sms_pb2.NODE_HEALTH_HEALTHY,
    NodeHealth.UNHEALTHY: sms_pb2.NODE_HEALTH_UNHEALTHY,
    NodeHealth.DEAD: sms_pb2.NODE_HEALTH_DEAD,
    NodeHealth.LEFT: sms_pb2.NODE_HEALTH_LEFT,
}
_HEALTH_FROM_WIRE = {int(wire): health for health, wire in _HEALTH_TO_WIRE.items()}


def pairs_to_wire(items: tuple[tuple[str, str], ...]) -> list[pb.KeyValue]:
    return [pb.KeyValue(key=k, value=v) for k, v in items]


def pairs_from_wire(items: Iterable[pb.KeyValue]) -> tuple[tuple[str, str], ...]:
    return tuple((kv.key, kv.value) for kv in items)


def node_to_wire(node: NodeRecord) -> sms_pb2.NodeRecord:
    return sms_pb2.NodeRecord(
        name=node.name,
        address=node.address,
        labels=pairs_to_wire(node.labels),
        capacity=resources_to_wire(node.capacity),
        free=resources_to_wire(node.free),
        agents=[sms_pb2.WorkerAgentInfo(runtime=a.runtime, version=a.version) for a in node.agents],
        running_tasks=node.running_tasks,
        queued_tasks=node.queued_tasks,
        registered_at=node.registered_at,
        last_heartbeat=node.last_heartbeat,
        health=_HEALTH_TO_WIRE[node.health],
        incarnation=node.incarnation,
    )


def node_from_wire(node: sms_pb2.NodeRecord | None) -> NodeRecord:
    if node is None:
        node = sms_pb2.NodeRecord()
    return NodeRecord(
        name=node.name,
        address=node.address,
        labels=pairs_from_wire(node.labels),
        # (an unset message reads as a default instance: its zeros are not Resources()'s)
        capacity=resources_from_wire(optional(node, "capacity")),
        free=resources_from_wire(optional(node, "free")),
        agents=tuple(AgentInfo(a.runtime, a.version) for a in node.agents),
        running_tasks=node.running_tasks,
        queued_tasks=node.queued_tasks,
        registered_at=node.registered_at,
        last_heartbeat=node.last_heartbeat,
        health=_HEALTH_FROM_WIRE.get(int(node.health), NodeHealth.HEALTHY),
        incarnation=node.incarnation,
    )


def query_to_wire(query: PlacementQuery) -> sms_pb2.FindNodesRequest:
    return sms_pb2.FindNodesRequest(
        need=resources_to_wire(query.need),
        runtime=query.runtime,
        labels=pairs_to_wire(query.labels),
        objects=list(query.objects),
        exclude=list(query.exclude),
    )


def query_from_wire(message: sms_pb2.FindNodesRequest) -> PlacementQuery:
    return PlacementQuery(
        need=resources_from_wire(optional(message, "need")),
        runtime=message.runtime,
        labels=pairs_from_wire(message.labels),
        objects=tuple(message.objects),
        exclude=tuple(message.exclude),
    )


def placement_to_wire(placement: Placement) -> sms_pb2.FindNodesResponse:
    return sms_pb2.FindNodesResponse(
        candidates=[
            sms_pb2.NodeCandidate(node=node_to_wire(c.node), objects_held=c.objects_held)
            for c in placement.candidates
        ],
        could_ever_fit=placement.could_ever_fit,
        reason=placement.reason,
        no_live_node=placement.no_live_node,
    )


def placement_from_wire(message: sms_pb2.FindNodesResponse) -> Placement:
    return Placement(
        tuple(Candidate(node_from_wire(c.node), c.objects_held) for c in message.candidates),
        message.could_ever_fit,
        message.reason,
        message.no_live_node,
    )


def location_to_wire(loc: ObjectLocation) -> sms_pb2.ObjectLocation:
    return sms_pb2.ObjectLocation(key=loc.key, node=loc.node, version=loc.version, size=loc.size)


def location_from_wire(loc: sms_pb2.ObjectLocation) -> ObjectLocation:
    return ObjectLocation(loc.key, loc.node, loc.version, loc.size)
