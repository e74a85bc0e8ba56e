"""Who is calling, and may they: credentials checked at the gRPC edge (docs/security.md).

A caller proves who it is with a bearer token (metadata `authorization: Bearer spear_...`)
or, between the processes of a cluster, with a client certificate from the cluster's CA
(mutual TLS, `transport/tls.py`). Each principal has a role and each method needs one:

    reader     read tasks, logs, results, objects and node info
    submitter  also run and cancel tasks (WASM), write objects
    admin      also run process-runtime tasks (programs on the node's host)
    node       a cluster member (certificate only): also the SMS's writes and forwarding

A method no table names needs admin. Tokens are random (256 bits), stored only as their
SHA-256 in `DATA/auth/tokens.json` (owner-only), so the file never holds a usable secret;
the node's owner gets an admin token in `DATA/auth/owner.token`, which the CLI reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import hashlib
import hmac
import os
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from spear.core.namespaces import check_name as check_namespace
from spear.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from spear.transport.member_proof import METADATA_KEY as MEMBER_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from spear.transport.member_proof import MemberVerifier

TOKEN_PREFIX = "spear_"
AUTH_DIR = "auth"
TOKENS_FILE = "tokens.json"
OWNER_TOKEN_FILE = "owner.token"
METADATA_KEY = "authorization"
_RELOAD_EVERY_S = 1.0


class Role(enum.IntEnum):
    """What a principal may do; each role may do what the ones below it may."""

    READER = 1
    SUBMITTER = 2
    ADMIN = 3
    NODE = 4

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls if r is not Role.NODE)
            raise InvalidArgument(f"unknown role {text!r}: choose {names}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    via: str  # "token", "certificate" or "local"
    # The one namespace it may act in; None: any it names (admins, cluster members).
    namespace: str | None = None


# The principal of the call being served (set by the call guard, read by services that
# apply finer rules, such as which runtimes a caller may use).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "spear_principal", default=None
)
# The namespace the call acts in (node/namespaced.py scopes the node to it); None: the
# whole node, unscoped (a cluster member that named none, or no authentication at all).
current_namespace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "spear_namespace", default=None
)
NAMESPACE_KEY = "spear-namespace"

_SPEARLET = "/spear.v1.Spearlet/"
_PEER = "/spear.v1.SpearletPeer/"
_SMS = "/spear.v1.MetadataServer/"


def _table(prefix: str, role: Role, names: str) -> dict[str, Role]:
    return {prefix + name: role for name in names.split()}


POLICY: dict[str, Role] = {
    **_table(
        _SPEARLET,
        Role.READER,
        "GetTask ListTasks WatchTask GetResult StreamLogs HasArtifact GetNodeInfo GetObject"
        " ListObjects",
    ),
    **_table(
        _SPEARLET,
        Role.SUBMITTER,
        "SubmitTask SubmitTasks RunTask CallTask ExchangeStream CancelTask UploadArtifact"
        " PutObject DeleteObject AddObjectRef RemoveObjectRef PinObject UnpinObject DeleteTasks",
    ),
    **_table(_PEER, Role.READER, "ListClusterNodes"),
    **_table(_PEER, Role.NODE, "ForwardTask"),
    **_table(_PEER, Role.NODE, "ForwardTasks"),
    **_table(
        _SMS,
        Role.READER,
        "GetNode ListNodes FindNodes LookupTask ListClusterTasks LocateObject",
    ),
    **_table(
        _SMS,
        Role.NODE,
        "RegisterNode Heartbeat DeregisterNode ReportTask ReportTasks PutObjectLocation"
        " RemoveObjectLocation VerifyToken TakeTaskSlot ReleaseTaskSlot",
    ),
    **_table(_SMS, Role.NODE, "DeleteClusterTasks"),  # a member's deleted finished tasks
    **_table(_SMS, Role.NODE, "KeepTaskInput"),  # a retryable task's stdin
    **_table(_SMS, Role.NODE, "WatchObjects"),  # invalidations of cached object versions
    **_table(_SMS, Role.READER, "LookupObject ListObjectRecords"),  # the object index
    **_table("/spear.v1.SpearletVectors/", Role.READER, "ReadVectors"),  # vector collections
    **_table("/spear.v1.SpearletVectors/", Role.SUBMITTER, "WriteVectors"),
    # Reflection describes the services (no data): any authenticated caller may ask.
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Role.READER,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Role.READER,
}
# Health checks say only SERVING or not: anyone may ask (load balancers, probes).
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


# A runtime that runs programs on the node's host (as the node's user) needs more than
# the right to submit: WASM guests reach only what their host gives them.
RUNTIME_ROLES = {"process": Role.ADMIN}


def require_role(principal: Principal, need: Role, doing: str, *, needer: str = "it") -> None:
    """Refuse `principal` what it is `doing` unless its role is at least `need`: the one
    wording of every role refusal (the gRPC guard, object transfer, the web API), e.g.
    "ann (reader) may not call /spear.v1.Spearlet/Submit: it needs submitter"."""
    if principal.role < need:
        raise PermissionDenied(
            f"{principal.name} ({principal.role.name.lower()}) may not {doing}:"
            f" {needer} needs {need.name.lower()}"
        )


def check_may_run(runtime: str) -> None:
    """Refuse the call's principal a runtime its role does not allow."""
    principal = current_principal.get()
    if principal is not None:
        need = RUNTIME_ROLES.get(str(runtime), Role.SUBMITTER)
        require_role(principal, need, f"run {runtime} tasks", needer=f"the {runtime} runtime")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half of it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as the store keeps it: never the secret itself."""

    id: str
    name: str
    role: Role
    created_at: float
    namespace: str | None = None  # None: any namespace (admin tokens only)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.name.lower(),
            "created_at": self.created_at,
            "namespace": self.namespace,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> TokenInfo:
        role = Role.parse(r["role"])
        return cls(r["id"], r["name"], role, r["created_at"], token_namespace(r, role))


def token_namespace(record: Mapping[str, Any], role: Role) -> str | None:
    """The namespace a token record is bound to: its own, else `default` (admins: any)."""
    namespace = record.get("namespace")
    if namespace is None and role < Role.ADMIN:
        return "default"
    return None if namespace is None else str(namespace)


class TokenStore:
    """The tokens a node accepts, in `DATA/auth/tokens.json`; a running node sees a new
    token at once, and a revoked one stops working within a second."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / AUTH_DIR
        self.path = self.directory / TOKENS_FILE
        # The file as last read (its records, the tokens verified against them, when it
        # was checked), set by `_load`, which every reader runs first (`_seen` is None).
        self._records: dict[str, dict[str, Any]]
        self._verified: dict[str, Principal]
        self._checked_at: float
        # Which version of the file that was: its modification time, inode and size (each write
        # replaces the file, and a change within the same clock tick keeps the time).
        self._seen: tuple[int, int, int] | None = None

    # -- reading ---------------------------------------------------------------------

    def _load(self) -> None:
        self._checked_at = time.monotonic()
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._records, self._verified, self._seen = {}, {}, None
            return
        seen = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        if seen == self._seen:
            return
        try:
            records = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise PermissionDenied(f"the token file {self.path} cannot be read: {exc}") from None
        self._records = {r["id"]: r for r in records.get("tokens", [])}
        self._verified = {}
        self._seen = seen

    def _fresh(self) -> None:
        if self._seen is None or time.monotonic() - self._checked_at >= _RELOAD_EVERY_S:
            self._load()

    def verify(self, token: str) -> Principal | None:
        """The principal a token stands for, or None if no valid token is given."""
        self._fresh()
        principal = self._verified.get(token)
        if principal is not None:
            return principal
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_id, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
        record = self._records.get(token_id)
        if record is None:  # issued within the last second? (a stat; a read if it changed)
            self._load()
            record = self._records.get(token_id)
        if record is None or not hmac.compare_digest(_digest(secret), record["sha256"]):
            return None
        role = Role.parse(record["role"])
        principal = Principal(record["name"], role, "token", token_namespace(record, role))
        # (at most one entry per token of the file: a secret has one digest)
        self._verified[token] = principal
        return principal

    def tokens(self) -> list[TokenInfo]:
        self._load()
        return [
            TokenInfo.from_record(r)
            for r in sorted(self._records.values(), key=lambda r: r["created_at"])
        ]

    # -- changing --------------------------------------------------------------------

    def _save(self) -> None:
        body = {"tokens": sorted(self._records.values(), key=lambda r: r["created_at"])}
        write_private(self.path, orjson.dumps(body, option=orjson.OPT_INDENT_2))
        self._seen = None  # read back on next use, which forgets the verified tokens

    def issue(self, name: str, role: Role, namespace: str | None = None) -> str:
        """A new token for `name` with `role`, acting only in `namespace` (None: `default`,
        or any for an admin); the secret is returned once, never stored."""
        if role is Role.NODE:
            raise InvalidArgument("cluster members authenticate with certificates, not tokens")
        if not name or len(name) > 128 or not name.isprintable():
            raise InvalidArgument("a token's name is 1-128 printable characters")
        self._load()
        token_id = secrets.token_hex(4)
        while token_id in self._records:
            token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        self._records[token_id] = {
            "id": token_id,
            "name": name,
            "role": role.name.lower(),
            "sha256": _digest(secret),
            "created_at": time.time(),
        }
        if namespace is not None:
            self._records[token_id]["namespace"] = check_namespace(namespace)
        self._save()
        return f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke(self, token_id_or_name: str) -> list[TokenInfo]:
        """Remove the token with this id (or every token with this name)."""
        self._load()
        gone = [r for r in self._records.values() if token_id_or_name in (r["id"], r["name"])]
        if not gone:
            raise NotFound(f"no token with id or name {token_id_or_name!r}")
        for r in gone:
            del self._records[r["id"]]
        self._save()
        return [TokenInfo.from_record(r) for r in gone]

    def owner_token(self) -> str:
        """The node owner's admin token (`DATA/auth/owner.token`), made on first use."""
        path = self.directory / OWNER_TOKEN_FILE
        try:
            token = path.read_text().strip()
            if self.verify(token) is not None:
                return token
        except FileNotFoundError:
            pass
        token = self.issue("owner", Role.ADMIN)
        write_private(path, (token + "\n").encode())
        return token


