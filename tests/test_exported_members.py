"""The public API is exactly what spear/__init__.py exports."""

from __future__ import annotations

import spear


def test_all_names_exist() -> None:
    for name in spear.__all__:
        assert hasattr(spear, name), name


def test_all_is_sorted_and_unique() -> None:
    assert sorted(set(spear.__all__), key=str.lower) == sorted(spear.__all__, key=str.lower)
    assert len(set(spear.__all__)) == len(spear.__all__)


def test_public_classes_say_they_are_public() -> None:
    for name in spear.__all__:
        member = getattr(spear, name)
        if isinstance(member, type):
            assert member.__module__.startswith("spear"), name
