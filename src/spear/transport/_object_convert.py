"""The object index's wire messages <-> core/object_index.py and store ObjectInfo."""

from __future__ import annotations

from spear.core.object_index import ObjectHolder, ObjectRecord
from spear.store.object_info import ObjectInfo
from spear.transport._convert import optional
from spear.transport._gen.pb import sms_pb2


def record_to_wire(record: ObjectRecord) -> sms_pb2.ObjectRecord:
    return sms_pb2.ObjectRecord(
        key=record.key,
        version=record.version,
        size=record.size,
        holders=[
            sms_pb2.ObjectHolder(node=h.node, address=h.address, live=h.live)
            for h in record.holders
        ],
        refs=record.refs,
        pinned=record.pinned,
        created_at=record.created_at,
        updated_at=record.updated_at,
        value=record.value,
    )


def record_from_wire(message: sms_pb2.ObjectRecord | None) -> ObjectRecord:
    if message is None:
        raise ValueError("an object record is missing")
    return ObjectRecord(
        key=message.key,
        version=message.version,
        size=message.size,
        holders=tuple(ObjectHolder(h.node, h.address, h.live) for h in message.holders),
        refs=message.refs,
        pinned=message.pinned,
        created_at=message.created_at,
        updated_at=message.updated_at,
        value=optional(message, "value"),
    )


def record_info(record: ObjectRecord) -> ObjectInfo:
    """What a node shows of a cluster object: its live holders are its locations."""
    return ObjectInfo(
        key=record.key,
        version=record.version,
        size=record.size,
        refs=record.refs,
        pinned=record.pinned,
        created_at=record.created_at,
        updated_at=record.updated_at,
        locations=tuple(h.node for h in record.holders if h.live),
    )
