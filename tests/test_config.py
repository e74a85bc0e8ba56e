"""Settings: file < environment < flags, validated once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from spear.config import Settings, parse_size
from spear.errors import InvalidArgument

if TYPE_CHECKING:
    from pathlib import Path


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('max_concurrent_tasks = 3\nnode_name = "from-file"\nkv_sync = true\n')
    env = {"SPEAR_HOME": str(tmp_path / "home"), "SPEAR_NODE_NAME": "from-env"}
    s = Settings.load(env=env, config_file=cfg)
    assert (s.max_concurrent_tasks, s.node_name, s.kv_sync) == (3, "from-env", True)
    assert s.data_dir == tmp_path / "home"
    s = Settings.load(env=env, config_file=cfg, node_name="from-flag", data_dir=tmp_path / "f")
    assert (s.node_name, s.data_dir) == ("from-flag", tmp_path / "f")


def test_config_in_data_dir_is_found(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("task_log_max_bytes = '1M'\n")
    s = Settings.load(env={"SPEAR_HOME": str(tmp_path)})
    assert s.task_log_max_bytes == 1024 * 1024


def test_default_data_dir_is_xdg(tmp_path: Path) -> None:
    s = Settings.load(env={"XDG_DATA_HOME": str(tmp_path)})
    assert s.data_dir == tmp_path / "spear"


def test_bad_values_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        Settings.load(env={}, config_file=bad)
    with pytest.raises(InvalidArgument, match="max_concurrent_tasks"):
        Settings.load(env={"SPEAR_MAX_CONCURRENT_TASKS": "lots"})
    with pytest.raises(InvalidArgument):
        Settings.load(env={}, max_concurrent_tasks=0)
    with pytest.raises(InvalidArgument, match="not found"):
        Settings.load(env={}, config_file=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("64M", 64 * 1024**2), ("1GiB", 1024**3), ("1.5k", 1536), (7, 7)],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12parsecs", "-1M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_warm_pool_settings(tmp_path: Path) -> None:
    env = {"SPEAR_HOME": str(tmp_path), "SPEAR_PROCESS_WARM_SPARES": "3"}
    s = Settings.load(env={**env, "SPEAR_PROCESS_WARM_IDLE_S": "30"})
    assert (s.process_warm_spares, s.process_warm_idle_s) == (3, 30.0)
    assert (Settings(data_dir=tmp_path).process_warm_spares, s.process_warm_idle_s) == (2, 30.0)
    with pytest.raises(InvalidArgument, match="process_warm_spares"):
        Settings.load(env={**env, "SPEAR_PROCESS_WARM_SPARES": "0"})
    with pytest.raises(InvalidArgument, match="process_warm_idle_s"):
        Settings.load(env=env, process_warm_idle_s=0)
