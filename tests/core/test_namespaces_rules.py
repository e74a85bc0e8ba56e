"""Namespace checks one rule at a time (core/namespaces.py): which names are valid, where a
namespace's keys and results are stored, that no namespace reads another's keys, and that
only the node writes results. tests/transport/test_namespaces.py runs them through a real
node and its API."""

from __future__ import annotations

import pytest

from spear.core import namespaces as ns
from spear.errors import InvalidArgument, PermissionDenied


@pytest.mark.parametrize(
    "name", ["a", "0", "team-a", "a-b-c", "x" * 63, "a" + "-" * 61 + "b", "9lives"]
)
def test_valid_names_are_dns_labels(name: str) -> None:
    assert ns.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "A", "team_a", "a.b", "x" * 64, "a b", "é", "a\n", None, 7]
)
def test_invalid_names_are_refused_with_the_rule(name: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ns.check_name(name)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"invalid namespace {name!r}: 1-63 characters of a-z, 0-9 and '-'"
        " (not starting or ending with '-')"
    )


def test_the_default_namespace_stores_keys_as_they_are() -> None:
    assert ns.stored_key("default", "k/1") == "k/1"
    assert ns.stored_prefix("default", "k/") == "k/"
    assert ns.stored_prefix("default", "") == ""
    assert ns.result_key("default", "abc") == "results/abc"
    assert ns.user_key("default", "k/1") == "k/1"


def test_another_namespace_is_a_prefix_of_its_own() -> None:
    assert ns.stored_key("team-a", "k/1") == "@ns/team-a/k/1"
    assert ns.stored_prefix("team-a", "k/") == "@ns/team-a/k/"
    assert ns.stored_prefix("team-a", "") == "@ns/team-a/"
    assert ns.result_key("team-a", "abc") == "@ns/team-a/results/abc"
    assert ns.user_key("team-a", "@ns/team-a/k/1") == "k/1"


def test_no_namespace_sees_anothers_keys() -> None:
    assert ns.user_key("default", "@ns/team-a/k") is None
    assert ns.user_key("team-a", "k") is None
    assert ns.user_key("team-a", "@ns/team-b/k") is None
    assert ns.user_key("team", "@ns/team-a/k") is None  # a name that is a prefix of another
    assert ns.user_key("team-a", "@ns/team-a/") == ""


def test_the_mapping_prefix_is_reserved() -> None:
    for namespace in ("default", "team-a"):
        with pytest.raises(InvalidArgument) as caught:
            ns.stored_key(namespace, "@ns/team-b/k")
        assert str(caught.value) == "object keys starting with '@ns/' are reserved"
        with pytest.raises(InvalidArgument):
            ns.stored_prefix(namespace, "@ns/")
    assert ns.stored_key("default", "x@ns/") == "x@ns/"  # only at the start


def test_only_the_node_writes_results() -> None:
    assert ns.is_system_key("results/abc")
    assert not ns.is_system_key("result/abc") and not ns.is_system_key("my/results/abc")
    ns.refuse_system_write("data/results")
    with pytest.raises(PermissionDenied) as caught:
        ns.refuse_system_write("results/abc")
    assert str(caught.value) == (
        "'results/abc' is written only by the node (keys under results/ hold task results)"
    )
