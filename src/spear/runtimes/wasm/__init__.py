"""The WebAssembly runtime: a worker agent on wasmtime, its module cache, worker threads
and the `spear` hostcall module."""
