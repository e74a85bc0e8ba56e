"""The object index's RPCs (docs/objects.md), a part of spear.v1.MetadataServer: the SMS
service (transport/sms_server.py) inherits them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from spear._logging import logger
from spear.errors import InvalidArgument, PermissionDenied, SpearError
from spear.store.diskspace import no_space
from spear.transport import _object_convert as oc
from spear.transport._convert import optional
from spear.transport._gen.pb import sms_pb2
from spear.transport.auth import current_principal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from spear.core.object_index import ObjectRecord
    from spear.core.sms import MetadataServer


def _speaks_for(node: str) -> None:
    """A member enters only itself as a holder (the name in its certificate)."""
    principal = current_principal.get()
    if principal is not None and principal.via == "certificate" and node != principal.name:
        raise PermissionDenied(f"{principal.name} may not speak for node {node or '(none)'!r}")


def _member() -> str | None:
    """The cluster member making this call (by its certificate), if one is."""
    principal = current_principal.get()
    return principal.name if principal and principal.via == "certificate" else None


class ObjectIndexService:
    sms: MetadataServer

    async def commit_object(self, message: sms_pb2.CommitObjectRequest) -> sms_pb2.ObjectRecord:
        """CommitObject: one per value a member writes (every task's result)."""
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        return oc.record_to_wire(await self._commit(message))

    async def _commit(self, message: sms_pb2.CommitObjectRequest) -> ObjectRecord:
        return await self.sms.objects.commit(
            message.key,
            message.node,
            message.address,
            message.size,
            optional(message, "expected_version"),
            optional(message, "value"),
        )

    async def commit_objects(
        self, message: sms_pb2.CommitObjectsRequest
    ) -> sms_pb2.CommitObjectsResponse:
        """CommitObjects: each commit as CommitObject would answer it, refused or not on
        its own. Commits of one key are applied in the request's order; different keys
        at once (on etcd each commit is two round trips to it)."""
        self.sms.leadership.require()  # writes go to the leader only
        commits = list(message.commits)
        for commit in commits:  # (all or none: a member speaks only for itself)
            _speaks_for(commit.node)
        outcomes: list[sms_pb2.CommitOutcome] = [sms_pb2.CommitOutcome()] * len(commits)
        by_key: dict[str, list[int]] = {}
        for i, commit in enumerate(commits):
            by_key.setdefault(commit.key, []).append(i)

        async def in_order(indexes: list[int]) -> None:
            for i in indexes:
                outcomes[i] = await self._one_commit(commits[i])

        await asyncio.gather(*(in_order(indexes) for indexes in by_key.values()))
        return sms_pb2.CommitObjectsResponse(outcomes=outcomes)

    async def _one_commit(self, message: sms_pb2.CommitObjectRequest) -> sms_pb2.CommitOutcome:
        try:
            record = await self._commit(message)
        except SpearError as exc:
            return sms_pb2.CommitOutcome(error_code=exc.code, error=str(exc))
        except Exception as exc:  # a full disk, or a bug: this commit fails, not the others
            error: SpearError | None = no_space(exc)
            if error is None:
                logger.exception("commit of {!r} failed", message.key)
                error = SpearError(f"internal error: {type(exc).__name__}: {exc}")
            return sms_pb2.CommitOutcome(error_code=error.code, error=str(error))
        return sms_pb2.CommitOutcome(record=oc.record_to_wire(record))

    async def lookup_object(self, message: sms_pb2.LookupObjectRequest) -> sms_pb2.ObjectRecord:
        return oc.record_to_wire(await self.sms.objects.lookup(message.key, _member()))

    async def hold_object(self, message: sms_pb2.HoldObjectRequest) -> sms_pb2.ObjectRecord:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        objects = self.sms.objects
        held = await objects.hold(message.key, message.node, message.address, message.version)
        return oc.record_to_wire(held or await objects.lookup(message.key))

    async def change_object(
        self, message: sms_pb2.ChangeObjectRequest
    ) -> sms_pb2.ChangeObjectResponse:
        self.sms.leadership.require()  # writes go to the leader only
        record, deleted = await self.sms.objects.change(
            message.key,
            message.change,
            message.count or 1,
            optional(message, "expected_version"),
            asker=_member(),
        )
        return sms_pb2.ChangeObjectResponse(record=oc.record_to_wire(record), deleted=deleted)

    async def list_object_records(
        self, message: sms_pb2.ListObjectRecordsRequest
    ) -> sms_pb2.ListObjectRecordsResponse:
        found = await self.sms.objects.list(message.prefix)
        return sms_pb2.ListObjectRecordsResponse(objects=[oc.record_to_wire(r) for r in found])

    async def announce_objects(
        self, message: sms_pb2.AnnounceObjectsRequest
    ) -> sms_pb2.AnnounceObjectsResponse:
        self.sms.leadership.require()  # writes go to the leader only
        _speaks_for(message.node)
        held = [(h.key, h.version, h.size) for h in message.held]
        stale, adopted = await self.sms.objects.announce(message.node, message.address, held)
        return sms_pb2.AnnounceObjectsResponse(
            stale=stale, adopted=[sms_pb2.AnnouncedObject(key=k, version=v) for k, v in adopted]
        )

    async def collect_objects(
        self, message: sms_pb2.CollectObjectsRequest
    ) -> sms_pb2.ListObjectRecordsResponse:
        self.sms.leadership.require()  # writes go to the leader only
        dropped = [(d.key, d.version) for d in message.dropped]
        found = await self.sms.objects.collect(message.grace_s, asker=_member(), dropped=dropped)
        return sms_pb2.ListObjectRecordsResponse(objects=[oc.record_to_wire(r) for r in found])

    async def watch_objects(
        self, messages: AsyncIterator[sms_pb2.ObjectWatchRequest]
    ) -> AsyncIterator[sms_pb2.ObjectWatchEvent]:
        """A member's lease and the invalidations of what it may have cached
        (core/object_leases.py). Only the leader grants leases: it decides every write."""
        self.sms.leadership.require()
        first = await anext(messages, None)
        if first is None or not first.node:
            raise InvalidArgument("a watch of the object index names its member first")
        _speaks_for(first.node)
        leases, kv = self.sms.objects.leases, self.sms.objects.kv
        watcher = leases.watch(first.node)

        async def read() -> None:
            try:
                async for message in messages:
                    if message.ack:
                        watcher.acked(message.ack)
                    if message.ping:
                        if not self.sms.leadership.leading:
                            break  # (a deposed leader grants no more leases)
                        await leases.renew(kv, watcher, message.ping)
            except Exception as exc:  # (the member went away: its lease runs out)
                logger.debug("object watch of {} ended: {}", watcher.node, exc)
            finally:
                watcher.close()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            if first.ping:
                await leases.renew(kv, watcher, first.ping)
            while (event := await watcher.outbox.get()) is not None:
                pong, lease_s, seq, keys, record = event
                yield sms_pb2.ObjectWatchEvent(
                    pong=pong,
                    lease_s=lease_s,
                    seq=seq,
                    keys=list(keys),
                    record=None if record is None else oc.record_to_wire(record),
                )
        finally:
            leases.unwatch(watcher)
            reader.cancel()
