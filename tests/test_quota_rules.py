"""The rules of per-namespace quotas (node/quotas.py), in process, on real files: what a
quota may be, the quota file as written and read (and read again when it changes), and a
namespace's log bytes as counted and measured (at most once a second). The served node's
refusals are in test_log_quota.py and transport/test_namespaces.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
from conftest import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spear.core.logs import TaskLogs
from spear.errors import InvalidArgument, NotFound, ResourceExhausted, StorageError
from spear.node import quotas
from spear.node.quotas import LogUsage, Quota, QuotaFile, TaskSlots

if TYPE_CHECKING:
    from pathlib import Path

FIELDS = ("tasks", "object_bytes", "log_bytes")
SETTLED_NS = 2 * 10**9  # a file changed this long before a read is not read again unchanged


class _Clock:
    """What node/quotas.py reads as its `time` module: the test says what time it is."""

    def __init__(self) -> None:
        self.wall_ns = 1_700_000_000 * 10**9  # the clock file systems stamp mtimes with
        self.mono = 1000.0

    def time_ns(self) -> int:
        return self.wall_ns

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    made = _Clock()
    monkeypatch.setattr(quotas, "time", made)
    return made


# -- what a quota may be -----------------------------------------------------------------


@given(
    field=st.sampled_from(FIELDS),
    value=st.none()
    | st.integers()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=3),
)
@example(field="tasks", value=0)
@example(field="object_bytes", value=0)
@example(field="log_bytes", value=0)
@example(field="tasks", value=-1)
@example(field="tasks", value=True)
@example(field="object_bytes", value=False)
@example(field="log_bytes", value=1.0)
@example(field="tasks", value="5")
@settings(max_examples=examples(50))
def test_a_limit_is_none_or_a_whole_number_not_below_zero(field: str, value: Any) -> None:
    """None is no limit and 0 a limit of nothing; a bool, a float or a string is refused
    (not read as a number), naming the field, as is a negative number."""
    if value is None or (type(value) is int and value >= 0):
        assert getattr(Quota("team-a", **{field: value}), field) == value
    elif type(value) is int:
        with pytest.raises(InvalidArgument, match=f"^quota {field} must not be negative$"):
            Quota("team-a", **{field: value})
    else:
        with pytest.raises(InvalidArgument, match=f"^quota {field} must be a whole number$"):
            Quota("team-a", **{field: value})


async def test_a_quota_of_zero_tasks_admits_no_task(tmp_path: Path) -> None:
    file = QuotaFile(tmp_path / "auth")
    file.set(Quota("team-a", tasks=0))
    slots = TaskSlots(file)

    async def done(_task_id: str) -> bool:
        return True

    with pytest.raises(ResourceExhausted, match="quota of 0 unfinished tasks"):
        async with slots.slot("team-a", done):
            pytest.fail("a slot was given at a quota of 0")
    async with slots.slot("team-b", done) as keep:  # no quota: no limit
        keep("t1")


# -- the quota file ----------------------------------------------------------------------


def test_the_file_as_written_byte_for_byte(tmp_path: Path) -> None:
    """Indented JSON, by namespace, owner-only: a format people read and older nodes load."""
    file = QuotaFile(tmp_path / "auth")
    file.set(Quota("team-b", tasks=2))
    file.set(Quota("team-a", object_bytes=10, log_bytes=0))
    assert file.path.read_text() == (
        "{\n"
        '  "quotas": [\n'
        "    {\n"
        '      "namespace": "team-a",\n'
        '      "tasks": null,\n'
        '      "object_bytes": 10,\n'
        '      "log_bytes": 0\n'
        "    },\n"
        "    {\n"
        '      "namespace": "team-b",\n'
        '      "tasks": 2,\n'
        '      "object_bytes": null,\n'
        '      "log_bytes": null\n'
        "    }\n"
        "  ]\n"
        "}"
    )
    assert file.path.stat().st_mode & 0o777 == 0o600
    assert QuotaFile(tmp_path / "auth").all() == [
        Quota("team-a", object_bytes=10, log_bytes=0),
        Quota("team-b", tasks=2),
    ]


def test_quotas_are_listed_by_namespace_whatever_the_files_order(tmp_path: Path) -> None:
    """A file written by hand need not be in order."""
    (tmp_path / "quotas.json").write_text(
        '{"quotas": [{"namespace": "team-c", "tasks": 3},'
        ' {"namespace": "team-a", "tasks": 1}, {"namespace": "team-b", "tasks": 2}]}'
    )
    file = QuotaFile(tmp_path)
    assert [q.namespace for q in file.all()] == ["team-a", "team-b", "team-c"]
    assert file.get("team-b") == Quota("team-b", tasks=2)


@pytest.mark.parametrize("body", [b"{}", b'{"quotas": []}'])
def test_a_file_that_lists_no_quotas_limits_nobody(tmp_path: Path, body: bytes) -> None:
    (tmp_path / "quotas.json").write_bytes(body)
    file = QuotaFile(tmp_path)
    assert file.get("team-a") is None and file.all() == []


def test_no_file_limits_nobody(tmp_path: Path) -> None:
    file = QuotaFile(tmp_path / "auth")
    assert file.get("team-a") is None and file.all() == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",  # not an object
        b'{"quotas": 5}',
        b'{"quotas": [5]}',
        b'{"quotas": [{"tasks": 1}]}',  # no namespace
        b'{"quotas": [{"namespace": "team-a", "cpus": 1}]}',
        b'{"quotas": [{"namespace": "team-a", "tasks": -1}]}',
        b'{"quotas": [{"namespace": "Team A"}]}',
    ],
)
def test_a_file_that_cannot_be_read_is_a_storage_error_naming_it(
    tmp_path: Path, body: bytes
) -> None:
    """Never a limit made up, never a crash of another kind: the node says which file."""
    (tmp_path / "quotas.json").write_bytes(body)
    file = QuotaFile(tmp_path)
    with pytest.raises(StorageError, match=f"^the quota file {file.path} cannot be read: "):
        file.get("team-a")
    if body == b"[]":
        with pytest.raises(StorageError, match=": not a JSON object$"):
            file.all()
    with pytest.raises(StorageError):
        file.set(Quota("team-a", tasks=1))  # nor written over what it may have meant
    assert (tmp_path / "quotas.json").read_bytes() == body


def test_a_quota_removed_is_gone_and_the_others_stay(tmp_path: Path) -> None:
    file = QuotaFile(tmp_path / "auth")
    file.set(Quota("team-a", tasks=1))
    file.set(Quota("team-b", log_bytes=5))
    assert file.remove("team-a") == Quota("team-a", tasks=1)
    assert file.all() == [Quota("team-b", log_bytes=5)]
    assert QuotaFile(tmp_path / "auth").all() == [Quota("team-b", log_bytes=5)]
    with pytest.raises(NotFound, match="^namespace 'team-a' has no quota$"):
        file.remove("team-a")
    assert file.all() == [Quota("team-b", log_bytes=5)]


def test_a_change_by_another_writer_is_seen_at_the_next_call(tmp_path: Path) -> None:
    node, owner = QuotaFile(tmp_path / "auth"), QuotaFile(tmp_path / "auth")
    assert node.get("team-a") is None
    owner.set(Quota("team-a", tasks=3))
    assert node.get("team-a") == Quota("team-a", tasks=3)
    owner.remove("team-a")
    assert node.get("team-a") is None and node.all() == []


def _rewrite_keeping_the_mtime(owner: QuotaFile, quota: Quota, mtime_ns: int) -> None:
    """`owner.set(quota)` as a file system with a coarse clock stamps it: in the same tick
    as the file it replaces (ext4 before Linux 6.13: a jiffy; FAT: 2 s; HFS+: 1 s)."""
    owner.set(quota)
    os.utime(owner.path, ns=(mtime_ns, mtime_ns))


def _edit_in_place(path: Path, old: bytes, new: bytes, mtime_ns: int) -> None:
    """An edit of the same size in the same file (inode), in the same tick."""
    assert len(old) == len(new)
    path.write_bytes(path.read_bytes().replace(old, new))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_change_in_the_clock_tick_of_the_last_read_is_seen(tmp_path: Path, clock: _Clock) -> None:
    """Regression: the file was read again only when its mtime changed, so a quota set in
    the same tick of the file system's clock as the node's last read was never applied."""
    node, owner = QuotaFile(tmp_path / "auth"), QuotaFile(tmp_path / "auth")
    owner.set(Quota("team-a", tasks=100))
    mtime = owner.path.stat().st_mtime_ns
    clock.wall_ns = mtime + SETTLED_NS - 1  # (any read this soon after the change)
    assert node.get("team-a") == Quota("team-a", tasks=100)
    _rewrite_keeping_the_mtime(owner, Quota("team-a", tasks=1), mtime)
    assert node.get("team-a") == Quota("team-a", tasks=1)
    _edit_in_place(owner.path, b'"tasks": 1,', b'"tasks": 2,', mtime)
    assert node.get("team-a") == Quota("team-a", tasks=2)
    clock.wall_ns = mtime - 1  # a clock stepped back: the file looks changed in the future
    _rewrite_keeping_the_mtime(owner, Quota("team-a", tasks=3), mtime)
    assert node.get("team-a") == Quota("team-a", tasks=3)


def test_a_settled_file_is_read_once_then_only_looked_at(tmp_path: Path, clock: _Clock) -> None:
    """What keeps a quota check at one stat a call: a file changed 2 s or more before it
    was read is not read again while its stat is the same (here an edit is made under the
    old stat, which only an edit in the same tick could do, and no longer can)."""
    node, owner = QuotaFile(tmp_path / "auth"), QuotaFile(tmp_path / "auth")
    owner.set(Quota("team-a", tasks=100))
    mtime = owner.path.stat().st_mtime_ns
    clock.wall_ns = mtime + SETTLED_NS
    assert node.get("team-a") == Quota("team-a", tasks=100)
    _edit_in_place(owner.path, b'"tasks": 100', b'"tasks": 200', mtime)
    assert node.get("team-a") == Quota("team-a", tasks=100)
    os.utime(owner.path, ns=(mtime + 1, mtime + 1))  # any later change
    assert node.get("team-a") == Quota("team-a", tasks=200)


# -- log bytes ---------------------------------------------------------------------------


def _logs(tmp_path: Path, written: dict[str, tuple[bytes, bytes]]) -> TaskLogs:
    """Real task logs: each task's stdout and stderr as its writer leaves them."""
    logs = TaskLogs(tmp_path / "logs", cap=1 << 20)
    for task_id, (out, err) in written.items():
        writer = logs.writer(task_id)
        if out:
            writer.stdout(out)
        if err:
            writer.stderr(err)
        writer.close()
    return logs


