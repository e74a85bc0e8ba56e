"""What every spear server shares: listening sockets and addresses, and who may call
(`Security`). The gRPC server itself is transport/aio_server.py's (`GrpcServer`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from pathlib import Path

    from spear.config import Settings
    from spear.transport.auth import Authorizer
    from spear.transport.tls import TlsFiles


def parse_listen(listen: str, flag: str = "--listen") -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT', ':PORT' or 'PORT' -> (host, port); errors name `flag`."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise InvalidArgument(f"{flag} expects HOST:PORT, got {listen!r}") from None
    if not 0 <= number <= 65535:
        raise InvalidArgument(f"{flag}: port {number} is out of range")
    return host, number


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_socket(listen: str, flag: str = "--listen") -> socket.socket:
    """A bound, listening TCP socket for `listen` (port 0 picks a free port)."""
    host, port = parse_listen(listen, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: a server that turns Nagle off only on sockets that say TCP
    # would otherwise leave it on, and every small reply would wait ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


@dataclass(frozen=True)
class Security:
    """How a server admits callers: who may call what (`authorizer`: tokens and cluster
    certificates; None admits everyone as admin, which only `Security.open()` asks for),
    and the TLS it serves (`tls`: None for plaintext)."""

    authorizer: Authorizer | None
    tls: TlsFiles | None = None
    allow_insecure: bool = False  # serve beyond loopback without TLS and tokens (forced)

    @classmethod
    def open(cls) -> Security:
        """No authentication and no TLS: for benchmarks and tests of the bare transport."""
        return cls(authorizer=None)

    @classmethod
    def for_data_dir(cls, data_dir: Path, tls_dir: Path | None = None) -> Security:
        """Tokens from `data_dir` (making the owner's on first start), and TLS when the
        cluster's files are in `tls_dir` (default `DATA/tls`)."""
        from spear.transport.auth import Authorizer, TokenStore
        from spear.transport.tls import TlsFiles

        tokens = TokenStore(data_dir)
        tokens.owner_token()
        tls = TlsFiles(tls_dir or data_dir / "tls")
        if not tls.present:
            return cls(Authorizer(tokens))
        from spear.transport.member_proof import MemberVerifier
        from spear.transport.tls import CA_CERT

        return cls(Authorizer(tokens, members=MemberVerifier(tls.directory / CA_CERT)), tls)

    def check_listen(self, listen: str) -> None:
        """Refuse to serve beyond this machine without TLS and authentication (unforced)."""
        import ipaddress

        host, _ = parse_listen(listen)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback or self.allow_insecure:
            return
        missing = [
            what
            for what, absent in (
                ("TLS", self.tls is None),
                ("authentication", self.authorizer is None),
            )
            if absent
        ]
        if missing:
            raise InvalidArgument(
                f"refusing to serve on {listen} without {' and '.join(missing)}: anyone who"
                " reaches the port could run tasks (set up TLS with `spear cluster init`, or"
                " force it with --insecure)"
            )

    @classmethod
    def for_settings(cls, settings: Settings) -> Security:
        """A server's security from its settings (data dir, tls_dir, insecure)."""
        found = cls.for_data_dir(settings.data_dir, settings.tls_files_dir)
        return cls(found.authorizer, found.tls, allow_insecure=settings.insecure)
