"""The object index's RPCs (docs/objects.md), a part of spear.v1.MetadataServer: the SMS
service (transport/sms_server.py) inherits them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spear.errors import PermissionDenied
from spear.transport import _object_convert as oc
from spear.transport._gen.spear import v1
from spear.transport.auth import current_principal

if TYPE_CHECKING:
    from spear.core.sms import MetadataServer


def _speaks_for(node: str) -> None:
    """A member enters only itself as a holder (the name in its certificate)."""
    principal = current_principal.get()
    if principal is not None and principal.via == "certificate" and node != principal.name:
        raise PermissionDenied(f"{principal.name} may not speak for node {node or '(none)'!r}")


class ObjectIndexService:
    sms: MetadataServer

    async def commit_object(self, message: v1.CommitObjectRequest) -> v1.ObjectRecord:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        record = await self.sms.objects.commit(
            message.key,
            message.node,
            message.address,
            message.size,
            message.expected_version,
            message.value,
        )
        return oc.record_to_wire(record)

    async def lookup_object(self, message: v1.LookupObjectRequest) -> v1.ObjectRecord:
        return oc.record_to_wire(await self.sms.objects.lookup(message.key))

    async def hold_object(self, message: v1.HoldObjectRequest) -> v1.ObjectRecord:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        objects = self.sms.objects
        held = await objects.hold(message.key, message.node, message.address, message.version)
        return oc.record_to_wire(held or await objects.lookup(message.key))

    async def change_object(self, message: v1.ChangeObjectRequest) -> v1.ChangeObjectResponse:
        self.sms.leadership.require()  # writes go to the leader only
        record, deleted = await self.sms.objects.change(
            message.key, message.change, message.count or 1, message.expected_version
        )
        return v1.ChangeObjectResponse(record=oc.record_to_wire(record), deleted=deleted)

    async def list_object_records(
        self, message: v1.ListObjectRecordsRequest
    ) -> v1.ListObjectRecordsResponse:
        found = await self.sms.objects.list(message.prefix)
        return v1.ListObjectRecordsResponse(objects=[oc.record_to_wire(r) for r in found])

    async def announce_objects(
        self, message: v1.AnnounceObjectsRequest
    ) -> v1.AnnounceObjectsResponse:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        held = [(h.key, h.version, h.size) for h in message.held]
        stale, adopted = await self.sms.objects.announce(message.node, message.address, held)
        return v1.AnnounceObjectsResponse(
            stale=stale, adopted=[v1.AnnouncedObject(key=k, version=v) for k, v in adopted]
        )

    async def collect_objects(
        self, message: v1.CollectObjectsRequest
    ) -> v1.ListObjectRecordsResponse:
        self.sms.leadership.require()  # writes go to the leader only
        found = await self.sms.objects.collect(message.grace_s)
        return v1.ListObjectRecordsResponse(objects=[oc.record_to_wire(r) for r in found])