def _ids(*task_ids: str) -> Any:
    async def listed() -> list[str]:
        return list(task_ids)

    return listed


async def _kept(usage: LogUsage, namespace: str, ids: Any, logs: TaskLogs) -> int:
    """The log bytes `usage` counts for the namespace (what a quota of 0 says it keeps)."""
    with pytest.raises(ResourceExhausted) as refused:
        await usage.check(Quota(namespace, log_bytes=0), ids, logs)
    message = str(refused.value)
    assert message.startswith(f"namespace {namespace!r} is at its quota of 0 log bytes (")
    assert message.endswith(" kept; delete finished tasks with `spear delete`)")
    return int(message.split("(")[1].split()[0])


async def test_log_bytes_are_counted_exactly_and_refused_at_the_quota(tmp_path: Path) -> None:
    """Every log file of the namespace's tasks, byte for byte; a task that wrote nothing
    (no log directory) or whose logs are gone counts 0. At the quota or over it: refused."""
    logs = _logs(tmp_path, {"t1": (b"hello\n" * 2, b"oops\n"), "t2": (b"x" * 100, b"")})
    ids = _ids("t1", "t2", "t3-wrote-nothing")
    assert await _kept(LogUsage(), "team-a", ids, logs) == 12 + 5 + 100
    await LogUsage().check(Quota("team-a", log_bytes=118), ids, logs)  # one byte to spare
    with pytest.raises(ResourceExhausted, match="quota of 117 log bytes \\(117 kept;"):
        await LogUsage().check(Quota("team-a", log_bytes=117), ids, logs)
    assert await _kept(LogUsage(), "team-a", _ids("t3-wrote-nothing"), logs) == 0
    assert await _kept(LogUsage(), "team-a", _ids(), logs) == 0


