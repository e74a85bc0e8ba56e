"""A member's proof (transport/member_proof.py): admitted as its certificate's name when a
CA of the bundle issued the certificate and the member's key signed it, and refused with
one clear reason otherwise: another cluster's CA, a borrowed certificate, a changed
byte, an expired or far-dated proof, a malformed value."""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spear.errors import InvalidArgument, Unauthenticated
from spear.transport import member_proof, tls
from spear.transport.auth import Authorizer, Role
from spear.transport.member_proof import LIFETIME_S, MemberProof, MemberVerifier

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    """A CA, and members node-1 and node-2 with their certificates."""
    tls.create_ca(tmp_path / "ca")
    for name in ("node-1", "node-2"):
        tls.issue(tmp_path / "ca", name, tmp_path / name)
    return tmp_path


def _proof(root: Path, name: str) -> MemberProof:
    return tls.TlsFiles(root / name).member_proof()


def _verifier(root: Path) -> MemberVerifier:
    return MemberVerifier(root / "ca" / tls.CA_CERT)


def _refused(call: Any, reason: str) -> None:
    """`call()` is refused with exactly `reason` (not a message that merely contains it)."""
    with pytest.raises(Unauthenticated) as refusal:
        call()
    assert str(refusal.value) == reason


def test_a_members_proof_names_it(cluster: Path) -> None:
    verifier = _verifier(cluster)
    assert verifier.name(_proof(cluster, "node-1").value()) == "node-1"
    assert verifier.name(_proof(cluster, "node-2").value()) == "node-2"


