"""The cluster's certificates: a CA that spear makes, and a certificate per process.

`spear cluster init` makes the CA (an ECDSA P-256 key, `DATA/tls/ca.key`, owner-only) and
`spear cluster cert NAME` issues a member's certificate signed by it; every SPEARlet and
SMS of the cluster then serves TLS and presents its certificate when it calls another
(mutual TLS): a process without a certificate from this CA cannot register, deregister
or impersonate a node. Everything is built with `cryptography` and the standard `ssl`
module: no hand-made crypto. Rotation: `docs/security.md`.

Files, under a directory (usually `DATA/tls/`):
    ca.crt            the CA certificates this process trusts (several during a rotation)
    ca.key            the CA's key: only where certificates are issued
    node.crt, node.key   this process's certificate and key
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spear.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from pathlib import Path

    from spear.transport.member_proof import MemberProof

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _write(path: Path, data: bytes, *, private: bool) -> None:
    from spear.transport.auth import write_private

    if private:
        write_private(path, data)
    else:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(directory: Path, *, name: str = "spear cluster CA", days: int = 3650) -> Path:
    """A new CA in `directory` (ca.key private; ca.crt appended to the trusted bundle,
    so certificates of an older CA stay trusted until it is dropped). Returns ca.crt."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(directory / CA_KEY, key_pem, private=True)
    bundle = directory / CA_CERT
    previous = bundle.read_bytes() if bundle.exists() else b""
    _write(bundle, cert.public_bytes(serialization.Encoding.PEM) + previous, private=False)
    return bundle


def issue(
    ca_directory: Path,
    name: str,
    out_directory: Path,
    *,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1"),
    days: int = 365,
) -> Path:
    """A certificate for the cluster member `name`, signed by the CA in `ca_directory`,
    written with its key and the CA bundle into `out_directory`. Returns node.crt."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not name or not name.isprintable() or len(name) > 64:
        raise InvalidArgument(f"a member's name is 1-64 printable characters, not {name!r}")
    try:
        ca_key = serialization.load_pem_private_key((ca_directory / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((ca_directory / CA_CERT).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"no cluster CA in {ca_directory}: run `spear cluster init` first") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{ca_directory / CA_KEY} is not a spear cluster CA key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(
        out_directory / NODE_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    _write(out_directory / NODE_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    if out_directory.resolve() != ca_directory.resolve():
        _write(out_directory / CA_CERT, (ca_directory / CA_CERT).read_bytes(), private=False)
    return out_directory / NODE_CERT


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where one process's certificate, key and trusted CAs are."""

    directory: Path

    @property
    def present(self) -> bool:
        return all((self.directory / f).exists() for f in (CA_CERT, NODE_CERT, NODE_KEY))

    def _check(self) -> None:
        if not self.present:
            raise NotFound(
                f"TLS needs {CA_CERT}, {NODE_CERT} and {NODE_KEY} in {self.directory}"
                " (spear cluster init; spear cluster cert NAME)"
            )

    def name(self) -> str:
        """The member's name: its certificate's common name."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        self._check()
        cert = x509.load_pem_x509_certificate((self.directory / NODE_CERT).read_bytes())
        [attribute] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attribute.value)

    def member_proof(self) -> MemberProof:
        """This member's proof of who it is, for calls (transport/member_proof.py)."""
        from spear.transport.member_proof import MemberProof

        self._check()
        return MemberProof(
            (self.directory / NODE_CERT).read_bytes(), (self.directory / NODE_KEY).read_bytes()
        )

    def server_context(self) -> ssl.SSLContext:
        """Serve TLS; ask callers for a certificate (members present one, users may not:
        they authenticate with tokens), and verify any that is offered against the CA."""
        self._check()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(_CIPHERS)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.options |= ssl.OP_NO_RENEGOTIATION  # a connection's certificate never changes
        ctx.load_verify_locations(self.directory / CA_CERT)
        ctx.load_cert_chain(self.directory / NODE_CERT, self.directory / NODE_KEY)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    def client_context(self, *, present_certificate: bool = True) -> ssl.SSLContext:
        """Call a member: verify its certificate against the CA (and present ours)."""
        if not (self.directory / CA_CERT).exists():
            self._check()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(_CIPHERS)
        ctx.load_verify_locations(self.directory / CA_CERT)
        if present_certificate:
            self._check()
            ctx.load_cert_chain(self.directory / NODE_CERT, self.directory / NODE_KEY)
        ctx.set_alpn_protocols(["h2"])
        return ctx
