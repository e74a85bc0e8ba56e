"""The CGI-like convention (web/_cgi.py) and route matching (web/_routes.py), unit by unit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear.core.models import FunctionSpec
from spear.errors import InvalidArgument
from spear.web._cgi import ResponseHead, request_env
from spear.web._routes import Route, routes_from_settings

SPEC = FunctionSpec("/agents/a.wasm")


def head_of(*pieces: bytes) -> ResponseHead:
    head = ResponseHead()
    for piece in pieces:
        if head.feed(piece):
            break
    else:
        head.end()
    return head


def test_a_head_then_a_body() -> None:
    head = head_of(b"Status: 404 Not Found\r\nContent-Type: application/json\r\n", b"X-A: 1\n\n{}")
    assert head.status == 404 and head.body_start == b"{}"
    assert head.headers == [(b"content-type", b"application/json"), (b"x-a", b"1")]


def test_output_without_a_head_is_all_body() -> None:
    head = head_of(b"hello\nworld\n")
    assert head.status == 200 and head.body_start == b"hello\nworld\n"
    assert head.headers == [(b"content-type", b"text/plain; charset=utf-8")]
    assert head_of(b"\nbody").body_start == b"\nbody"


def test_a_location_alone_redirects_and_hop_headers_are_dropped() -> None:
    head = head_of(b"Location: /elsewhere\nConnection: close\nTransfer-Encoding: x\n\n")
    assert head.status == 302
    assert (b"location", b"/elsewhere") in head.headers
    assert not any(n in (b"connection", b"transfer-encoding") for n, _ in head.headers)


def test_a_bad_status_is_a_bad_gateway() -> None:
    assert head_of(b"Status: 99 x\n\n").status == 502
    assert head_of(b"Status: abc\n\n").status == 502


def test_a_head_cut_short_by_the_end_of_output() -> None:
    head = head_of(b"Content-Type: text/html\n")
    assert head.done and head.status == 200 and head.body_start == b""


@given(
    st.lists(
        st.sampled_from([b"Status: 201\n", b"X-A: 1\r\n", b"\n", b"body", b"\xff", b"no head\n"]),
        max_size=8,
    ).map(b"".join),
    st.integers(1, 7),
)
def test_output_split_anywhere_reads_as_it_does_whole(output: bytes, cut: int) -> None:
    whole = head_of(output)
    split = ResponseHead()
    pieces = [output[i : i + cut] for i in range(0, len(output), cut)]
    rest = b""
    for i, piece in enumerate(pieces):
        if split.feed(piece):
            rest = b"".join(pieces[i + 1 :])
            break
    else:
        split.end()
    assert (split.status, split.headers) == (whole.status, whole.headers)
    assert split.body_start + rest == whole.body_start


def test_request_env_passes_headers_but_not_credentials() -> None:
    env = dict(
        request_env(
            method="POST", path="/a/b", script_name="/a", path_info="/b", query="x=1",
            headers=[("User-Agent", "t"), ("Authorization", "Bearer s"), ("Cookie", "c"),
                     ("Content-Type", "text/plain"), ("X-Two", "1"), ("X-Two", "2")],
            body_length=4, client="127.0.0.1", server=("127.0.0.1", 80), request_id="r",
            route="/a/...",
        )
    )  # fmt: skip
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/b"
    assert env["REQUEST_URI"] == "/a/b?x=1" and env["CONTENT_LENGTH"] == "4"
    assert env["HTTP_USER_AGENT"] == "t" and env["HTTP_X_TWO"] == "1, 2"
    assert env["CONTENT_TYPE"] == "text/plain" and "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_AUTHORIZATION" not in env and "HTTP_COOKIE" not in env


def test_routes_match_exactly_or_below_a_prefix() -> None:
    exact, below = Route("/ask", SPEC), Route("/api2/...", SPEC)
    assert exact.matches("/ask") == "" and exact.matches("/ask/x") is None
    assert below.matches("/api2") == "" and below.matches("/api2/a/b") == "/a/b"
    assert below.matches("/api22") is None


@pytest.mark.parametrize("path", ["ask", "/api", "/api/x", "/static/...", "/...", "/a//b",
                                  "/a/../b", "/a b", ""])  # fmt: skip
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        Route(path, SPEC)


def test_a_route_round_trips_and_settings_routes_read_inline_specs() -> None:
    route = Route("/x", SPEC, methods=("PUT",), public=True, timeout_s=2.5, concurrency=3)
    assert Route.from_json(route.to_json()) == route
    [configured] = routes_from_settings({"/y": {"artifact": "/a.wasm", "public": True}})
    assert configured.spec.artifact == "/a.wasm" and configured.source == "config"
    with pytest.raises(InvalidArgument, match="routes"):
        routes_from_settings({"/y": {"artifact": "/a.wasm", "nonsense": 1}})
    with pytest.raises(InvalidArgument):
        Route.from_json({"path": "/z", "spec": {"artifact": "/a"}, "public": "yes"})
