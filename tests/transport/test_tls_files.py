"""The cluster's certificates and TLS settings (transport/tls.py), read back with
`cryptography` and `ssl`: what the CA and a member's certificate say (names, validity,
constraints, uses), where their files go and who may read them, a rotation's bundle,
the refusals, and what a server's and a client's context accept. A handshake between
the two contexts checks they work together and refuse a stranger."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spear.errors import InvalidArgument, NotFound
from spear.transport import tls

if TYPE_CHECKING:
    from pathlib import Path


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _within(moment: datetime.datetime, low: datetime.datetime, high: datetime.datetime) -> None:
    assert low <= moment <= high, (low, moment, high)


def test_a_ca_signs_certificates_and_nothing_else(tmp_path: Path) -> None:
    before = datetime.datetime.now(datetime.UTC)
    bundle = tls.create_ca(tmp_path / "ca", name="test CA", days=10)
    after = datetime.datetime.now(datetime.UTC)
    assert bundle == tmp_path / "ca" / tls.CA_CERT
    [cert] = _certs(bundle)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    assert cert.subject == name and cert.issuer == name
    five = datetime.timedelta(minutes=5)
    _within(cert.not_valid_before_utc, before.replace(microsecond=0) - five, after - five)
    ten = datetime.timedelta(days=10)
    _within(cert.not_valid_after_utc, before.replace(microsecond=0) + ten, after + ten)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value == x509.BasicConstraints(True, 0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert (usage.value.digital_signature, usage.value.key_cert_sign, usage.value.crl_sign) == (
        True,
        True,
        True,
    )
    assert not any(
        (
            usage.value.content_commitment,
            usage.value.key_encipherment,
            usage.value.data_encipherment,
            usage.value.key_agreement,
        )
    )
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    # Its key is the owner's alone, in a directory of the owner's alone.
    assert _mode(tmp_path / "ca" / tls.CA_KEY) == 0o600
    assert _mode(tmp_path / "ca") == 0o700


def test_a_new_ca_joins_the_bundle_before_the_old_one(tmp_path: Path) -> None:
    """A rotation: certificates of the old CA stay trusted until it is dropped."""
    tls.create_ca(tmp_path / "ca", name="old CA")
    tls.create_ca(tmp_path / "ca", name="new CA")
    names = [c.subject.rfc4514_string() for c in _certs(tmp_path / "ca" / tls.CA_CERT)]
    assert names == ["CN=new CA", "CN=old CA"]


def test_a_members_certificate_names_it_and_its_hosts(tmp_path: Path) -> None:
    tls.create_ca(tmp_path / "ca")
    before = datetime.datetime.now(datetime.UTC)
    path = tls.issue(
        tmp_path / "ca", "node-1", tmp_path / "n1", hosts=("10.0.0.7", "db.example", "::1"), days=7
    )
    after = datetime.datetime.now(datetime.UTC)
    assert path == tmp_path / "n1" / tls.NODE_CERT
    [cert] = _certs(path)
    [ca] = _certs(tmp_path / "ca" / tls.CA_CERT)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-1")])
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["db.example"]
    five, week = datetime.timedelta(minutes=5), datetime.timedelta(days=7)
    _within(cert.not_valid_before_utc, before.replace(microsecond=0) - five, after - five)
    _within(cert.not_valid_after_utc, before.replace(microsecond=0) + week, after + week)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value == x509.BasicConstraints(False, None)
    uses = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(uses.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # (neither marked critical: a verifier that does not know one still reads the rest)
    assert not uses.critical
    assert not cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    # Its key is private; the CA bundle comes with it, and the CA's key never does.
    assert _mode(tmp_path / "n1" / tls.NODE_KEY) == 0o600
    assert (tmp_path / "n1" / tls.CA_CERT).read_bytes() == (
        tmp_path / "ca" / tls.CA_CERT
    ).read_bytes()
    assert not (tmp_path / "n1" / tls.CA_KEY).exists()
    assert tls.TlsFiles(tmp_path / "n1").name() == "node-1"
    # The default hosts: this machine's loopback names.
    [default] = _certs(tls.issue(tmp_path / "ca", "node-2", tmp_path / "n2"))
    sans = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_a_certificate_issued_into_the_cas_directory_keeps_its_bundle(tmp_path: Path) -> None:
    """(An SMS that issues its own certificate next to its CA: the bundle is not copied
    over itself, so a rotation's second CA stays in it.)"""
    tls.create_ca(tmp_path / "ca", name="old CA")
    tls.create_ca(tmp_path / "ca", name="new CA")
    tls.issue(tmp_path / "ca", "sms", tmp_path / "ca")
    assert len(_certs(tmp_path / "ca" / tls.CA_CERT)) == 2
    assert tls.TlsFiles(tmp_path / "ca").present


@pytest.mark.parametrize("name", ["", "x" * 65, "tab\there", "new\nline"])
def test_a_member_name_is_one_to_64_printable_characters(tmp_path: Path, name: str) -> None:
    tls.create_ca(tmp_path / "ca")
    with pytest.raises(InvalidArgument) as caught:
        tls.issue(tmp_path / "ca", name, tmp_path / "n")
    assert str(caught.value) == f"a member's name is 1-64 printable characters, not {name!r}"
    assert not (tmp_path / "n").exists()
    tls.issue(tmp_path / "ca", "x" * 64, tmp_path / "longest")  # (the longest there is)


def test_issuing_needs_a_ca_of_spears(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        tls.issue(tmp_path / "none", "node-1", tmp_path / "n")
    assert str(caught.value) == (
        f"no cluster CA in {tmp_path / 'none'}: run `spear cluster init` first"
    )
    # A CA whose key is not an elliptic-curve key is not one spear made.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    tls.create_ca(tmp_path / "ca")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "ca" / tls.CA_KEY).write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(InvalidArgument) as refused:
        tls.issue(tmp_path / "ca", "node-1", tmp_path / "n")
    assert str(refused.value) == f"{tmp_path / 'ca' / tls.CA_KEY} is not a spear cluster CA key"


def test_files_that_are_missing_are_named(tmp_path: Path) -> None:
    files = tls.TlsFiles(tmp_path / "empty")
    assert not files.present
    message = (
        f"TLS needs ca.crt, node.crt and node.key in {tmp_path / 'empty'}"
        " (spear cluster init; spear cluster cert NAME)"
    )
    for call in (files.name, files.member_proof, files.server_context, files.client_context):
        with pytest.raises(NotFound) as caught:
            call()
        assert str(caught.value) == message
    # A user's directory holds the CA bundle alone: enough to call without a certificate.
    tls.create_ca(tmp_path / "ca")
    user = tls.TlsFiles(tmp_path / "ca")  # (ca.crt, no node.crt)
    assert not user.present
    assert user.client_context(present_certificate=False).verify_mode is ssl.CERT_REQUIRED
    with pytest.raises(NotFound):
        user.client_context()


def test_the_contexts_settings(tmp_path: Path) -> None:
    tls.create_ca(tmp_path / "ca")
    tls.issue(tmp_path / "ca", "node-1", tmp_path / "n1")
    files = tls.TlsFiles(tmp_path / "n1")
    server = files.server_context()
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2
    assert server.verify_mode is ssl.CERT_OPTIONAL  # (users call with tokens alone)
    assert server.options & ssl.OP_NO_RENEGOTIATION
    # (added to ssl's own defaults, not put in their place)
    assert server.options & ssl.OP_NO_COMPRESSION and server.options & ssl.OP_NO_SSLv3
    client = files.client_context()
    assert client.minimum_version is ssl.TLSVersion.TLSv1_2
    assert client.verify_mode is ssl.CERT_REQUIRED and client.check_hostname
    for ctx in (server, client):
        ciphers = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert ciphers and all(n.startswith("ECDHE-") for n in ciphers), ciphers
        assert all("GCM" in n or "CHACHA20" in n for n in ciphers), ciphers
    assert files.member_proof() is not None


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str | None, Any]:
    """(the protocol both chose by ALPN, the certificate the server saw: None without
    one, "refused" if the server refused the connection) of one TLS connection over a
    socket pair; the client's refusal raises ssl.SSLError."""
    a, b = socket.socketpair()
    seen: list[Any] = []

    def serve() -> None:
        try:
            with server.wrap_socket(b, server_side=True) as conn:
                seen.append(conn.getpeercert())
                conn.recv(1)
        except (ssl.SSLError, OSError):
            seen.append("refused")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(a, server_hostname="localhost") as conn:
            conn.sendall(b"x")
            chosen = conn.selected_alpn_protocol()
    finally:
        a.close()
        thread.join(10)
        b.close()
    return chosen, (seen[0] if seen else "refused")


def test_members_shake_hands_and_a_stranger_does_not(tmp_path: Path) -> None:
    tls.create_ca(tmp_path / "ca")
    tls.issue(tmp_path / "ca", "node-1", tmp_path / "n1")
    tls.issue(tmp_path / "ca", "node-2", tmp_path / "n2")
    server = tls.TlsFiles(tmp_path / "n1").server_context()
    member = tls.TlsFiles(tmp_path / "n2")
    chosen, seen = _handshake(server, member.client_context())
    assert chosen == "h2"
    assert isinstance(seen, dict) and seen["subject"] == ((("commonName", "node-2"),),)
    # A user with the CA alone: served, with no certificate seen.
    chosen, seen = _handshake(server, member.client_context(present_certificate=False))
    assert (chosen, seen) == ("h2", None)
    # A server of another CA is refused by the member.
    tls.create_ca(tmp_path / "other")
    tls.issue(tmp_path / "other", "node-1", tmp_path / "impostor")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls.TlsFiles(tmp_path / "impostor").server_context(), member.client_context())


