"""The toolkit's node services for a node's settings (called by node/assembly.py).

A node without an `mcp_config` has no MCP service and imports none of it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spear.config import Settings


def toolkit_services(settings: Settings) -> dict[str, Any]:
    """`NodeServices` fields: tools (MCP), subtasks, vectors."""
    from spear.toolkit.subtasks import Subtasks
    from spear.toolkit.vectors import VectorStore

    services: dict[str, Any] = {
        "subtasks": Subtasks(),
        "vectors": VectorStore(settings.data_dir / "vectors"),
    }
    if settings.mcp_config:
        from spear.toolkit.mcp_config import McpConfig
        from spear.toolkit.mcp_hub import McpHub

        config = McpConfig.load(Path(settings.mcp_config).expanduser())
        services["tools"] = McpHub(config, settings.data_dir / "logs" / "mcp")
    return services
