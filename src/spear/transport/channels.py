"""What a caller presents to a server of spear's: a token, the cluster's TLS files, the
namespace to act in. The channel that presents them is `AioChannel`
(transport/aio_client.py; grpclib's `open_channel` was here until grpc.aio was the one
stack: docs/scheduling.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
