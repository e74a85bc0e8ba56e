"""Task ids as users type them (core/task_ids.py): a whole id, or a prefix naming exactly
one task. A prefix that names several refuses with the candidates: a command that
cancels or deletes must never pick one of them.

Written for mutation testing: each test states one behaviour exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from spear.core.task_ids import ID_LENGTH, resolve_task_id
from spear.errors import InvalidArgument, NotFound
from spear.store.leveldb import LevelDBKV

if TYPE_CHECKING:
    from pathlib import Path

IDS = ["01a2aa" + "0" * 16, "01a2ab" + "1" * 16, "01a2ab" + "2" * 16]


async def _kv(tmp_path: Path, ids: list[str]) -> LevelDBKV:
    tmp_path.mkdir(parents=True, exist_ok=True)
    kv = LevelDBKV.open(str(tmp_path / "node.ldb"))
    for task_id in ids:
        await kv.put("tasks/" + task_id, b"{}")
    await kv.put("tasks-other/01a2", b"{}")  # (another prefix of keys: never a task)
    return kv


async def test_a_whole_id_or_a_unique_prefix_names_its_task(tmp_path: Path) -> None:
    async with await _kv(tmp_path, IDS) as kv:
        assert ID_LENGTH == 22
        assert await resolve_task_id(kv, IDS[0]) == IDS[0]
        assert await resolve_task_id(kv, "f" * 22) == "f" * 22  # (whole: looked up as it is)
        assert await resolve_task_id(kv, "01a2aa") == IDS[0]
        assert await resolve_task_id(kv, IDS[1][:21]) == IDS[1]


@pytest.mark.parametrize("text", ["", "01A2", "01a2-", " 01a2", "01a3", "zz"])
async def test_no_match_or_no_hex_prefix_is_no_such_task(tmp_path: Path, text: str) -> None:
    async with await _kv(tmp_path, IDS) as kv:
        with pytest.raises(NotFound) as caught:
            await resolve_task_id(kv, text)
        assert str(caught.value) == f"no such task: {text}"


async def test_an_ambiguous_prefix_names_up_to_five_candidates(tmp_path: Path) -> None:
    many = [f"01a2c{i}" + "0" * 16 for i in range(6)]
    async with await _kv(tmp_path, IDS + many) as kv:
        with pytest.raises(InvalidArgument) as caught:
            await resolve_task_id(kv, "01a2ab")
        assert str(caught.value) == (
            f"task id prefix 01a2ab is ambiguous: it matches {IDS[1]}, {IDS[2]}"
        )
        with pytest.raises(InvalidArgument) as caught:
            await resolve_task_id(kv, "01a2c")
        assert str(caught.value) == (
            f"task id prefix 01a2c is ambiguous: it matches {', '.join(many[:5])}, ..."
        )
    async with await _kv(tmp_path / "five", many[:5]) as kv:
        with pytest.raises(InvalidArgument) as caught:
            await resolve_task_id(kv, "01a2c")
        assert str(caught.value).endswith(many[4])  # (five exactly: all named, no "...")
