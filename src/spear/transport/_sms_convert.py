"""SMS wire messages <-> core/cluster.py models."""

from __future__ import annotations

from spear.core.cluster import (
    AgentInfo,
    Candidate,
    NodeHealth,
    NodeRecord,
    ObjectLocation,
    Placement,
    PlacementQuery,
)
from spear.transport._convert import resources_from_wire, resources_to_wire
from spear.transport._gen.spear import v1

# The SMS's calls in protobuf's own messages (sms_server.MetadataService.__mapping__ and
# SmsClient._call_pb): the ones every task makes.
REPORT_TASKS = "/spear.v1.MetadataServer/ReportTasks"
COMMIT_OBJECT = "/spear.v1.MetadataServer/CommitObject"
COMMIT_OBJECTS = "/spear.v1.MetadataServer/CommitObjects"

_HEALTH_TO_WIRE = {
    NodeHealth.HEALTHY: v1.NodeHealth.HEALTHY,
    NodeHealth.UNHEALTHY: v1.NodeHealth.UNHEALTHY,
    NodeHealth.DEAD: v1.NodeHealth.DEAD,
    NodeHealth.LEFT: v1.NodeHealth.LEFT,
}
_HEALTH_FROM_WIRE = {wire: health for health, wire in _HEALTH_TO_WIRE.items()}


def pairs_to_wire(items: tuple[tuple[str, str], ...]) -> list[v1.KeyValue]:
    return [v1.KeyValue(key=k, value=v) for k, v in items]


def pairs_from_wire(items: list[v1.KeyValue]) -> tuple[tuple[str, str], ...]:
    return tuple((kv.key, kv.value) for kv in items)


def node_to_wire(node: NodeRecord) -> v1.NodeRecord:
    return v1.NodeRecord(
        name=node.name,
        address=node.address,
        labels=pairs_to_wire(node.labels),
        capacity=resources_to_wire(node.capacity),
        free=resources_to_wire(node.free),
        agents=[v1.WorkerAgentInfo(runtime=a.runtime, version=a.version) for a in node.agents],
        running_tasks=node.running_tasks,
        queued_tasks=node.queued_tasks,
        registered_at=node.registered_at,
        last_heartbeat=node.last_heartbeat,
        health=_HEALTH_TO_WIRE[node.health],
        incarnation=node.incarnation,
    )


def node_from_wire(node: v1.NodeRecord | None) -> NodeRecord:
    if node is None:
        node = v1.NodeRecord()
    return NodeRecord(
        name=node.name,
        address=node.address,
        labels=pairs_from_wire(node.labels),
        capacity=resources_from_wire(node.capacity),
        free=resources_from_wire(node.free),
        agents=tuple(AgentInfo(a.runtime, a.version) for a in node.agents),
        running_tasks=node.running_tasks,
        queued_tasks=node.queued_tasks,
        registered_at=node.registered_at,
        last_heartbeat=node.last_heartbeat,
        health=_HEALTH_FROM_WIRE.get(v1.NodeHealth(node.health), NodeHealth.HEALTHY),
        incarnation=node.incarnation,
    )


def query_to_wire(query: PlacementQuery) -> v1.FindNodesRequest:
    return v1.FindNodesRequest(
        need=resources_to_wire(query.need),
        runtime=query.runtime,
        labels=pairs_to_wire(query.labels),
        objects=list(query.objects),
        exclude=list(query.exclude),
    )


def query_from_wire(message: v1.FindNodesRequest) -> PlacementQuery:
    return PlacementQuery(
        need=resources_from_wire(message.need),
        runtime=message.runtime,
        labels=pairs_from_wire(message.labels),
        objects=tuple(message.objects),
        exclude=tuple(message.exclude),
    )


def placement_to_wire(placement: Placement) -> v1.FindNodesResponse:
    return v1.FindNodesResponse(
        candidates=[
            v1.NodeCandidate(node=node_to_wire(c.node), objects_held=c.objects_held)
            for c in placement.candidates
        ],
        could_ever_fit=placement.could_ever_fit,
        reason=placement.reason,
        no_live_node=placement.no_live_node,
    )


def placement_from_wire(message: v1.FindNodesResponse) -> Placement:
    return Placement(
        tuple(Candidate(node_from_wire(c.node), c.objects_held) for c in message.candidates),
        message.could_ever_fit,
        message.reason,
        message.no_live_node,
    )


def location_to_wire(loc: ObjectLocation) -> v1.ObjectLocation:
    return v1.ObjectLocation(key=loc.key, node=loc.node, version=loc.version, size=loc.size)


def location_from_wire(loc: v1.ObjectLocation) -> ObjectLocation:
    return ObjectLocation(loc.key, loc.node, loc.version, loc.size)
