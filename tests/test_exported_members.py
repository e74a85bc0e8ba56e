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


def test_the_grpc_client_is_public_and_loaded_on_demand() -> None:
    import subprocess
    import sys

    from spear.node.client import Client

    assert spear.Client is Client and "Client" in spear.__all__
    # `import spear` alone (the path of `spear run`) does not load grpclib.
    code = "import sys, spear; print('grpclib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_all_is_in_order() -> None:
    names = [n for n in spear.__all__ if not n.startswith("__")]
    assert names == sorted(names, key=str.lower)
