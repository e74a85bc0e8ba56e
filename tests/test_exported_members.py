"""The public API is exactly what spear/__init__.py exports."""

from __future__ import annotations

import spear


def test_all_names_exist() -> None:
    for name in spear.__all__:
        assert hasattr(spear, name), name


def test_all_is_sorted_and_unique() -> None:
    assert sorted(set(spear.__all__), key=str.lower) == sorted(spear.__all__, key=str.lower)
    assert len(set(spear.__all__)) == len(spear.__all__)


def _spear_classes() -> set[str]:
    import ast
    from pathlib import Path

    root = Path(spear.__file__).parent
    return {
        node.name
        for path in root.rglob("*.py")
        if "_gen" not in path.parts
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
    }


def test_every_type_the_public_api_returns_is_exported() -> None:
    """What a public method returns or yields (per its annotation) is public too."""
    import inspect
    import re

    classes = _spear_classes()
    missing: set[str] = set()
    for name in spear.__all__:
        member = getattr(spear, name)
        if not isinstance(member, type):
            continue
        for attr, fn in inspect.getmembers(member):
            if attr.startswith("_") or not callable(fn) and not isinstance(fn, property):
                continue
            fn = fn.fget if isinstance(fn, property) else fn
            annotation = getattr(fn, "__annotations__", {}).get("return")
            for word in re.findall(r"[A-Z]\w+", str(annotation or "")):
                if word in classes and word not in spear.__all__:
                    missing.add(f"{name}.{attr} -> {word}")
    assert not missing, sorted(missing)


def test_the_check_of_returned_types_can_fail() -> None:
    # The annotation scan must see spear's own classes, or the test above passes vacuously.
    classes = _spear_classes()
    assert {"TaskHandle", "NodeInfo", "ObjectStore", "Spearlet"} <= classes


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert spear.__version__ == version("spear")


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


def test_one_object_info_for_the_store_and_the_node_api() -> None:
    from spear.store import objects

    assert spear.ObjectInfo is objects.ObjectInfo  # what the store returns, the API returns
