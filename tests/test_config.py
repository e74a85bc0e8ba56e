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


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "SPEAR_HOME": str(tmp_path / "data"), **extra}


def test_unknown_key_is_refused_with_its_name(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("max_concurent_tasks = 2\n")
    with pytest.raises(InvalidArgument, match=r"unknown setting 'max_concurent_tasks' \(did you "
                       r"mean max_concurrent_tasks\?\)") as err:  # fmt: skip
        Settings.load(env=_env(tmp_path), config_file=cfg)
    assert str(cfg) in str(err.value)
    cfg.write_text("[tables]\nzone = 'a'\n")
    with pytest.raises(InvalidArgument, match="unknown setting 'tables'"):
        Settings.load(env=_env(tmp_path), config_file=cfg)
    # What other parts read stays allowed: cluster timings and node labels.
    cfg.write_text("heartbeat_s = 0.5\n[labels]\nzone = 'a'\n")
    s = Settings.load(env=_env(tmp_path), config_file=cfg)
    assert s.extra == {"heartbeat_s": 0.5, "labels": {"zone": "a"}}


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_concurrent_tasks = 'lots'", "max_concurrent_tasks"),
        ("max_concurrent_tasks = 2.5", "max_concurrent_tasks"),
        ("kv_sync = 'maybe'", "kv_sync"),
        ("node_name = 3", "node_name"),
        ("busy_timeout_s = true", "busy_timeout_s"),
        ("task_log_max_bytes = '12parsecs'", "task_log_max_bytes"),
        ("log_level = 'LOUD'", "log_level"),
        ("log_format = 'xml'", "log_format"),
        ("heartbeat_s = 'soon'", "heartbeat_s"),
        ("labels = 3", "labels"),
    ],
)
def test_bad_values_in_a_file_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(InvalidArgument, match=f"setting {key}"):
        Settings.load(env=_env(tmp_path), config_file=cfg)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("on", True), ("yes", True), ("1", True), ("TRUE", True), ("off", False), ("no", False),
     ("0", False), ("false", False)],
)  # fmt: skip
def test_boolean_variables(tmp_path: Path, raw: str, value: bool) -> None:
    s = Settings.load(env=_env(tmp_path, SPEAR_KV_SYNC=raw))
    assert s.kv_sync is value


def test_boolean_junk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"SPEAR_KV_SYNC: setting kv_sync .*'sure'.*boolean"):
        Settings.load(env=_env(tmp_path, SPEAR_KV_SYNC="sure"))


def test_user_config_in_xdg_config_home(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "spear" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('node_name = "user"\nmax_concurrent_tasks = 5\nkv_sync = true\n')
    env = _env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    s = Settings.load(env=env)
    assert (s.node_name, s.max_concurrent_tasks, s.kv_sync) == ("user", 5, True)
    # The data dir's own file wins over the user's; the environment and flags over both.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.toml").write_text('node_name = "data"\n')
    s = Settings.load(env={**env, "SPEAR_MAX_CONCURRENT_TASKS": "7"})
    assert (s.node_name, s.max_concurrent_tasks, s.kv_sync) == ("data", 7, True)
    assert Settings.load(env=env, node_name="flag").node_name == "flag"
    # --config (or SPEAR_CONFIG) names the one file read instead of both.
    only = tmp_path / "only.toml"
    only.write_text("max_concurrent_tasks = 9\n")
    s = Settings.load(env=env, config_file=only)
    assert (s.node_name, s.max_concurrent_tasks, s.kv_sync) == ("local", 9, False)


def test_user_config_default_is_dot_config(tmp_path: Path) -> None:
    user = tmp_path / "home" / ".config" / "spear" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text(f'data_dir = "{tmp_path / "elsewhere"}"\n')
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.toml").write_text('node_name = "there"\n')
    s = Settings.load(env={"HOME": str(tmp_path / "home")})
    # The data dir the user's file names is the one whose own file is read.
    assert (s.data_dir, s.node_name) == (tmp_path / "elsewhere", "there")
    (tmp_path / "elsewhere" / "config.toml").write_text('data_dir = "/x"\n')
    with pytest.raises(InvalidArgument, match="data_dir cannot be set"):
        Settings.load(env={"HOME": str(tmp_path / "home")})


def test_the_cli_refuses_a_bad_settings_file_in_one_line(tmp_path: Path) -> None:
    from conftest import Cli, one_error_line

    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("max_concurent_tasks = 2\n")
    cli = Cli(data)
    proc = cli("tasks")
    assert proc.returncode == 64
    assert "unknown setting 'max_concurent_tasks'" in one_error_line(proc.stderr)
    (data / "config.toml").write_text("")
    proc = cli("tasks", SPEAR_KV_SYNC="sure")
    assert proc.returncode == 64
    assert "SPEAR_KV_SYNC" in one_error_line(proc.stderr)
    assert cli("tasks", SPEAR_KV_SYNC="on").returncode == 0


def test_warm_pool_settings(tmp_path: Path) -> None:
    env = {"SPEAR_HOME": str(tmp_path), "SPEAR_PROCESS_WARM_SPARES": "3"}
    s = Settings.load(env={**env, "SPEAR_PROCESS_WARM_IDLE_S": "30"})
    assert (s.process_warm_spares, s.process_warm_idle_s) == (3, 30.0)
    assert (Settings(data_dir=tmp_path).process_warm_spares, s.process_warm_idle_s) == (2, 30.0)
    with pytest.raises(InvalidArgument, match="process_warm_spares"):
        Settings.load(env={**env, "SPEAR_PROCESS_WARM_SPARES": "0"})
    with pytest.raises(InvalidArgument, match="process_warm_idle_s"):
        Settings.load(env=env, process_warm_idle_s=0)