def test_the_defaults_and_who_may_read_what(tmp_path: Path) -> None:
    """A CA named and valid as `spear cluster init` makes it, a member's certificate valid
    for a year; keys the owner's alone, certificates readable by anyone the umask lets
    (they are public: a user copies ca.crt to call the cluster); a new bundle holds its
    one certificate and nothing else."""
    old = os.umask(0o022)
    try:
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        bundle = tls.create_ca(tmp_path / "ca")
        path = tls.issue(tmp_path / "ca", "node-1", tmp_path / "n1")
        after = datetime.datetime.now(datetime.UTC)
    finally:
        os.umask(old)
    [ca] = _certs(bundle)
    assert ca.subject.rfc4514_string() == "CN=spear cluster CA"
    decade, year = datetime.timedelta(days=3650), datetime.timedelta(days=365)
    _within(ca.not_valid_after_utc, before + decade, after + decade)
    [cert] = _certs(path)
    _within(cert.not_valid_after_utc, before + year, after + year)
    assert bundle.read_bytes().count(b"-----BEGIN") == 1
    assert bundle.read_bytes().endswith(b"-----END CERTIFICATE-----\n")
    for public in (bundle, path, tmp_path / "n1" / tls.CA_CERT):
        assert _mode(public) == 0o644, public
    for private in (tmp_path / "ca" / tls.CA_KEY, tmp_path / "n1" / tls.NODE_KEY):
        assert _mode(private) == 0o600, private


def test_validity_starts_now_whatever_the_machines_time_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(A local time taken for UTC would make a certificate valid only hours from now on
    a machine east of Greenwich.)"""
    monkeypatch.setenv("TZ", "Etc/GMT-9")  # (UTC+9)
    time.tzset()
    try:
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        [ca] = _certs(tls.create_ca(tmp_path / "ca"))
        [cert] = _certs(tls.issue(tmp_path / "ca", "node-1", tmp_path / "n1"))
        after = datetime.datetime.now(datetime.UTC)
    finally:
        monkeypatch.undo()  # (TZ as it was)
        time.tzset()
    five = datetime.timedelta(minutes=5)
    for each in (ca, cert):
        _within(each.not_valid_before_utc, before - five, after - five)
