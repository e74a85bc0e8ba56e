"""A cluster member's proof of who it is, sent with every call as metadata (`spear-member`).

Members authenticate with their certificate from the cluster's CA. On the ports that take
users too (the node port, the SMS), the certificate cannot be asked for at the TLS
handshake: grpcio's Python server either never asks for a client certificate or refuses
every caller without one (docs/scheduling.md, "What blocks the servers"). So a member
proves possession of its certificate's key in the call instead:

    v1.<certificate, DER, base64url>.<expiry, unix seconds>.<signature, base64url>

signed (ECDSA P-256, SHA-256) with the member's key over the certificate's SHA-256 and
the expiry. A server admits it as the certificate's common name when the certificate was
issued by a CA of its bundle (several during a rotation) and is valid now, the expiry has
not passed and is at most `LIFETIME_S` (plus `SKEW_S` for clocks) away, and the signature
is the certificate key's. A proof lives `LIFETIME_S`; a member makes a new one when half
of that has gone, and a server remembers the proofs it has checked until they expire
(one check per member per few minutes, not per call).

Like a token it is a bearer credential while it lives, so it is sent only over TLS that
verified the server against the cluster's CA (only members see it) and never logged.
Written here, not taken from a JWT library: the whole format is the four fields above,
checked with `cryptography` (already spear's, for the CA), and a JWT library adds
neither the certificate chain check nor a smaller header.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING, Any

from spear.errors import Unauthenticated

if TYPE_CHECKING:
    from pathlib import Path

METADATA_KEY = "spear-member"
VERSION = "v1"
LIFETIME_S = 600
SKEW_S = 60  # clocks of members and servers may differ by this much
_CONTEXT = b"spear-member-v1\x00"
_REMEMBERED = 4096  # checked proofs a server keeps (a cluster's members, several each)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed_part(certificate: bytes, expiry: int) -> bytes:
    return _CONTEXT + hashlib.sha256(certificate).digest() + str(expiry).encode()


class MemberProof:
    """What a member sends: `value()`, remade when half its lifetime has gone. Made from
    the member's certificate and key (PEM), as `TlsFiles.member_proof()` reads them."""

    def __init__(self, certificate_pem: bytes, key_pem: bytes) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        cert = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            from spear.errors import InvalidArgument

            raise InvalidArgument("a member's key is an EC key of spear's cluster CA")
        self._certificate = cert.public_bytes(serialization.Encoding.DER)
        self._key = key
        self._value = ""
        self._renew_at = 0.0

    def value(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if now >= self._renew_at:
            self._value = self._make(int(now) + LIFETIME_S)
            self._renew_at = now + LIFETIME_S / 2
        return self._value

    def _make(self, expiry: int) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature = self._key.sign(
            _signed_part(self._certificate, expiry), ec.ECDSA(hashes.SHA256())
        )
        return ".".join((VERSION, _b64(self._certificate), str(expiry), _b64(signature)))


class MemberVerifier:
    """What a server checks: `name(value)` is the member's name, or Unauthenticated."""

    def __init__(self, ca_bundle: Path) -> None:
        from cryptography import x509

        self._authorities = x509.load_pem_x509_certificates(ca_bundle.read_bytes())
        self._checked: dict[str, tuple[str, float]] = {}  # value -> (name, good until)

    def name(self, value: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        known = self._checked.get(value)
        if known is not None and now < known[1]:
            return known[0]
        name, good_until = self._check(value, now)
        if len(self._checked) >= _REMEMBERED:
            self._forget_expired(now)
        self._checked[value] = (name, good_until)
        return name

    def _forget_expired(self, now: float) -> None:
        for value, (_, good_until) in list(self._checked.items()):
            if now >= good_until:
                del self._checked[value]
        while len(self._checked) >= _REMEMBERED:  # all current: drop the oldest
            del self._checked[next(iter(self._checked))]

    def _check(self, value: str, now: float) -> tuple[str, float]:
        from cryptography import x509

        try:
            version, cert_b64, expiry_text, signature_b64 = value.split(".")
            expiry = int(expiry_text)
            certificate = _unb64(cert_b64)
            signature = _unb64(signature_b64)
            cert = x509.load_der_x509_certificate(certificate)
        except ValueError:
            raise Unauthenticated("malformed member proof") from None
        if version != VERSION:
            raise Unauthenticated(f"member proof of unknown version {version!r}")
        if not now < expiry <= now + LIFETIME_S + SKEW_S:
            raise Unauthenticated("member proof expired (or dated too far ahead: check clocks)")
        name = _certified_name(cert, self._authorities, now)
        _check_signature(cert, _signed_part(certificate, expiry), signature)
        good_until = min(float(expiry), cert.not_valid_after_utc.timestamp())
        return name, good_until


def _certified_name(cert: Any, authorities: list[Any], now: float) -> str:
    """The common name of `cert` if a CA of `authorities` issued it and it is valid now,
    for client authentication."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not any(_issued_by(cert, ca) for ca in authorities):
        raise Unauthenticated("member certificate not issued by this cluster's CA")
    if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
        raise Unauthenticated("member certificate expired or not yet valid")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise Unauthenticated("member certificate is not for client authentication")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise Unauthenticated("member certificate names no member")
    return str(names[0].value)


def _issued_by(cert: Any, ca: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_signature(cert: Any, signed: bytes, signature: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Unauthenticated("member certificate's key is not a spear member key")
    try:
        key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Unauthenticated("member proof signature does not match its certificate") from None
