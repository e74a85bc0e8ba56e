"""The house plan holds: imports go one way.

Every `import spear...` in src/ (at module level, in functions and under TYPE_CHECKING
alike) is an arrow. Between the top-level parts of the package (core, store, runtimes,
node, cli, ... and the single modules beside them) the arrows form no cycle, and neither
do they between modules (counting what runs, not annotations). `spear/__init__.py`
(the public face, lazy) and generated code are left out. docs/architecture.md draws
the map these tests hold.
"""

from __future__ import annotations

import ast
import collections
import functools
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "spear"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for p in ROOT.rglob("*.py")
        if "_gen" not in p.parts and p != ROOT / "__init__.py"
    }


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (imports for annotations only)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return found


def _imports(path: Path, known: set[str], *, annotations: bool) -> set[str]:
    """The spear modules `path` imports (`from pkg import mod` counts as importing mod,
    not pkg's `__init__`); with `annotations`, those under TYPE_CHECKING too."""
    tree = ast.parse(path.read_text())
    skip = set() if annotations else _type_checking_blocks(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spear"):
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            # `from pkg import mod, mod2` takes modules, not the package's face.
            whole = not all(s in known for s in submodules)
            names = [*([node.module] if whole else []), *submodules]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("spear")]
        found.update(n for n in names if n in known)
    return found


@functools.cache
def _module_graph(annotations: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(path, known, annotations=annotations) - {name}
        for name, path in modules.items()
    }


def _part(module: str) -> str:
    return module.split(".")[1]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_walker_sees_imports() -> None:
    # Guards the guard: a walker that found nothing would pass every test below.
    graph = _module_graph()
    assert "spear.core.models" in graph["spear.node.api"]
    assert "spear.core.worker" in graph["spear.runtimes.wasm.agent"]
    assert _cycle({"a": {"b"}, "b": {"a"}}) is not None


def test_parts_of_the_package_import_one_way() -> None:
    parts: dict[str, set[str]] = collections.defaultdict(set)
    for module, imported in _module_graph().items():
        parts[_part(module)].update(_part(m) for m in imported if _part(m) != _part(module))
    assert _cycle(parts) is None, f"parts that import each other: {_cycle(parts)}"


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("core", "runtimes"),
        ("core", "node"),
        ("core", "transport"),
        ("store", "core"),
        ("transport", "node"),
        ("runtimes", "node"),
        ("node", "cli"),
    ],
)
def test_a_lower_layer_never_imports_a_higher_one(lower: str, upper: str) -> None:
    offenders = sorted(
        f"{module} -> {m}"
        for module, imported in _module_graph().items()
        if _part(module) == lower
        for m in imported
        if _part(m) == upper
    )
    assert not offenders


def test_modules_import_one_way() -> None:
    # Between modules, annotations may refer back (a service typed with the node that
    # serves it); what runs at import or call time may not.
    cycle = _cycle(_module_graph(annotations=False))
    assert cycle is None, f"modules that import each other: {' -> '.join(cycle or [])}"
