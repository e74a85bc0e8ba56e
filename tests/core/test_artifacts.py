"""The artifact store (core/artifacts.py): uploaded modules kept by their sha256. What a
node relies on: a module appears only once whole and checked against its digest and the
size limit; its name can never place it outside its digest's directory; a module removed
by hand is not found (the client then uploads it again); a failed upload leaves nothing.

Written for mutation testing: each test states one behaviour exactly, on real files.
"""

from __future__ import annotations

import hashlib
import shutil
from typing import TYPE_CHECKING

import pytest

from spear.core.artifacts import ArtifactStore, check_digest
from spear.errors import InvalidArgument, NotFound, ResourceExhausted

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

MODULE = b"\0asm\1\0\0\0" + b"m" * 100
DIGEST = hashlib.sha256(MODULE).hexdigest()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def halves(data: bytes) -> Iterable[bytes]:
    return data[: len(data) // 2], data[len(data) // 2 :]


def files(root: Path) -> list[str]:
    """Every file under `root`, hidden ones too, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", max_bytes=len(MODULE))


async def test_a_stored_module_is_found_by_its_digest_under_its_name(
    store: ArtifactStore,
) -> None:
    assert store.find(DIGEST) is None
    path = await store.store(DIGEST, "agent.wasm", len(MODULE), chunks(*halves(MODULE)))
    assert path == store.root / DIGEST / "agent.wasm"
    assert path.read_bytes() == MODULE
    assert store.find(DIGEST) == path and store.path(DIGEST) == path
    assert files(store.root) == [f"{DIGEST}/agent.wasm"]  # (no part file left)


async def test_an_unknown_digest_is_not_found_and_says_so(store: ArtifactStore) -> None:
    other = "a" * 64
    assert store.find(other) is None
    with pytest.raises(NotFound) as caught:
        store.path(other)
    assert str(caught.value) == f"no artifact sha256:{other} on this node (upload it first)"


@pytest.mark.parametrize(
    "digest", ["", "a" * 63, "a" * 65, "A" * 64, "g" * 64, "../" + "a" * 61, "a" * 64 + "\n"]
)
async def test_only_a_lowercase_sha256_is_a_digest(store: ArtifactStore, digest: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_digest(digest)
    assert str(caught.value) == f"not a sha256 digest: {digest!r}"
    with pytest.raises(InvalidArgument):
        store.find(digest)
    with pytest.raises(InvalidArgument):
        await store.store(digest, "m.wasm", 1, chunks(b"x"))
    assert not store.root.exists() or files(store.root) == []
    assert check_digest("0123456789abcdef" * 4) == "0123456789abcdef" * 4


async def test_bytes_that_are_not_the_announced_digest_leave_nothing(
    store: ArtifactStore,
) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(InvalidArgument) as caught:
        await store.store(wrong, "m.wasm", len(MODULE), chunks(MODULE))
    assert str(caught.value) == f"artifact digest mismatch: announced {wrong}, got {DIGEST}"
    assert files(store.root) == [] and store.find(wrong) is None
    # One byte changed in the last chunk is a mismatch too.
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        await store.store(DIGEST, "m.wasm", len(MODULE), chunks(MODULE[:-1], b"X"))
    assert files(store.root) == [] and store.find(DIGEST) is None


async def test_the_size_limit_holds_whether_announced_or_sent(store: ArtifactStore) -> None:
    limit = store.max_bytes
    # Exactly the limit is kept.
    assert (await store.store(DIGEST, "m.wasm", limit, chunks(MODULE))).read_bytes() == MODULE
    bigger = MODULE + b"!"
    digest = hashlib.sha256(bigger).hexdigest()
    with pytest.raises(ResourceExhausted) as caught:  # announced over the limit
        await store.store(digest, "m.wasm", limit + 1, chunks(bigger))
    assert str(caught.value) == f"artifact of {limit + 1} bytes exceeds the limit {limit}"
    with pytest.raises(ResourceExhausted) as caught:  # announced under it, sent over it
        await store.store(digest, "m.wasm", 10, chunks(*halves(bigger)))
    assert str(caught.value) == f"artifact exceeds the limit of {limit} bytes"
    assert files(store.root) == [f"{DIGEST}/m.wasm"] and store.find(digest) is None


async def test_announced_size_refused_before_a_byte_is_read(store: ArtifactStore) -> None:
    read = []

    async def watched() -> AsyncIterator[bytes]:
        read.append(True)
        yield MODULE

    with pytest.raises(ResourceExhausted):
        await store.store(DIGEST, "m.wasm", store.max_bytes + 1, watched())
    assert read == [] and not store.root.exists()


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("../../evil.wasm", "evil.wasm"),
        ("/etc/passwd", "passwd"),
        ("a\\b\\c.wasm", "c.wasm"),
        ("dir/", "module.wasm"),
        ("", "module.wasm"),
        (".", "module.wasm"),
        ("..", "module.wasm"),
        ("x/..", "module.wasm"),
        ("agent.wat", "agent.wat"),
    ],
)
async def test_a_name_never_leaves_its_digests_directory(
    store: ArtifactStore, name: str, kept: str
) -> None:
    path = await store.store(DIGEST, name, len(MODULE), chunks(MODULE))
    assert path == store.root / DIGEST / kept and path.read_bytes() == MODULE
    assert files(store.root) == [f"{DIGEST}/{kept}"]


async def test_storing_a_module_again_keeps_the_first_copy(store: ArtifactStore) -> None:
    first = await store.store(DIGEST, "first.wasm", len(MODULE), chunks(MODULE))
    again = await store.store(DIGEST, "second.wasm", len(MODULE), chunks(MODULE))
    assert again == first and files(store.root) == [f"{DIGEST}/first.wasm"]
    # A second store that knows nothing yet (another process, a restart) finds it on disk.
    fresh = ArtifactStore(store.root, store.max_bytes)
    assert fresh.find(DIGEST) == first
    assert await fresh.store(DIGEST, "third.wasm", len(MODULE), chunks(MODULE)) == first


async def test_an_upload_in_progress_is_not_a_module(store: ArtifactStore) -> None:
    directory = store.root / DIGEST
    directory.mkdir(parents=True)
    (directory / ".0123abcd.part").write_bytes(MODULE[:10])
    assert store.find(DIGEST) is None
    path = await store.store(DIGEST, "m.wasm", len(MODULE), chunks(MODULE))
    assert store.find(DIGEST) == path == directory / "m.wasm"
    # A file where the digest's directory would be is no module either.
    other = "b" * 64
    (store.root / other).write_bytes(b"not a directory")
    assert store.find(other) is None


async def test_a_module_removed_by_hand_is_not_found_then_stored_again(
    store: ArtifactStore,
) -> None:
    path = await store.store(DIGEST, "m.wasm", len(MODULE), chunks(MODULE))
    assert store.find(DIGEST) == path
    path.unlink()
    assert store.find(DIGEST) is None
    with pytest.raises(NotFound, match="upload it first"):
        store.path(DIGEST)
    shutil.rmtree(store.root)
    assert store.find(DIGEST) is None
    again = await store.store(DIGEST, "n.wasm", len(MODULE), chunks(MODULE))
    assert again == store.root / DIGEST / "n.wasm" and store.find(DIGEST) == again


async def test_a_found_module_is_found_again_without_listing_its_directory(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(A call names its module by digest: one stat, not a directory listing, per call.)"""
    path = await store.store(DIGEST, "m.wasm", len(MODULE), chunks(MODULE))
    fresh = ArtifactStore(store.root, store.max_bytes)
    assert fresh.find(DIGEST) == path  # (listed once)
    monkeypatch.setattr(type(path), "iterdir", lambda self: pytest.fail(f"listed {self}"))
    assert fresh.find(DIGEST) == path and fresh.path(DIGEST) == path
