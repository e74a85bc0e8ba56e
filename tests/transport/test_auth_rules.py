"""The rules of transport/auth.py, each stated exactly: which credential is accepted, which
role each call needs, what a token file keeps, what a refused caller is told.

tests/transport/test_auth.py checks them through real gRPC servers; these call the
public functions directly, so that each rule (a `<` that must not be `<=`, a header that
must be parsed just so) fails a test of its own (mutation testing, issue 22).
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import stat
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from spear.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from spear.transport import auth
from spear.transport.auth import (
    POLICY,
    Authorizer,
    Principal,
    Role,
    TokenStore,
    bearer,
    certificate_name,
    check_may_run,
    current_principal,
    read_owner_token,
    require_role,
    write_private,
)

if TYPE_CHECKING:
    from pathlib import Path


class Peer:
    """What a server's peer gives: `cert()`, the verified client certificate (or raises
    without TLS)."""

    def __init__(self, cert: Any = None, error: bool = False) -> None:
        self._cert, self._error = cert, error

    def cert(self) -> Any:
        if self._error:
            raise AttributeError("no TLS on this connection")
        return self._cert


NO_TLS = Peer(error=True)


def _subject(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"subject": tuple(((k, v),) for k, v in pairs)}


# -- roles ---------------------------------------------------------------------------


def test_roles_are_ordered_and_parsed_by_name() -> None:
    assert Role.READER < Role.SUBMITTER < Role.ADMIN < Role.NODE
    assert [Role.parse(n) for n in ("reader", "SUBMITTER", "Admin", "node")] == [
        Role.READER,
        Role.SUBMITTER,
        Role.ADMIN,
        Role.NODE,
    ]
    with pytest.raises(InvalidArgument) as info:
        Role.parse("root")
    assert str(info.value) == "unknown role 'root': choose reader, submitter, admin"


def _as(principal: Principal | None) -> contextvars.Context:
    ctx = contextvars.copy_context()
    ctx.run(current_principal.set, principal)
    return ctx


@pytest.mark.parametrize(
    ("role", "runtime", "allowed"),
    [
        (Role.READER, "wasm", False),
        (Role.SUBMITTER, "wasm", True),
        (Role.SUBMITTER, "process", False),
        (Role.ADMIN, "process", True),
        (Role.ADMIN, "wasm", True),
        (Role.NODE, "process", True),
    ],
)
def test_a_runtime_needs_its_role(role: Role, runtime: str, allowed: bool) -> None:
    ctx = _as(Principal("ann", role, "token"))
    if allowed:
        ctx.run(check_may_run, runtime)
        return
    need = "admin" if runtime == "process" else "submitter"
    with pytest.raises(PermissionDenied) as info:
        ctx.run(check_may_run, runtime)
    assert str(info.value) == (
        f"ann ({role.name.lower()}) may not run {runtime} tasks: the {runtime} runtime needs {need}"
    )


@pytest.mark.parametrize("role", list(Role))
def test_a_role_refusal_names_who_what_and_the_role_needed(role: Role) -> None:
    ann = Principal("ann", role, "token")
    for need in Role:
        if role >= need:
            require_role(ann, need, "call /x")  # (a role at least the one needed passes)
            continue
        with pytest.raises(PermissionDenied) as info:
            require_role(ann, need, "call /x")
        assert (
            str(info.value)
            == f"ann ({role.name.lower()}) may not call /x: it needs {need.name.lower()}"
        )
        with pytest.raises(PermissionDenied) as info:
            require_role(ann, need, "run wasm tasks", needer="the wasm runtime")
        assert str(info.value).endswith(": the wasm runtime needs " + need.name.lower())


def test_a_call_made_in_process_may_run_anything() -> None:
    _as(None).run(check_may_run, "process")  # no principal: not a gRPC call


# -- the token file --------------------------------------------------------------------


def test_an_issued_token_stands_for_its_name_and_role(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("ci", Role.SUBMITTER)
    assert token.startswith("spear_")
    token_id, _, secret = token[len("spear_") :].partition("_")
    assert len(token_id) == 8 and len(secret) == 43  # 32 random bytes, base64url
    # A token that is not an admin's acts in one namespace: "default" unless it names one.
    assert store.verify(token) == Principal("ci", Role.SUBMITTER, "token", "default")
    # Another store (another process) reads the same file.
    assert TokenStore(tmp_path).verify(token) == Principal("ci", Role.SUBMITTER, "token", "default")
    record = orjson.loads((tmp_path / "auth" / "tokens.json").read_bytes())["tokens"][0]
    assert record["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert set(record) == {"id", "name", "role", "sha256", "created_at"}
    assert (record["id"], record["name"], record["role"]) == (token_id, "ci", "submitter")


@pytest.mark.parametrize(
    "wrong",
    [
        "",
        "spear_",
        "spear_nothing",
        "notspear_{id}_{secret}",
        "spear_{id}_{secret}x",
        "spear_{id}_",
        "spear_{id}{secret}",
        "spear_00000000_{secret}",
        "{id}_{secret}",
    ],
)
def test_a_token_that_is_not_exactly_one_issued_is_refused(tmp_path: Path, wrong: str) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("ci", Role.ADMIN)
    token_id, _, secret = token[len("spear_") :].partition("_")
    assert store.verify(wrong.format(id=token_id, secret=secret)) is None
    assert store.verify(token) is not None


def test_a_verified_token_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("ci", Role.READER)
    assert store.verify(token) is not None
    assert store.verify(token) is not None
    other = TokenStore(tmp_path)
    other.revoke("ci")
    reread = TokenStore(tmp_path)
    assert reread.verify(token) is None


def test_names_and_roles_a_token_may_have(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    for bad in ("", "x" * 129, "tab\there", "new\nline"):
        with pytest.raises(InvalidArgument, match="^a token's name is 1-128 printable"):
            store.issue(bad, Role.READER)
    with pytest.raises(InvalidArgument, match="^cluster members authenticate with certificates"):
        store.issue("member", Role.NODE)
    assert store.verify(store.issue("x" * 128, Role.READER)) is not None
    assert store.verify(store.issue("a", Role.READER)) is not None


def test_tokens_are_listed_oldest_first_and_revoked_by_id_or_name(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    first = store.issue("one", Role.READER)
    second = store.issue("two", Role.ADMIN)
    third = store.issue("two", Role.SUBMITTER)
    listed = store.tokens()
    assert [(t.name, t.role) for t in listed] == [
        ("one", Role.READER),
        ("two", Role.ADMIN),
        ("two", Role.SUBMITTER),
    ]
    assert listed[0].to_json() == {
        "id": listed[0].id,
        "name": "one",
        "role": "reader",
        "namespace": "default",
        "created_at": listed[0].created_at,
    }
    assert listed[0].created_at <= listed[1].created_at <= listed[2].created_at
    gone = store.revoke("two")
    assert sorted((t.name, t.role) for t in gone) == [("two", Role.SUBMITTER), ("two", Role.ADMIN)]
    assert sorted(gone, key=lambda t: t.created_at) == listed[1:]  # as they were listed
    assert [t.name for t in store.tokens()] == ["one"]
    assert store.verify(second) is None and store.verify(third) is None
    assert store.verify(first) is not None
    gone = store.revoke(listed[0].id)
    assert [t.id for t in gone] == [listed[0].id]
    assert store.verify(first) is None
    with pytest.raises(NotFound) as info:
        store.revoke("one")
    assert str(info.value) == "no token with id or name 'one'"


def test_a_store_without_a_file_accepts_nothing(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    assert store.tokens() == []
    assert store.verify("spear_00000000_secret") is None
    token = store.issue("ci", Role.READER)
    (tmp_path / "auth" / "tokens.json").unlink()
    assert TokenStore(tmp_path).verify(token) is None


def test_a_token_file_without_tokens_accepts_nothing(tmp_path: Path) -> None:
    token = TokenStore(tmp_path).issue("ci", Role.READER)
    (tmp_path / "auth" / "tokens.json").write_text("{}")
    store = TokenStore(tmp_path)
    assert store.verify(token) is None
    assert store.tokens() == []


def test_an_unreadable_token_file_refuses_everyone_by_name(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    token = store.issue("ci", Role.READER)
    (tmp_path / "auth" / "tokens.json").write_text("{not json")
    with pytest.raises(PermissionDenied, match="^the token file .*tokens.json cannot be read"):
        TokenStore(tmp_path).verify(token)


def test_the_owner_token_is_made_once_and_kept(tmp_path: Path) -> None:
    assert read_owner_token(tmp_path) is None
    store = TokenStore(tmp_path)
    token = store.owner_token()
    assert store.verify(token) == Principal("owner", Role.ADMIN, "token")
    assert read_owner_token(tmp_path) == token
    assert TokenStore(tmp_path).owner_token() == token
    path = tmp_path / "auth" / "owner.token"
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Revoked: a new one replaces it.
    store.revoke("owner")
    again = TokenStore(tmp_path).owner_token()
    assert again != token and read_owner_token(tmp_path) == again
    assert [t.name for t in TokenStore(tmp_path).tokens()] == ["owner"]


def test_an_empty_owner_token_file_is_no_token(tmp_path: Path) -> None:
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "owner.token").write_text("\n")
    assert read_owner_token(tmp_path) is None


def test_private_files_are_the_owners_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "secret"
    write_private(path, b"one")
    write_private(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]


# -- credentials in a call -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer spear_a_b", "spear_a_b"),
        ("bearer spear_a_b", "spear_a_b"),
        ("BEARER  spear_a_b ", "spear_a_b"),
        (b"Bearer spear_a_b", "spear_a_b"),
        ("Basic spear_a_b", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("spear_a_b", None),
        (None, None),
        (7, None),
    ],
)
def test_the_bearer_token_of_a_call(value: object, token: str | None) -> None:
    metadata = {} if value is None else {"authorization": value}
    assert bearer(metadata) == token


def test_the_name_of_a_client_certificate() -> None:
    cert = _subject(("organizationName", "spear"), ("commonName", "node-1"))
    assert certificate_name(Peer(cert)) == "node-1"
    assert certificate_name(Peer(_subject(("organizationName", "spear")))) is None
    assert certificate_name(Peer({})) is None
    assert certificate_name(Peer({"issuer": ((("commonName", "ca"),),)})) is None
    assert certificate_name(Peer(None)) is None
    assert certificate_name(NO_TLS) is None


@pytest.fixture
def authorizer(tmp_path: Path) -> tuple[Authorizer, dict[Role, str]]:
    store = TokenStore(tmp_path)
    tokens = {role: store.issue(role.name.lower(), role) for role in Role if role is not Role.NODE}
    return Authorizer(store), tokens


def _call(authorizer: Authorizer, method: str, token: str | None, peer: Any = NO_TLS) -> Any:
    metadata = {} if token is None else {"authorization": f"Bearer {token}"}
    return authorizer.authorize(method, metadata, peer)


def test_each_method_needs_its_role_and_no_less(
    authorizer: tuple[Authorizer, dict[Role, str]],
) -> None:
    auth_, tokens = authorizer
    for method, need in POLICY.items():
        for role, token in tokens.items():
            if role >= need:
                namespace = None if role is Role.ADMIN else "default"
                assert _call(auth_, method, token) == Principal(
                    role.name.lower(), role, "token", namespace
                )
            else:
                with pytest.raises(PermissionDenied) as info:
                    _call(auth_, method, token)
                assert not isinstance(info.value, Unauthenticated)
                assert str(info.value) == (
                    f"{role.name.lower()} ({role.name.lower()}) may not call {method}:"
                    f" it needs {need.name.lower()}"
                )


def test_a_method_no_table_names_needs_admin(
    authorizer: tuple[Authorizer, dict[Role, str]],
) -> None:
    auth_, tokens = authorizer
    method = "/spear.v1.Spearlet/SomethingNew"
    assert _call(auth_, method, tokens[Role.ADMIN]).role is Role.ADMIN
    with pytest.raises(PermissionDenied, match="it needs admin$"):
        _call(auth_, method, tokens[Role.SUBMITTER])


def test_the_policy_names_the_roles_of_the_calls_users_rely_on() -> None:
    assert POLICY["/spear.v1.Spearlet/GetTask"] is Role.READER
    assert POLICY["/spear.v1.Spearlet/SubmitTask"] is Role.SUBMITTER
    # A call is a submit: CallTask as RunTask, the same role (not admin, the default).
    assert POLICY["/spear.v1.Spearlet/CallTask"] is POLICY["/spear.v1.Spearlet/RunTask"]
    assert POLICY["/spear.v1.Spearlet/CallTask"] is Role.SUBMITTER
    assert POLICY["/spear.v1.SpearletPeer/ForwardTask"] is Role.NODE
    assert POLICY["/spear.v1.MetadataServer/RegisterNode"] is Role.NODE
    assert POLICY["/spear.v1.MetadataServer/ListNodes"] is Role.READER


def test_health_needs_no_credential(authorizer: tuple[Authorizer, dict[Role, str]]) -> None:
    auth_, _ = authorizer
    for method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
        assert _call(auth_, method, None) is None
    with pytest.raises(Unauthenticated):
        _call(auth_, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None)


def test_a_certificate_is_a_cluster_member_whatever_the_token(
    authorizer: tuple[Authorizer, dict[Role, str]],
) -> None:
    auth_, tokens = authorizer
    peer = Peer(_subject(("commonName", "node-7")))
    member = Principal("node-7", Role.NODE, "certificate")
    assert _call(auth_, "/spear.v1.SpearletPeer/ForwardTask", None, peer) == member
    assert _call(auth_, "/spear.v1.SpearletPeer/ForwardTask", tokens[Role.READER], peer) == member


def test_a_caller_without_an_accepted_credential_is_told_which(
    authorizer: tuple[Authorizer, dict[Role, str]], tmp_path: Path
) -> None:
    auth_, tokens = authorizer
    method = "/spear.v1.Spearlet/GetTask"
    with pytest.raises(Unauthenticated) as info:
        _call(auth_, method, None)
    assert str(info.value) == (
        "this node requires a credential: a token (SPEAR_TOKEN, or the owner token"
        " of the node's data dir) or a cluster certificate"
    )
    with pytest.raises(Unauthenticated) as info:
        _call(auth_, method, tokens[Role.ADMIN] + "x")
    assert str(info.value) == "the token was not accepted (unknown or revoked)"
    # A node without a token store accepts certificates only.
    with pytest.raises(Unauthenticated, match="not accepted"):
        _call(Authorizer(None), method, tokens[Role.ADMIN])


def test_module_constants_users_see() -> None:
    # The file names and header are part of the data dir's and the wire's layout.
    assert (auth.AUTH_DIR, auth.TOKENS_FILE, auth.OWNER_TOKEN_FILE) == (
        "auth",
        "tokens.json",
        "owner.token",
    )
    assert (auth.METADATA_KEY, auth.TOKEN_PREFIX) == ("authorization", "spear_")


async def test_a_refusal_on_the_wire_says_which_and_is_logged(tmp_path: Path) -> None:
    # The status is what a client that is not spear's sees: UNAUTHENTICATED for a missing
    # or unknown credential, PERMISSION_DENIED for a role too low; the node's log says
    # which method was refused and why (never the token).
    # (A client deadline: a refusal that never reaches the client fails, not hangs.)
    from loguru import logger
    from wat_tasks import hello

    import spear
    from spear.core.models import FunctionSpec
    from spear.node.client import Client
    from spear.node.server import serve_spearlet

    home = tmp_path / "home"
    messages: list[str] = []
    async with spear.LocalNode(home) as node:
        server = await serve_spearlet(node, "127.0.0.1:0")
        assert server.address is not None
        reader = TokenStore(home).issue("ann", Role.READER)
        sink = logger.add(messages.append, level="INFO", format="{message}", filter="spear")
        logger.enable("spear")
        try:
            async with Client(server.address, token=reader, timeout=10) as client:
                with pytest.raises(PermissionDenied) as info:
                    await client.submit(FunctionSpec(str(hello(tmp_path))))
                assert not isinstance(info.value, Unauthenticated)
            async with Client(server.address, token=reader + "x", timeout=10) as client:
                with pytest.raises(Unauthenticated):
                    await client.node_info()
        finally:
            logger.disable("spear")
            logger.remove(sink)
            await server.close()
    refused = [m.strip() for m in messages if m.startswith("refused ")]
    # (the client's first call of a submission: it may upload the artifact first)
    pattern = (
        r"refused (/spear\.v1\.Spearlet/\w+): ann \(reader\) may not call \1: it needs submitter"
    )
    assert re.fullmatch(pattern, refused[0]), refused
    # (the last: a refused upload may be logged twice, the client asking again why its
    # stream was ended, transport/aio_streams.py)
    assert refused[-1] == (
        "refused /spear.v1.Spearlet/GetNodeInfo: the token was not accepted (unknown or revoked)"
    )
    assert not any(reader.split("_")[-1] in m for m in messages)
