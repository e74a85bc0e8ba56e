"""Compiled-module cache: compile a module once, load it in microseconds afterwards.

Two levels. In memory, compiled modules keyed by the SHA-256 of their bytes. On disk,
`<sha256>-<fingerprint>.cwasm` under the data dir, where the fingerprint names the
wasmtime version and the engine settings that shape machine code: another wasmtime or
another setting never loads an artifact it did not make. Each file starts with the
SHA-256 of the serialized artifact after it; a file that fails that check (truncated,
corrupted) or that wasmtime refuses is compiled again and replaced, never trusted.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path

import wasmtime

from spear._logging import logger
from spear.errors import InvalidModule, NotFound, StorageError

_WASM_MAGIC = b"\x00asm"
_DIGEST = 32


def read_module_bytes(path: str) -> bytes:
    """The bytes of a module file, with a clear error for the usual mistakes."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InvalidModule(f"{path} is a directory, not a WebAssembly module") from None
    except PermissionError:
        raise NotFound(f"cannot read {path}: permission denied") from None
    if data[:4] != _WASM_MAGIC:
        if data.lstrip()[:1] == b"(":  # text format: compile it, as wasmtime's CLI does
            return data
        raise InvalidModule(f"{path} is not a WebAssembly module (bad magic number)")
    return data


class ModuleCache:
    """Compiled modules for one engine, in memory and on disk."""

    def __init__(
        self, engine: wasmtime.Engine, directory: Path | None, fingerprint: str, capacity: int = 256
    ) -> None:
        self._engine = engine
        self._dir = directory
        self._fingerprint = fingerprint
        self._capacity = capacity
        self._memory: collections.OrderedDict[str, wasmtime.Module] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "compiles": 0, "rejected": 0}

    def path_for(self, digest: str) -> Path | None:
        return None if self._dir is None else self._dir / f"{digest}-{self._fingerprint}.cwasm"

    def load(self, data: bytes, name: str = "module") -> tuple[str, wasmtime.Module]:
        """The compiled module for these bytes (and its digest)."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            module = self._memory.get(digest)
            if module is not None:
                self._memory.move_to_end(digest)
                self.stats["memory_hits"] += 1
                return digest, module
        module = self._load_disk(digest)
        if module is None:
            module = self._compile(data, name)
            self._store_disk(digest, module)
        with self._lock:
            self._memory[digest] = module
            while len(self._memory) > self._capacity:
                self._memory.popitem(last=False)
        return digest, module

    def _compile(self, data: bytes, name: str) -> wasmtime.Module:
        self.stats["compiles"] += 1
        try:
            if data[:4] != _WASM_MAGIC:
                data = bytes(wasmtime.wat2wasm(data.decode("utf-8", errors="replace")))
            return wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
            raise InvalidModule(f"{name} is not a valid WebAssembly module: {first}") from None

    def _load_disk(self, digest: str) -> wasmtime.Module | None:
        path = self.path_for(digest)
        if path is None:
            return None
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        payload = raw[_DIGEST:]
        if len(raw) <= _DIGEST or hashlib.sha256(payload).digest() != raw[:_DIGEST]:
            self._reject(path, "checksum mismatch")
            return None
        try:
            module = wasmtime.Module.deserialize(self._engine, payload)
        except wasmtime.WasmtimeError as exc:
            self._reject(path, str(exc).splitlines()[0] if str(exc) else "refused")
            return None
        self.stats["disk_hits"] += 1
        return module

    def _reject(self, path: Path, why: str) -> None:
        self.stats["rejected"] += 1
        logger.warning("discarding cached module {}: {}", path.name, why)
        with contextlib.suppress(OSError):
            path.unlink()

    def _store_disk(self, digest: str, module: wasmtime.Module) -> None:
        path = self.path_for(digest)
        if path is None:
            return
        try:
            payload = bytes(module.serialize())
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(hashlib.sha256(payload).digest())
                    f.write(payload)
                os.replace(tmp, path)  # readers see the old file or the whole new one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except (OSError, wasmtime.WasmtimeError) as exc:
            # A cache we cannot write only costs a compile next time; never fail a task for it.
            logger.warning("cannot write the module cache: {}", exc)
        except Exception as exc:  # pragma: no cover - defensive
            raise StorageError(f"module cache: {exc}") from exc
