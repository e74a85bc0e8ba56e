"""A member's proof (transport/member_proof.py): admitted as its certificate's name when a
CA of the bundle issued the certificate and the member's key signed it, and refused with
one clear reason otherwise: another cluster's CA, a borrowed certificate, a changed
byte, an expired or far-dated proof, a malformed value."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from spear.errors import Unauthenticated
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


def test_a_members_proof_names_it(cluster: Path) -> None:
    verifier = _verifier(cluster)
    assert verifier.name(_proof(cluster, "node-1").value()) == "node-1"
    assert verifier.name(_proof(cluster, "node-2").value()) == "node-2"


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
    with pytest.raises(Unauthenticated, match="not issued by this cluster's CA"):
        _verifier(cluster).name(_proof(cluster, "intruder").value())


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
    with pytest.raises(Unauthenticated, match="signature does not match"):
        _verifier(cluster).name(forged)


def test_a_changed_expiry_breaks_the_signature(cluster: Path) -> None:
    version, certificate, expiry, signature = _proof(cluster, "node-1").value().split(".")
    later = ".".join((version, certificate, str(int(expiry) + 30), signature))
    with pytest.raises(Unauthenticated, match="signature does not match"):
        _verifier(cluster).name(later)


def test_an_expired_proof_and_one_dated_too_far_ahead_are_refused(cluster: Path) -> None:
    proof = _proof(cluster, "node-1")
    now = time.time()
    old = proof.value(now=now - LIFETIME_S - 1)
    with pytest.raises(Unauthenticated, match="expired"):
        _verifier(cluster).name(old, now=now)
    ahead = _proof(cluster, "node-1").value(now=now + 3600)
    with pytest.raises(Unauthenticated, match="too far ahead"):
        _verifier(cluster).name(ahead, now=now)


def test_a_remembered_proof_stops_working_when_it_expires(cluster: Path) -> None:
    verifier = _verifier(cluster)
    now = time.time()
    value = _proof(cluster, "node-1").value(now=now)
    assert verifier.name(value, now=now) == "node-1"
    assert verifier.name(value, now=now + LIFETIME_S / 2) == "node-1"  # (remembered)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.name(value, now=now + LIFETIME_S + 1)


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
    with pytest.raises(Unauthenticated, match="malformed member proof"):
        _verifier(cluster).name(value)


def test_a_proof_of_another_version_is_refused(cluster: Path) -> None:
    _, certificate, expiry, signature = _proof(cluster, "node-1").value().split(".")
    with pytest.raises(Unauthenticated, match="unknown version 'v9'"):
        _verifier(cluster).name(".".join(("v9", certificate, expiry, signature)))
