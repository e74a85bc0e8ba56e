"""How spear calls a gRPC server: one way to open a channel, with the message-size codec,
TLS when the caller has the cluster's CA, a token when it has one, and the listener that
keeps each call's spear error code (so errors come back as spear's own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from grpclib.client import Channel

from spear.transport import _speedups
from spear.transport._status import DEFAULT_MAX_MESSAGE_BYTES, LimitedCodec, listen_for_error_codes
from spear.transport.auth import attach_token

if TYPE_CHECKING:
    import ssl

    from spear.config import Settings
    from spear.transport.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a caller presents: a token (users, the CLI) and/or the cluster's TLS files
    (members: their certificate; users of a TLS cluster: its CA, to verify the node)."""

    token: str | None = None
    tls: TlsFiles | None = None
    namespace: str | None = None  # the namespace to act in (None: the token's own)

    @classmethod
    def for_settings(cls, settings: Settings, *, member: bool = False) -> Credentials:
        """What this process presents: its settings' token, else its data dir's owner
        token (a user's CLI; not for a `member`, which presents its certificate), and the
        TLS files in its tls_dir when there are any (a CA at least)."""
        from spear.transport.auth import read_owner_token
        from spear.transport.tls import CA_CERT, TlsFiles

        token = settings.token
        if token is None and not member:
            token = read_owner_token(settings.data_dir)
        tls_dir = settings.tls_files_dir
        tls = TlsFiles(tls_dir) if (tls_dir / CA_CERT).is_file() else None
        return cls(token=token, tls=tls, namespace=settings.namespace)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return self.tls.client_context(present_certificate=self.tls.present)


NO_CREDENTIALS = Credentials()


def open_channel(
    host: str,
    port: int,
    *,
    credentials: Credentials = NO_CREDENTIALS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Channel:
    _speedups.install()
    channel = Channel(
        host,
        port,
        codec=LimitedCodec(max_message_bytes),
        ssl=credentials.ssl_context(),
    )
    listen_for_error_codes(channel)
    if credentials.token or credentials.namespace:
        attach_token(channel, credentials.token, credentials.namespace)
    if credentials.tls is not None and credentials.tls.present:
        _attach_member_proof(channel, credentials.tls)
    return channel


def _attach_member_proof(channel: Channel, tls: TlsFiles) -> None:
    """Send the member's current proof with every call (transport/member_proof.py), as
    `AioChannel` does: a server that takes users too does not see its certificate."""
    from grpclib.events import SendRequest, listen

    from spear.transport.member_proof import METADATA_KEY

    proof = tls.member_proof()

    async def on_send(event: SendRequest) -> None:
        event.metadata[METADATA_KEY] = proof.value()

    listen(channel, SendRequest, on_send)


async def close_channel(channel: Channel, *, wait_s: float = 0.5) -> None:
    """Close `channel` and, over TLS, give the TLS shutdown the few loop turns it needs to
    close the socket (bounded by `wait_s`): left half-closed, the socket would be closed by
    the garbage collector after the loop is gone (a ResourceWarning)."""
    protocol = getattr(channel, "_protocol", None)  # (grpclib keeps no public handle)
    transport = getattr(getattr(protocol, "connection", None), "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    channel.close()
    if not tls or sock is None:
        return
    with anyio.move_on_after(wait_s):
        while sock.fileno() != -1:  # noqa: ASYNC110 - no event tells; polled, bounded
            await anyio.sleep(0.001)
    if transport is not None and sock.fileno() != -1:
        # Not closed within the bound (a loaded machine, a peer that never answers the TLS
        # close): abort, which closes the socket on the loop's next turn, rather than leave
        # it to the garbage collector (a ResourceWarning in whatever runs then).
        transport.abort()
        await anyio.lowlevel.checkpoint()