def read_owner_token(data_dir: Path) -> str | None:
    """The owner's token of the node whose data dir this is, if this user can read it."""
    try:
        return (data_dir / AUTH_DIR / OWNER_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _text(value: object) -> object:
    """A metadata value as text (grpc gives text for text keys; bytes are read too)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def bearer(metadata: Mapping[str, Any]) -> str | None:
    value = _text(metadata.get(METADATA_KEY))
    if not isinstance(value, str):
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


# A connection's certificate name, read once: the certificate is fixed at the handshake
# (TLS 1.3 has no renegotiation; the server refuses it on TLS 1.2, transport/tls.py), and
# `getpeercert()` decodes the whole certificate each time (docs/security.md, the cost).
_NAMES: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def certificate_name(peer: Any) -> str | None:
    """The common name of a verified client certificate, if the caller presented one."""
    transport = getattr(peer, "_transport", None)  # (one per connection, where it has one)
    if transport is None:  # (grpc.aio's callers: nothing to remember it by)
        return _read_certificate_name(peer)
    try:
        return _NAMES[transport]
    except (KeyError, TypeError):  # not seen yet, or no transport to remember it by
        pass
    name = _read_certificate_name(peer)
    with contextlib.suppress(TypeError):
        _NAMES[transport] = name
    return name


def _read_certificate_name(peer: Any) -> str | None:
    try:
        cert = peer.cert()
    except Exception:  # no TLS on this connection
        return None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@dataclass(frozen=True)
class Authorizer:
    """Decides each call: who is it (token or certificate), and may they call this method."""

    tokens: TokenStore | None
    policy: Mapping[str, Role] = dataclasses.field(default_factory=lambda: POLICY)
    # A cluster member's: the SMS's tokens too (transport/cluster_tokens.py).
    cluster: Any = None
    # Members' proofs (`spear-member` metadata) checked against the cluster's CA bundle:
    # how members are known where TLS does not ask for their certificate
    # (transport/member_proof.py); None: no cluster CA here, members are not admitted.
    members: MemberVerifier | None = None

    async def authorize_by_cluster(
        self, method: str, metadata: Mapping[str, Any]
    ) -> Principal | None:
        """The principal of a token the cluster's SMS knows (None: it does not)."""
        token = bearer(metadata)
        if self.cluster is None or token is None:
            return None
        principal: Principal | None = await self.cluster.verify(token)
        if principal is None:
            return None
        require_role(principal, self.policy.get(method, Role.ADMIN), f"call {method}")
        return principal

    def authorize(self, method: str, metadata: Mapping[str, Any], peer: Any) -> Principal | None:
        if method in OPEN_METHODS:
            return None
        principal = self.authenticate(metadata, peer)
        require_role(principal, self.policy.get(method, Role.ADMIN), f"call {method}")
        return principal

    def namespace(self, principal: Principal | None, metadata: Mapping[str, Any]) -> str | None:
        """The namespace the call acts in: the one it names (`spear-namespace` metadata),
        which a bound principal must be bound to, else the principal's own, else
        `default`; None (the whole node) for a cluster member that names none."""
        asked = _text(metadata.get(NAMESPACE_KEY))
        if asked:
            check_namespace(str(asked))
        if principal is None or principal.role is Role.NODE:
            return str(asked) if asked else None
        bound = principal.namespace
        if asked and bound is not None and asked != bound:
            raise PermissionDenied(
                f"{principal.name} may act only in namespace {bound!r}, not {asked!r}"
            )
        return str(asked or bound or "default")

    def authenticate(self, metadata: Mapping[str, Any], peer: Any) -> Principal:
        name = certificate_name(peer)
        if name is not None:
            return Principal(name, Role.NODE, "certificate")
        proof = _text(metadata.get(MEMBER_KEY))
        if proof:
            if self.members is None:
                raise Unauthenticated(
                    "a member's proof was sent, but this server has no cluster CA to check it"
                )
            return Principal(self.members.name(str(proof)), Role.NODE, "certificate")
        token = bearer(metadata)
        if token is None:
            raise Unauthenticated(
                "this node requires a credential: a token (SPEAR_TOKEN, or the owner token"
                " of the node's data dir) or a cluster certificate"
            )
        principal = self.tokens.verify(token) if self.tokens is not None else None
        if principal is None:
            raise Unauthenticated("the token was not accepted (unknown or revoked)")
        return principal


async def admit(
    authorizer: Authorizer, method: str, metadata: Mapping[str, Any], peer: Any
) -> Principal | None:
    """Decide one call as every server of ours does (`transport/aio_server.py`): its
    principal (a certificate, a token of this node or of the cluster's SMS) and namespace
    made current for the handler, or a PermissionDenied (Unauthenticated) or
    InvalidArgument refusal."""
    try:
        principal = authorizer.authorize(method, metadata, peer)
    except Unauthenticated:
        found = await authorizer.authorize_by_cluster(method, metadata)
        if found is None:
            raise
        principal = found
    namespace = authorizer.namespace(principal, metadata)
    current_principal.set(principal)
    current_namespace.set(namespace)
    return principal
