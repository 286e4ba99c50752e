"""Settings: defaults, the YAML config file, I2VD_* overrides, and error messages."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml

from daemon.config import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No I2VD_* variable from the outer environment may leak into these tests."""
    for key in list(os.environ):
        if key.startswith("I2VD_"):
            monkeypatch.delenv(key)


def write_config(folder: Path, values: dict | str, name: str = "i2vd.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = values if isinstance(values, str) else yaml.safe_dump(values)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    base = tmp_path.resolve()
    assert settings.base_dir == base
    assert settings.inbox == [base / "inbox"]
    assert settings.outbox == base / "outbox"
    assert settings.failed_dir == base / "failed"
    assert settings.rules_dir == base / "rules"
    assert settings.state_dir == base / "state"
    assert settings.database_url == f"sqlite:///{base / 'state' / 'i2vd.db'}"
    assert settings.work_dir == base / "state" / "work"
    assert (settings.device, settings.watch_mode) == ("auto", "auto")
    assert settings.settle_seconds == 2.0
    assert settings.rescan_seconds == 30.0


def test_config_file_paths_resolve_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf_dir = tmp_path / "etc"
    config = write_config(
        conf_dir,
        {
            "inbox": ["drop", "../shared/in"],
            "outbox": "out",
            "state_dir": "var/state",
            "settle_seconds": 0.5,
            "device": "cuda:1",
            "watch_mode": "polling",
        },
    )
    settings = load_settings(config)
    base = conf_dir.resolve()
    assert settings.base_dir == base
    assert settings.inbox == [base / "drop", tmp_path.resolve() / "shared" / "in"]
    assert settings.outbox == base / "out"
    assert settings.failed_dir == base / "failed"
    assert settings.state_dir == base / "var" / "state"
    assert settings.database_url == f"sqlite:///{base / 'var' / 'state' / 'i2vd.db'}"
    assert settings.settle_seconds == 0.5
    assert settings.device == "cuda:1"
    assert settings.watch_mode == "polling"


def test_a_single_inbox_string_means_one_folder(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"inbox": "photos"}))
    assert settings.inbox == [tmp_path.resolve() / "photos"]


def test_explicit_database_url_is_kept(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"database_url": "sqlite:////srv/q.db"}))
    assert settings.database_url == "sqlite:////srv/q.db"


def test_config_file_from_I2VD_CONFIG(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "conf", {"outbox": "videos"})
    monkeypatch.setenv("I2VD_CONFIG", str(config))
    settings = load_settings()
    assert settings.outbox == (tmp_path / "conf").resolve() / "videos"


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, {"settle_seconds": 5, "device": "cpu", "outbox": "out"})
    monkeypatch.setenv("I2VD_SETTLE_SECONDS", "0.25")
    monkeypatch.setenv("I2VD_DEVICE", "cuda:0")
    monkeypatch.setenv("I2VD_OUTBOX", "/srv/videos")
    monkeypatch.setenv("I2VD_WATCH_MODE", "events")
    settings = load_settings(config)
    assert settings.settle_seconds == 0.25
    assert settings.device == "cuda:0"
    assert settings.outbox == Path("/srv/videos")
    assert settings.watch_mode == "events"


def test_env_inbox_bad_json_list_is_a_settings_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("I2VD_INBOX", '["/srv/a", ')
    with pytest.raises(SettingsError) as err:
        load_settings(write_config(tmp_path, {}))
    assert "inbox" in str(err.value)
    assert "not a valid JSON list" in str(err.value)


def test_env_inbox_as_json_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, {"inbox": "from-file"})
    monkeypatch.setenv("I2VD_INBOX", '["/srv/a", "b"]')
    settings = load_settings(config)
    assert settings.inbox == [Path("/srv/a"), tmp_path.resolve() / "b"]


def test_env_inbox_pathsep_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, {"inbox": "from-file"})
    monkeypatch.setenv("I2VD_INBOX", os.pathsep.join(["/srv/a", "/srv/b"]))
    settings = load_settings(config)
    assert settings.inbox == [Path("/srv/a"), Path("/srv/b")]


def test_env_inbox_single_plain_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("I2VD_INBOX", "/srv/drop")
    settings = load_settings(write_config(tmp_path, {}))
    assert settings.inbox == [Path("/srv/drop")]


def test_unknown_env_var_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("I2VD_FOO", "1")
    monkeypatch.setenv("I2VD_FOO__BAR", "2")
    settings = load_settings(write_config(tmp_path, {"outbox": "out"}))
    assert settings.outbox == tmp_path.resolve() / "out"
    assert not hasattr(settings, "foo")


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("settle_seconds", -1, "settle_seconds = -1"),
        ("watch_mode", "bogus", "watch_mode = 'bogus'"),
        ("device", "gpu7", "device = 'gpu7'"),
        ("device", "cuda:x", "device = 'cuda:x'"),
        ("max_attempts", 0, "max_attempts = 0"),
        ("lease_seconds", 5, "lease_seconds = 5"),
        ("log_level", "LOUD", "log_level = 'LOUD'"),
    ],
)
def test_invalid_value_names_key_and_value(
    tmp_path: Path, key: str, value: object, shown: str
) -> None:
    config = write_config(tmp_path, {key: value})
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    message = str(err.value)
    assert shown in message
    assert str(config) in message
    assert f"I2VD_{key.upper()}" in message