async def test_a_link_among_a_tasks_logs_counts_as_itself_not_what_it_points_to(
    tmp_path: Path,
) -> None:
    logs = _logs(tmp_path, {"t1": (b"hello\n", b"")})
    elsewhere = tmp_path / "big"
    elsewhere.write_bytes(b"x" * 5000)
    link = logs.directory("t1") / "link"
    link.symlink_to(elsewhere)
    assert await _kept(LogUsage(), "team-a", _ids("t1"), logs) == 6 + link.lstat().st_size
    dangling = logs.directory("t1") / "dangling"
    dangling.symlink_to(tmp_path / "nothing")
    kept = 6 + link.lstat().st_size + dangling.lstat().st_size
    assert await _kept(LogUsage(), "team-a", _ids("t1"), logs) == kept


async def test_no_log_quota_costs_nothing(tmp_path: Path) -> None:
    async def never() -> list[str]:
        raise AssertionError("a namespace with no log quota had its tasks listed")

    await LogUsage().check(Quota("team-a", tasks=1), never, _logs(tmp_path, {}))


async def test_logs_are_measured_at_most_once_a_second_per_namespace(
    tmp_path: Path, clock: _Clock
) -> None:
    """Within a second of a measure, a check uses it (what a task wrote since is not seen);
    from one second on, it measures again. Each namespace has its own measure."""
    logs = _logs(tmp_path, {"a1": (b"a" * 10, b""), "b1": (b"b" * 50, b"")})
    listed: list[str] = []

    def ids_of(namespace: str, *task_ids: str) -> Any:
        async def listing() -> list[str]:
            listed.append(namespace)
            return list(task_ids)

        return listing

    usage = LogUsage()
    team_a, team_b = Quota("team-a", log_bytes=40), Quota("team-b", log_bytes=40)
    await usage.check(team_a, ids_of("team-a", "a1"), logs)  # 10 bytes kept
    writer = logs.writer("a1")
    writer.stdout(b"a" * 90)  # 100 now
    writer.close()
    clock.mono += 0.5
    await usage.check(team_a, ids_of("team-a", "a1"), logs)  # still the measure of 10
    with pytest.raises(ResourceExhausted, match="'team-b' is at its quota of 40 log bytes"):
        await usage.check(team_b, ids_of("team-b", "b1"), logs)
    clock.mono += 0.5  # one second since team-a's measure
    with pytest.raises(ResourceExhausted, match="'team-a' .* \\(100 kept;"):
        await usage.check(team_a, ids_of("team-a", "a1"), logs)
    assert listed == ["team-a", "team-b", "team-a"]
