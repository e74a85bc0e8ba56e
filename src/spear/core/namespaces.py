"""Namespaces: every task and object belongs to one (`default` unless named).

A task carries its namespace in its spec (`FunctionSpec.namespace`). Objects are scoped by
their key: a key `k` of namespace `team-a` is stored as `@ns/team-a/k`, and one of the
default namespace as `k` itself, so a node used without namespaces stores exactly what it
did before, and the object store needs to know nothing of them. A task's result,
`results/<id>`, is stored the same way in its task's namespace.

Keys under `results/` are the node's: callers and guests read them, only the node writes
them (`is_system_key`). Keys starting with `@ns/` are reserved for the mapping itself.
"""

from __future__ import annotations

import re

from spear.errors import InvalidArgument, PermissionDenied

DEFAULT = "default"
RESERVED_PREFIX = "@ns/"
SYSTEM_PREFIX = "results/"
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_name(name: str) -> str:
    """`name` if it is a valid namespace: 1-63 of a-z, 0-9 and '-', not starting or ending
    with '-' (as a DNS label, so a namespace can name things elsewhere too)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidArgument(
            f"invalid namespace {name!r}: 1-63 characters of a-z, 0-9 and '-'"
            " (not starting or ending with '-')"
        )
    return name


def _prefix(namespace: str) -> str:
    return "" if namespace == DEFAULT else f"{RESERVED_PREFIX}{namespace}/"


def stored_key(namespace: str, key: str) -> str:
    """Where a key of `namespace` is stored in the node's object store."""
    if key.startswith(RESERVED_PREFIX):
        raise InvalidArgument(f"object keys starting with {RESERVED_PREFIX!r} are reserved")
    return _prefix(namespace) + key


def stored_prefix(namespace: str, prefix: str) -> str:
    """The store's prefix to list for `prefix` in `namespace`."""
    return stored_key(namespace, prefix)


def user_key(namespace: str, stored: str) -> str | None:
    """The key as `namespace` knows it, or None if the stored key is not of `namespace`."""
    if namespace == DEFAULT:
        return None if stored.startswith(RESERVED_PREFIX) else stored
    prefix = _prefix(namespace)
    return stored[len(prefix) :] if stored.startswith(prefix) else None


def is_system_key(key: str) -> bool:
    """A key only the node writes (a task's result)."""
    return key.startswith(SYSTEM_PREFIX)


def refuse_system_write(key: str) -> None:
    if is_system_key(key):
        raise PermissionDenied(
            f"{key!r} is written only by the node (keys under {SYSTEM_PREFIX} hold task results)"
        )


def result_key(namespace: str, task_id: str) -> str:
    """Where the result of a task of `namespace` is stored."""
    return _prefix(namespace) + SYSTEM_PREFIX + task_id
