"""The agent toolkit: node services agents reach through hostcalls beside objects and
models (docs/toolkit.md). MCP connections (`mcp_config`, `mcp_hub`), subtasks
(`subtasks`) and the vector store (`vectors`). Each module imports its heavy library
(the `mcp` SDK, the vector index) only when first used."""
