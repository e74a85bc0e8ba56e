"""The CGI-like convention between an HTTP request and an agent (WAGI's, after RFC 3875).

In: the request as environment variables (`REQUEST_METHOD`, `PATH_INFO`, `QUERY_STRING`,
`CONTENT_TYPE`, `CONTENT_LENGTH`, one `HTTP_<NAME>` per header, ...) and its body on stdin.
Out: on stdout, header lines (`Status: 404 Not Found`, `Content-Type: ...`, any other
header), a blank line, then the body, streamed to the client as it is written. Output
whose first line is not a header is all body (200, text/plain). docs/triggers.md.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

GATEWAY = "CGI/1.1"
SERVER_SOFTWARE = "spear"
_HEADER = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$")
_MAX_HEAD = 64 * 1024  # more header than this is not a header
# Hop-by-hop headers and ones the server sets itself: an agent's are dropped.
_DROPPED = frozenset({b"connection", b"transfer-encoding", b"keep-alive", b"upgrade", b"date"})
# Request headers not passed as HTTP_*: the credential (the agent needs no token of its
# caller's), and those CGI passes under their own names.
_HIDDEN = frozenset(
    {"authorization", "cookie", "content-type", "content-length", "proxy-authorization"}
)


def request_env(
    *,
    method: str,
    path: str,
    script_name: str,
    path_info: str,
    query: str,
    headers: Mapping[str, str] | list[tuple[str, str]],
    body_length: int,
    client: str,
    server: tuple[str, int] | None,
    request_id: str,
    route: str,
) -> list[tuple[str, str]]:
    """The environment variables that describe one request to its agent."""
    items = headers.items() if not isinstance(headers, list) else headers
    env = [
        ("GATEWAY_INTERFACE", GATEWAY),
        ("SERVER_SOFTWARE", SERVER_SOFTWARE),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", method),
        ("SCRIPT_NAME", script_name),
        ("PATH_INFO", path_info),
        ("QUERY_STRING", query),
        ("REQUEST_URI", path + ("?" + query if query else "")),
        ("REMOTE_ADDR", client),
        ("X_MATCHED_ROUTE", route),
        ("X_REQUEST_ID", request_id),
    ]
    if server is not None:
        env += [("SERVER_NAME", server[0]), ("SERVER_PORT", str(server[1]))]
    seen: dict[str, int] = {}
    for raw_name, value in items:
        name = raw_name.lower()
        if name == "content-type":
            env.append(("CONTENT_TYPE", value))
        if name in _HIDDEN:
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in seen:  # a repeated header: joined, as CGI does
            at = seen[key]
            env[at] = (key, env[at][1] + ", " + value)
        else:
            seen[key] = len(env)
            env.append((key, value))
    if body_length or method in ("POST", "PUT", "PATCH"):
        env.append(("CONTENT_LENGTH", str(body_length)))
    return [(k, _printable(v)) for k, v in env]


def _printable(value: str) -> str:
    # An environment value holds no NUL; a header value is latin-1 text from the wire.
    return value.replace("\x00", "")


class EncodedEnv:
    """`request_env` for one route's requests, after the spec's own `env`, made as the
    UTF-8 names and values WASI takes (request mode, web/_direct.py): the names and
    what does not change per request encoded once, header values passed on as they came
    when they are ASCII (the same variables, in the same order, as `request_env`)."""

    _KEEP_HEADER_NAMES = 256  # distinct request header names remembered as CGI keys

    def __init__(self, base: Sequence[tuple[str, str]], script_name: str, route: str) -> None:
        self._names = [
            *(k.encode() for k, _ in base),
            *(b"GATEWAY_INTERFACE", b"SERVER_SOFTWARE", b"SERVER_PROTOCOL", b"REQUEST_METHOD"),
            *(b"SCRIPT_NAME", b"PATH_INFO", b"QUERY_STRING", b"REQUEST_URI", b"REMOTE_ADDR"),
            *(b"X_MATCHED_ROUTE", b"X_REQUEST_ID"),
        ]
        self._values = [v.encode() for _, v in base]
        self._fixed = (GATEWAY.encode(), SERVER_SOFTWARE.encode(), b"HTTP/1.1")
        self._script_name = _text(script_name)
        self._route = _text(route)
        self._keys: dict[bytes, bytes | None] = {}  # a header's name: its HTTP_ key, or None

    def encode(
        self, scope: Mapping[str, Any], path_info: str, body_length: int, request_id: str
    ) -> tuple[list[bytes], list[bytes]]:
        """The names and values of the request in ASGI `scope` (see `request_env`)."""
        method: str = scope.get("method", "GET")
        path = _text(scope["path"])
        query = _wire(scope.get("query_string", b""))
        client = scope.get("client")
        names = self._names.copy()
        values = [
            *self._values,
            *self._fixed,
            _text(method),
            self._script_name,
            _text(path_info),
            query,
            path + b"?" + query if query else path,
            _text(client[0]) if client else b"",
            self._route,
            request_id.encode(),
        ]
        server = scope.get("server")
        if server is not None:
            names += (b"SERVER_NAME", b"SERVER_PORT")
            values += (_text(server[0]), str(server[1]).encode())
        seen: dict[bytes, int] = {}
        keys = self._keys
        for raw_name, raw_value in scope["headers"]:
            key = keys.get(raw_name, b"")
            if key == b"":
                key = self._key(raw_name)
            if key is None:
                if raw_name.lower() == b"content-type":
                    names.append(b"CONTENT_TYPE")
                    values.append(_wire(raw_value))
                continue
            value = _wire(raw_value)
            at = seen.get(key)
            if at is not None:  # a repeated header: joined, as CGI does
                values[at] += b", " + value
            else:
                seen[key] = len(values)
                names.append(key)
                values.append(value)
        if body_length or method in ("POST", "PUT", "PATCH"):
            names.append(b"CONTENT_LENGTH")
            values.append(str(body_length).encode())
        return names, values

    def _key(self, raw_name: bytes) -> bytes | None:
        name = raw_name.decode("latin-1").lower()
        key = None if name in _HIDDEN else _text("HTTP_" + name.upper().replace("-", "_"))
        if len(self._keys) >= self._KEEP_HEADER_NAMES:
            self._keys.clear()
        self._keys[raw_name] = key
        return key


def _text(value: str) -> bytes:
    """A variable's text as WASI takes it: UTF-8, without NUL."""
    return _printable(value).encode()