def test_invalid_env_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("I2VD_SETTLE_SECONDS", "-3")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "settle_seconds = '-3'" in message
    assert "I2VD_SETTLE_SECONDS" in message
    assert "greater than or equal to 0" in message


def test_unknown_key_is_reported_as_unknown(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"outbx": "out"})
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert "outbx: unknown setting" in str(err.value)


@pytest.mark.parametrize("outbox", ["inbox/videos", "inbox"])
def test_outbox_inside_inbox_is_refused(tmp_path: Path, outbox: str) -> None:
    config = write_config(tmp_path, {"inbox": "inbox", "outbox": outbox})
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    message = str(err.value)
    assert "outbox" in message
    assert "must not be inside one another" in message
    assert str(tmp_path.resolve() / "inbox") in message


def test_failed_dir_inside_second_inbox_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"inbox": ["a", "b"], "failed_dir": "b/failed"})
    with pytest.raises(SettingsError, match=r"failed_dir .* must not be inside one another"):
        load_settings(config)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        # The outbox holding the inbox would publish into the inbox and re-ingest it.
        ({"inbox": "share/inbox", "outbox": "share"}, "outbox"),
        ({"inbox": ["in", "in/scanner"]}, "inbox folders"),
        ({"inbox": "in", "state_dir": "in/state"}, "state_dir"),
    ],
)
def test_overlapping_folders_are_refused(
    tmp_path: Path, settings: dict[str, object], words: str
) -> None:
    config = write_config(tmp_path, settings)
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    message = str(err.value)
    assert words in message and "(settings)" not in message and "I2VD_(" not in message


def test_sibling_folder_with_common_prefix_is_allowed(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"inbox": "in", "outbox": "inbox-out"}))
    assert settings.outbox == tmp_path.resolve() / "inbox-out"


def test_config_file_not_yaml(tmp_path: Path) -> None:
    config = write_config(tmp_path, "inbox: [a\noutbox: : :\n")
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert f"config file {config} is not valid YAML" in str(err.value)


@pytest.mark.parametrize("text", ["- inbox\n- outbox\n", "just a string\n", "42\n"])
def test_config_file_not_a_mapping(tmp_path: Path, text: str) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert str(err.value) == f"config file {config} must hold a mapping of setting: value"


def test_empty_config_file_means_defaults_at_its_folder(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, ""))
    assert settings.outbox == tmp_path.resolve() / "outbox"


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError) as err:
        load_settings(missing)
    assert f"cannot read config file {missing}" in str(err.value)


def test_settings_direct_construction_resolves_paths(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path, inbox=["x", "y"], outbox="o")
    assert settings.inbox == [tmp_path.resolve() / "x", tmp_path.resolve() / "y"]
    assert settings.outbox == tmp_path.resolve() / "o"


def test_windows_from_the_file_and_from_I2VD_WINDOWS(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unquoted, YAML reads 22:00 as the integer 1320; it still means ten at night.
    config = write_config(
        tmp_path, "windows:\n  - {engine: diffusion, start: 22:00, end: '06:00', days: mon-fri}\n"
    )
    (window,) = load_settings(config).windows
    assert (window.engine, window.start, window.end) == ("diffusion", dt.time(22), dt.time(6))
    assert (window.days, window.timezone, window.stop_at_close) == ("mon-fri", "UTC", "finish")
    monkeypatch.setenv(
        "I2VD_WINDOWS", '[{"engine": "motion", "start": "01:00", "end": "02:00", "days": "*"}]'
    )
    (window,) = load_settings(config).windows
    assert (window.engine, window.start, window.days) == ("motion", dt.time(1), "*")


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ({"days": "mon-fry"}, "days 'mon-fry': 'fry' is not a day"),
        ({"start": "25:00"}, "start '25:00': not a time of day"),
        ({"engine": "gpu"}, "engine 'gpu': must be diffusion or motion"),
        ({"colour": "red"}, "'colour' is not a window setting"),
    ],
)
def test_a_bad_window_names_its_place_and_the_bad_value(
    tmp_path: Path, window: dict[str, str], words: str
) -> None:
    night = {"engine": "diffusion", "start": "22:00", "end": "06:00"}
    config = write_config(tmp_path, {"windows": [night, {**night, **window}]})
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    message = str(err.value)
    assert f"windows.1 (in {config} or I2VD_WINDOWS): {words}" in message
    assert "windows.0" not in message and "Value error" not in message
