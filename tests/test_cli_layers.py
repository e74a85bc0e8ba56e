"""The CLI package and the node package import one way (read from the source, so a test
that breaks the rule fails here, not in a reviewer's head)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "spear"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports in functions included);
    `from spear.cli import x` counts as importing spear.cli.x."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module in ("spear", "spear.cli", "spear.node"):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_cli_command_module_imports_the_app_back() -> None:
    modules = sorted((SRC / "cli").glob("*.py"))
    assert {p.name for p in modules} >= {"app.py", "_common.py", "run.py", "tasks.py"}
    shared = {"spear.cli._common", "spear.cli.spec", "spear.cli.stream", "spear.cli._runner_client"}
    for path in modules:
        if path.name in ("app.py", "__init__.py", "runner.py"):  # the entry: above the app
            continue
        from_cli = {m for m in _imports(path) if m == "spear.cli" or m.startswith("spear.cli.")}
        assert from_cli <= shared, f"cli/{path.name} imports {sorted(from_cli - shared)}"


def test_core_store_runtimes_and_transport_import_no_node_or_cli_code() -> None:
    for package in ("core", "store", "runtimes", "transport", "models"):
        for path in (SRC / package).rglob("*.py"):
            if "_gen" in path.parts:
                continue
            upward = {m for m in _imports(path) if m.startswith(("spear.node", "spear.cli"))}
            assert not upward, f"{path.relative_to(SRC)} imports {sorted(upward)}"
