"""Artifacts uploaded to a node: module bytes stored by content, so tasks can name them.

`DATA/artifacts/<sha256>/<name>`: the digest makes an upload idempotent and lets a client
skip sending bytes the node already has; the file name is kept so the guest's argv[0] and
the `.wat` text format still work. A file appears only once complete and checked.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from typing import TYPE_CHECKING

import anyio

from spear.errors import InvalidArgument, NotFound, ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import AsyncIterable
    from pathlib import Path

_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):  # (not `$`: it lets a trailing newline through)
        raise InvalidArgument(f"not a sha256 digest: {digest!r}")
    return digest


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")) or "module.wasm"
    if base in (".", ".."):
        return "module.wasm"
    return base


class ArtifactStore:
    """Content-addressed artifact files under one directory."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._known: dict[str, Path] = {}  # digest -> file, while it is there

    def find(self, digest: str) -> Path | None:
        """The stored file for `digest`, or None (also when it was removed by hand: a
        client told NotFound uploads it again)."""
        known = self._known.get(digest)
        if known is not None:
            if os.path.exists(known):  # (one stat: the runtime stats it again anyway)
                return known
            del self._known[digest]
        directory = self.root / check_digest(digest)
        try:
            names = [p for p in directory.iterdir() if not p.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return None
        if names:
            self._known[digest] = names[0]
        return names[0] if names else None

    def path(self, digest: str) -> Path:
        found = self.find(digest)
        if found is None:
            raise NotFound(f"no artifact sha256:{digest} on this node (upload it first)")
        return found

    async def store(self, digest: str, name: str, size: int, chunks: AsyncIterable[bytes]) -> Path:
        """Write an artifact from `chunks`; checks its size and digest before it appears."""
        check_digest(digest)
        if size > self.max_bytes:
            raise ResourceExhausted(f"artifact of {size} bytes exceeds the limit {self.max_bytes}")
        directory = self.root / digest
        final = directory / _safe_name(name)
        await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
        tmp = directory / f".{secrets.token_hex(6)}.part"
        hasher = hashlib.sha256()
        written = 0
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                async for data in chunks:
                    written += len(data)
                    if written > self.max_bytes:
                        raise ResourceExhausted(
                            f"artifact exceeds the limit of {self.max_bytes} bytes"
                        )
                    hasher.update(data)
                    await f.write(data)
            if hasher.hexdigest() != digest:
                raise InvalidArgument(
                    f"artifact digest mismatch: announced {digest}, got {hasher.hexdigest()}"
                )
            if self.find(digest) is None:
                await anyio.to_thread.run_sync(os.replace, tmp, final)
                return final
            return self.path(digest)
        finally:
            await anyio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