def test_a_proof_is_four_fields_of_unpadded_base64url(cluster: Path) -> None:
    """(Metadata values are ASCII: no padding, no '+' or '/'.)"""
    value = _proof(cluster, "node-1").value()
    version, certificate, expiry, signature = value.split(".")
    assert version == "v1" and expiry.isdigit()
    for field in (certificate, signature):
        assert set(field) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    der = tls.TlsFiles(cluster / "node-1").member_proof()._certificate
    assert member_proof._unb64(certificate) == der
    assert len(certificate) == -(-len(der) * 4 // 3)  # (base64 of it, unpadded)


def test_an_authorizer_admits_a_proof_as_the_member_and_refuses_one_it_cannot_check(
    cluster: Path,
) -> None:
    metadata = {member_proof.METADATA_KEY: _proof(cluster, "node-2").value()}
    principal = Authorizer(None, members=_verifier(cluster)).authenticate(metadata, None)
    assert (principal.name, principal.role, principal.via) == ("node-2", Role.NODE, "certificate")
    with pytest.raises(Unauthenticated, match="no cluster CA to check it"):
        Authorizer(None).authenticate(metadata, None)


def test_a_certificate_of_another_clusters_ca_is_refused(cluster: Path) -> None:
    tls.create_ca(cluster / "other-ca")
    tls.issue(cluster / "other-ca", "node-1", cluster / "intruder")
    _refused(
        lambda: _verifier(cluster).name(_proof(cluster, "intruder").value()),
        "member certificate not issued by this cluster's CA",
    )


def test_during_a_ca_rotation_both_cas_are_accepted(cluster: Path) -> None:
    tls.create_ca(cluster / "new-ca")
    tls.issue(cluster / "new-ca", "node-3", cluster / "node-3")
    bundle = cluster / "bundle.crt"
    bundle.write_bytes(
        (cluster / "ca" / tls.CA_CERT).read_bytes()
        + (cluster / "new-ca" / tls.CA_CERT).read_bytes()
    )
    verifier = MemberVerifier(bundle)
    assert verifier.name(_proof(cluster, "node-1").value()) == "node-1"
    assert verifier.name(_proof(cluster, "node-3").value()) == "node-3"


def test_a_borrowed_certificate_without_its_key_is_refused(cluster: Path) -> None:
    """node-2's signature over node-1's certificate: who holds node-1's certificate (it is
    public) is not node-1."""
    version, _, expiry, signature = _proof(cluster, "node-2").value().split(".")
    _, certificate, _, _ = _proof(cluster, "node-1").value().split(".")
    forged = ".".join((version, certificate, expiry, signature))
    _refused(
        lambda: _verifier(cluster).name(forged),
        "member proof signature does not match its certificate",
    )


def test_a_changed_expiry_breaks_the_signature(cluster: Path) -> None:
    version, certificate, expiry, signature = _proof(cluster, "node-1").value().split(".")
    later = ".".join((version, certificate, str(int(expiry) + 30), signature))
    with pytest.raises(Unauthenticated, match="signature does not match"):
        _verifier(cluster).name(later)


def test_an_expired_proof_and_one_dated_too_far_ahead_are_refused(cluster: Path) -> None:
    proof = _proof(cluster, "node-1")
    now = time.time()
    old = proof.value(now=now - LIFETIME_S - 1)
    _refused(
        lambda: _verifier(cluster).name(old, now=now),
        "member proof expired (or dated too far ahead: check clocks)",
    )
    ahead = _proof(cluster, "node-1").value(now=now + 3600)
    with pytest.raises(Unauthenticated, match="too far ahead"):
        _verifier(cluster).name(ahead, now=now)


def test_a_proof_is_good_until_its_expiry_and_not_at_it(cluster: Path) -> None:
    now = float(int(time.time()))
    value = _proof(cluster, "node-1").value(now=now)
    expiry = now + LIFETIME_S
    assert _verifier(cluster).name(value, now=expiry - 0.5) == "node-1"
    with pytest.raises(Unauthenticated, match="expired"):
        _verifier(cluster).name(value, now=expiry)
    remembering = _verifier(cluster)
    assert remembering.name(value, now=now) == "node-1"
    assert remembering.name(value, now=expiry - 0.5) == "node-1"  # (remembered)
    with pytest.raises(Unauthenticated, match="expired"):
        remembering.name(value, now=expiry)


def test_a_proof_may_be_dated_ahead_by_the_clock_skew_and_no_more(cluster: Path) -> None:
    now = float(int(time.time()))
    proof = _proof(cluster, "node-1")
    at_most = proof.value(now=now + member_proof.SKEW_S)  # (expiry: now + LIFETIME + SKEW)
    assert _verifier(cluster).name(at_most, now=now) == "node-1"
    beyond = _proof(cluster, "node-1").value(now=now + member_proof.SKEW_S + 1)
    with pytest.raises(Unauthenticated, match="too far ahead"):
        _verifier(cluster).name(beyond, now=now)


def test_a_checked_proof_is_remembered_not_checked_again(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[bytes] = []
    real = member_proof._check_signature
    monkeypatch.setattr(
        member_proof, "_check_signature", lambda c, s, sig: (checks.append(s), real(c, s, sig))
    )
    verifier = _verifier(cluster)
    one, two = _proof(cluster, "node-1").value(), _proof(cluster, "node-2").value()
    for _ in range(3):
        assert verifier.name(one) == "node-1"
        assert verifier.name(two) == "node-2"
    assert len(checks) == 2


def test_a_server_remembers_a_bounded_number_of_proofs(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expired ones are forgotten first, then the oldest; each is still checked when met
    again."""
    monkeypatch.setattr(member_proof, "_REMEMBERED", 3)
    verifier = _verifier(cluster)
    now = time.time()
    proofs = [_proof(cluster, "node-1").value(now=now + i) for i in range(6)]
    stale = _proof(cluster, "node-2").value(now=now - LIFETIME_S + 5)
    verifier.name(stale, now=now)
    verifier.name(proofs[0], now=now)
    verifier.name(proofs[1], now=now + 10)  # (stale has expired now)
    assert set(verifier._checked) == {stale, proofs[0], proofs[1]}
    verifier.name(proofs[2], now=now + 10)
    assert set(verifier._checked) == {proofs[0], proofs[1], proofs[2]}
    verifier.name(proofs[3], now=now + 10)  # (all current: the oldest goes)
    assert set(verifier._checked) == {proofs[1], proofs[2], proofs[3]}
    assert verifier.name(proofs[0], now=now + 10) == "node-1"
    assert set(verifier._checked) == {proofs[2], proofs[3], proofs[0]}


def _certificate(
    root: Path,
    *,
    name: str | None = "node-9",
    usages: list[Any] | None = None,
    days: float = 30,
    key: Any = None,
) -> tuple[bytes, Any]:
    """A certificate of the cluster's CA as `tls.issue` would not make it; (DER, key)."""
    ca_key = serialization.load_pem_private_key((root / "ca" / tls.CA_KEY).read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((root / "ca" / tls.CA_CERT).read_bytes())
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)] if name else []
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER), key


def _signed(der: bytes, key: Any, now: float) -> str:
    proof = object.__new__(member_proof.MemberProof)
    proof._certificate, proof._key = der, key
    return proof._make(int(now) + LIFETIME_S)


def test_a_certificate_only_for_servers_is_refused_one_for_no_use_in_particular_is_not(
    cluster: Path,
) -> None:
    now = time.time()
    der, key = _certificate(cluster, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    _refused(
        lambda: _verifier(cluster).name(_signed(der, key, now), now=now),
        "member certificate is not for client authentication",
    )
    der, key = _certificate(cluster, usages=None)
    assert _verifier(cluster).name(_signed(der, key, now), now=now) == "node-9"


def test_a_certificate_that_names_no_member_is_refused(cluster: Path) -> None:
    now = time.time()
    der, key = _certificate(cluster, name=None, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _refused(
        lambda: _verifier(cluster).name(_signed(der, key, now), now=now),
        "member certificate names no member",
    )


def test_a_certificate_is_good_from_its_first_second_to_its_last(cluster: Path) -> None:
    der, key = _certificate(cluster, days=1)
    cert = x509.load_der_x509_certificate(der)
    first = cert.not_valid_before_utc.timestamp()
    last = cert.not_valid_after_utc.timestamp()
    for good in (first, last):
        assert _verifier(cluster).name(_signed(der, key, good), now=good) == "node-9"
    for bad in (first - 1, last + 1):
        _refused(
            lambda bad=bad: _verifier(cluster).name(_signed(der, key, bad), now=bad),
            "member certificate expired or not yet valid",
        )


def test_a_remembered_proof_ends_with_its_certificate(cluster: Path) -> None:
    der, key = _certificate(cluster, days=1)
    last = x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    verifier = _verifier(cluster)
    value = _signed(der, key, last - 10)
    assert verifier.name(value, now=last - 10) == "node-9"
    _refused(
        lambda: verifier.name(value, now=last + 1),
        "member certificate expired or not yet valid",
    )


def test_a_certificate_with_an_rsa_key_is_refused(cluster: Path) -> None:
    now = time.time()
    der, _ = _certificate(cluster, key=rsa.generate_private_key(65537, 2048))
    value = ".".join(("v1", member_proof._b64(der), str(int(now) + 60), "AAAA"))
    _refused(
        lambda: _verifier(cluster).name(value, now=now),
        "member certificate's key is not a spear member key",
    )


def test_a_member_key_that_is_not_ec_is_one_clear_error(cluster: Path) -> None:
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = (cluster / "node-1" / tls.NODE_CERT).read_bytes()
    with pytest.raises(InvalidArgument) as error:
        member_proof.MemberProof(cert_pem, rsa_pem)
    assert str(error.value) == "a member's key is an EC key of spear's cluster CA"


def test_a_member_makes_a_new_proof_when_half_its_life_is_gone(cluster: Path) -> None:
    proof = _proof(cluster, "node-1")
    now = time.time()
    first = proof.value(now=now)
    assert proof.value(now=now + LIFETIME_S / 2 - 1) == first
    renewed = proof.value(now=now + LIFETIME_S / 2)
    assert renewed != first
    assert _verifier(cluster).name(renewed, now=now + LIFETIME_S - 1) == "node-1"


@pytest.mark.parametrize(
    "value",
    ["", "v1", "v1.a.b.c", "v1.!!!.1.AAAA", "v1.AAAA.soon.AAAA", "a.b.c.d.e"],
)
def test_a_malformed_proof_is_one_clear_refusal(cluster: Path, value: str) -> None:
    _refused(lambda: _verifier(cluster).name(value), "malformed member proof")


def test_a_proof_of_another_version_is_refused(cluster: Path) -> None:
    _, certificate, expiry, signature = _proof(cluster, "node-1").value().split(".")
    with pytest.raises(Unauthenticated, match="unknown version 'v9'"):
        _verifier(cluster).name(".".join(("v9", certificate, expiry, signature)))


def test_a_proof_expired_this_very_second_is_forgotten_first(
    cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_proof, "_REMEMBERED", 3)
    verifier = _verifier(cluster)
    now = float(int(time.time()))
    first, last = (_proof(cluster, "node-1").value(now=now + i) for i in (0, 1))
    stale = _proof(cluster, "node-2").value(now=now - LIFETIME_S + 5)  # (expires at now + 5)
    for value in (first, stale, last):
        verifier.name(value, now=now)
    newest = _proof(cluster, "node-1").value(now=now + 2)
    verifier.name(newest, now=now + 5)
    assert set(verifier._checked) == {first, last, newest}


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x17", b"\xff" * 31, bytes(range(256))])
def test_base64url_fields_come_back_as_they_went(data: bytes) -> None:
    """(b"\\x00\\x00\\x17" is "AAAX": a field may end in any letter of the alphabet.)"""
    assert member_proof._unb64(member_proof._b64(data)) == data
    assert "=" not in member_proof._b64(data)