def _wire(value: bytes) -> bytes:
    """Bytes from the wire (latin-1 text) as a variable's value: UTF-8, without NUL."""
    if value.isascii():
        return value.replace(b"\x00", b"") if b"\x00" in value else value
    return _text(value.decode("latin-1"))


class ResponseHead:
    """Reads the head of an agent's response from its first bytes of stdout."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_start = b""  # what came after the head, the first bytes of the body

    def feed(self, data: bytes) -> bool:
        """Take more output; True once the head is complete (then see `body_start`)."""
        self._buffer += data
        while not self.done:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._all_body()
                return self.done
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            if not line:
                if not self.headers and not self._seen_status:
                    self._all_body()  # a blank first line: no head
                    return True
                del self._buffer[: end + 1]
                self._finish()
                return True
            matched = _HEADER.match(line)
            if matched is None:
                self._all_body()
                return True
            self._take(matched.group(1), matched.group(2))
            del self._buffer[: end + 1]
        return True

    def end(self) -> None:
        """The output ended: whatever came is the head (or all body, if unfinished)."""
        if not self.done:
            if self.headers and not self._buffer:
                self._finish()
            else:
                self._all_body()

    _seen_status = False
    _location = False

    def _take(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"status":
            code = value.split(b" ", 1)[0]
            if not code.isdigit() or not 100 <= int(code) <= 599:
                self.status = 502
                self.headers = [(b"content-type", b"text/plain; charset=utf-8")]
                self._seen_status = True
                return
            self.status = int(code)
            self._seen_status = True
            return
        if lower in _DROPPED:
            return
        if lower == b"location":
            self._location = True
        self.headers.append((lower, value))

    def _finish(self) -> None:
        if self._location and not self._seen_status:
            self.status = 302
        if not any(n == b"content-type" for n, _ in self.headers) and self.status != 204:
            self.headers.append((b"content-type", b"text/plain; charset=utf-8"))
        self.body_start = bytes(self._buffer)
        self._buffer.clear()
        self.done = True

    def _all_body(self) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/plain; charset=utf-8")]
        self._seen_status = False
        self._location = False
        self.body_start = bytes(self._buffer)
        self._buffer.clear()
        self.done = True
