"""The host interface both runtimes serve: what an agent may ask of its node (objects,
streams, logs, models), independent of how the request arrives (WASM ABI, agent socket)."""
