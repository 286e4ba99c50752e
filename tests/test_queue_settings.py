"""The admin commands' light settings reader: the same answer as the full validation for
every form a setting may take, a fall-back for what it does not vouch for, and no
pydantic or SQLAlchemy imported on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from daemon.config import Settings, SettingsError, load_settings
from daemon.queue_settings import NeedsFullCheck, QueueSettings, load_queue_settings

NIGHT = '{"engine": "diffusion", "start": "22:00", "end": "06:00", "days": "mon-fri"}'


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No I2VD_* variable from outside; a home and a working directory of the test's own."""
    for key in list(os.environ):
        if key.upper().startswith("I2VD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{sep}", os.pathsep)


def arrange(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str | None, env: dict[str, str]
) -> Path | None:
    """Writes the config file (none when ``yaml_text`` is None) and sets ``env``."""
    for name, value in env.items():
        monkeypatch.setenv(name, fill(value, tmp))
    if yaml_text is None:
        return None
    config = tmp / "etc" / "i2vd.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(fill(yaml_text, tmp), encoding="utf-8")
    if "I2VD_CONFIG" in env:
        return None  # found through the variable
    return config


def shown(value: object) -> object:
    """A value as the expectations below write it: paths as text, windows as tuples."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {name: shown(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [shown(item) for item in value]
    if hasattr(value, "engine"):  # a Window
        return (value.engine, str(value.start), str(value.end), value.days)
    return value


# (yaml or None for no file, environment, what the answer must show: {tmp} is the
# test's folder, the config file lies in {tmp}/etc, the working directory is {tmp}/cwd).
CASES: dict[str, tuple[str | None, dict[str, str], dict[str, object]]] = {
    "defaults without a file": (
        None,
        {},
        {
            "inbox": ["{tmp}/cwd/inbox"],
            "outbox": "{tmp}/cwd/outbox",
            "failed_dir": "{tmp}/cwd/failed",
            "state_dir": "{tmp}/cwd/state",
            "database_url": "sqlite:///{tmp}/cwd/state/i2vd.db",
            "windows": [],
        },
    ),
    "an empty file": ("", {}, {"outbox": "{tmp}/etc/outbox"}),
    "relative and absolute folders": (
        "inbox: [drop, ../shared/in]\noutbox: {tmp}/srv/out\nfailed_dir: ../bad\n"
        "state_dir: var/state\nrules_dir: elsewhere\n",
        {},
        {
            "inbox": ["{tmp}/etc/drop", "{tmp}/shared/in"],
            "outbox": "{tmp}/srv/out",
            "failed_dir": "{tmp}/bad",
            "database_url": "sqlite:///{tmp}/etc/var/state/i2vd.db",
        },
    ),
    "folders in the home folder": (
        "inbox: ~/in\noutbox: ~/out\nstate_dir: ~/state\n",
        {},
        {"inbox": ["{tmp}/home/in"], "outbox": "{tmp}/home/out"},
    ),
    "named inboxes": (
        "inbox: {photos: /mnt/share/in, clients: drop}\n",
        {},
        {"inbox_names": {"photos": "/mnt/share/in", "clients": "{tmp}/etc/drop"}},
    ),
    "a list of inboxes": (
        "inbox:\n  - a\n  - b\n",
        {},
        {"inbox_names": {"{tmp}/etc/a": "{tmp}/etc/a", "{tmp}/etc/b": "{tmp}/etc/b"}},
    ),
    "one inbox as text": ("inbox: photos\n", {}, {"inbox": ["{tmp}/etc/photos"]}),
    "I2VD_INBOX as a JSON list": (
        "inbox: from-file\n",
        {"I2VD_INBOX": '["{tmp}/a", "b"]'},
        {"inbox": ["{tmp}/a", "{tmp}/etc/b"]},
    ),
    "I2VD_INBOX as a JSON object": (
        "inbox: {old: from-file}\n",
        {"I2VD_INBOX": '{"photos": "{tmp}/p", "scans": "s"}'},
        {"inbox_names": {"photos": "{tmp}/p", "scans": "{tmp}/etc/s"}},
    ),
    "I2VD_INBOX separated by the path separator": (
        "inbox: from-file\n",
        {"I2VD_INBOX": "{tmp}/a{sep}{tmp}/b{sep}"},
        {"inbox": ["{tmp}/a", "{tmp}/b"]},
    ),
    "I2VD_INBOX as one path": (None, {"I2VD_INBOX": "~/drop"}, {"inbox": ["{tmp}/home/drop"]}),
    "lower-case and mixed-case variables": (
        "outbox: out\n",
        {"i2vd_outbox": "lower", "I2vd_State_Dir": "mixed", "i2vd_database_url": "sqlite:///x"},
        {
            "outbox": "{tmp}/etc/lower",
            "state_dir": "{tmp}/etc/mixed",
            "database_url": "sqlite:///x",
        },
    ),
    "database_url in the file": (
        "database_url: postgresql://i2vd@db/queue\n",
        {},
        {"database_url": "postgresql://i2vd@db/queue"},
    ),
    "I2VD_DATABASE_URL beats the file": (
        "database_url: postgresql://i2vd@db/queue\n",
        {"I2VD_DATABASE_URL": "sqlite:////srv/q.db"},
        {"database_url": "sqlite:////srv/q.db"},
    ),
    "an empty database_url means the default": (
        "database_url: ''\nstate_dir: st\n",
        {},
        {"database_url": "sqlite:///{tmp}/etc/st/i2vd.db"},
    ),
    "variables beat the file": (
        "outbox: out\nfailed_dir: bad\n",
        {"I2VD_OUTBOX": "{tmp}/videos", "I2VD_FAILED_DIR": "failures"},
        {"outbox": "{tmp}/videos", "failed_dir": "{tmp}/etc/failures"},
    ),
    "windows in the file": (
        "windows:\n"
        "  - {engine: diffusion, start: 22:00, end: '06:00', days: mon-fri,"
        " timezone: Europe/Berlin, stop_at_close: now}\n"
        "  - {engine: motion, start: '00:00', end: '00:00:30'}\n",
        {},
        {
            "windows": [
                ("diffusion", "22:00:00", "06:00:00", "mon-fri"),
                ("motion", "00:00:00", "00:00:30", "*"),
            ]
        },
    ),
    "I2VD_WINDOWS beats the file": (
        "windows: [{engine: motion, start: '01:00', end: '02:00'}]\n",
        {"I2VD_WINDOWS": f'[{NIGHT}, {{"engine": "motion", "start": 60, "end": "3:00"}}]'},
        {
            "windows": [
                ("diffusion", "22:00:00", "06:00:00", "mon-fri"),
                ("motion", "01:00:00", "03:00:00", "*"),
            ]
        },
    ),
    "no windows from the environment": (None, {"I2VD_WINDOWS": "[]"}, {"windows": []}),
    "a base_dir in the file": (
        "base_dir: ../srv\ninbox: in\n",
        {},
        # A relative base_dir is taken from the working directory, not the file's folder.
        {"inbox": ["{tmp}/srv/in"], "outbox": "{tmp}/srv/outbox"},
    ),
    "an absolute base_dir": ("base_dir: {tmp}/base\n", {}, {"state_dir": "{tmp}/base/state"}),
    "I2VD_BASE_DIR beats the file": (
        "base_dir: {tmp}/base\n",
        {"I2VD_BASE_DIR": "~/b"},
        {"outbox": "{tmp}/home/b/outbox"},
    ),
    "the file named by I2VD_CONFIG": (
        "outbox: videos\n",
        {"I2VD_CONFIG": "{tmp}/etc/i2vd.yaml"},
        {"outbox": "{tmp}/etc/videos"},
    ),
    "other settings are not the light reader's business": (
        "device: cuda:1\nwatch_mode: polling\nwebhooks: []\noutbox: o\n",
        {"I2VD_SETTLE_SECONDS": "0.5", "I2VD_FOO__BAR": "x"},
        {"outbox": "{tmp}/etc/o"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_light_reader_agrees_with_the_full_validation(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_text, env, expected = CASES[case]
    tmp = tmp_path.resolve()
    config = arrange(tmp, monkeypatch, yaml_text, env)
    light = load_queue_settings(config)
    assert light == QueueSettings.of(load_settings(config))
    for attribute, value in expected.items():
        want = json.loads(fill(json.dumps(value), tmp))
        got = shown(getattr(light, attribute))
        assert json.loads(json.dumps(got)) == want, attribute


# Values the full validation refuses: the light reader must send them there rather
# than answer (the message is load_settings' to give).
REFUSED: dict[str, tuple[str | None, dict[str, str]]] = {
    "an outbox that is a number": ("outbox: 5\n", {}),
    "no outbox at all": ("outbox:\n", {}),
    "an empty list of inboxes": ("inbox: []\n", {}),
    "an inbox list holding a number": ("inbox: [a, 7]\n", {}),
    "an inbox without a name": ("inbox: {'': /srv/in}\n", {}),
    "a named inbox with two folders": ("inbox: {photos: [a, b]}\n", {}),
    "overlapping inboxes": ("inbox: [a, a/b]\n", {}),
    "the outbox inside the inbox": ("inbox: in\noutbox: in/out\n", {}),
    "the state inside the inbox": ("inbox: in\nstate_dir: in\n", {}),
    "a database_url that is a number": ("database_url: 5\n", {}),
    "a base_dir that is a list": ("base_dir: [a]\n", {}),
    "a home folder of nobody": ("state_dir: ~nobody-i2vd-knows/state\n", {}),
    "windows that are not a list": ("windows: nightly\n", {}),
    "a window with a bad engine": (
        "windows: [{engine: difusion, start: '01:00', end: '02:00'}]\n",
        {},
    ),
    "a window with an unknown key": (
        "windows: [{engine: motion, start: '01:00', end: '02:00', colour: red}]\n",
        {},
    ),
    "I2VD_WINDOWS that is not JSON": (None, {"I2VD_WINDOWS": '[{"engine":'}),
    "I2VD_WINDOWS with a bad time": (
        None,
        {"I2VD_WINDOWS": '[{"engine": "motion", "start": "25:00", "end": "02:00"}]'},
    ),
    "an empty I2VD_INBOX": (None, {"I2VD_INBOX": ""}),
    "I2VD_INBOX as a broken JSON list": (None, {"I2VD_INBOX": '["/srv/a", '}),
    "I2VD_INBOX as a broken JSON object": (None, {"I2VD_INBOX": '{"photos": '}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_value_the_full_check_refuses_sends_the_caller_there(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_text, env = REFUSED[case]
    config = arrange(tmp_path.resolve(), monkeypatch, yaml_text, env)
    with pytest.raises(NeedsFullCheck):
        load_queue_settings(config)
    with pytest.raises(SettingsError):
        load_settings(config)


# Forms the light reader leaves to pydantic-settings, whatever it makes of them.
@pytest.mark.parametrize(
    ("yaml_text", "env"),
    [
        ("Outbox: videos\n", {}),
        ("outbox: a\nOUTBOX: b\n", {}),
        (None, {"I2VD_WINDOWS__0__START": "01:00"}),
        (None, {"I2VD_INBOX__PHOTOS": "/srv/photos"}),
    ],
)
def test_unusual_spellings_are_left_to_the_full_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str | None, env: dict[str, str]
) -> None:
    config = arrange(tmp_path.resolve(), monkeypatch, yaml_text, env)
    with pytest.raises(NeedsFullCheck):
        load_queue_settings(config)


def test_the_full_check_reads_a_setting_spelt_in_capitals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the light reader does not guess at `Outbox:`: pydantic-settings takes it."""
    config = arrange(tmp_path.resolve(), monkeypatch, "Outbox: videos\n", {})
    assert load_settings(config).outbox == tmp_path.resolve() / "etc" / "videos"


@pytest.mark.parametrize(
    "yaml_text", [None, "- a list\n", "inbox: [a\n", "1: one\n", b"\xff\xfe".decode("latin-1")]
)
def test_a_config_file_it_cannot_use_gives_the_same_message(
    tmp_path: Path, yaml_text: str | None
) -> None:
    config = tmp_path / "i2vd.yaml"
    if yaml_text is not None:
        config.write_bytes(yaml_text.encode("latin-1"))
    with pytest.raises(SettingsError) as full:
        load_settings(config)
    with pytest.raises(SettingsError) as light:
        load_queue_settings(config)
    assert str(light.value) == str(full.value)
    assert str(config) in str(light.value)


def test_a_bad_other_setting_does_not_stop_the_light_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented trade-off: only the queue's keys are read; `i2vd run` and
    `i2vd doctor` refuse the rest."""
    config = arrange(tmp_path.resolve(), monkeypatch, "device: gpu7\noutbox: o\n", {})
    assert load_queue_settings(config).outbox == tmp_path.resolve() / "etc" / "o"
    with pytest.raises(SettingsError, match="device = 'gpu7'"):
        load_settings(config)


def test_the_inbox_property_lists_the_folders_in_order(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path, inbox={"b": "x", "a": "y"})
    view = QueueSettings.of(settings)
    assert view.inbox == settings.inbox == [tmp_path.resolve() / "x", tmp_path.resolve() / "y"]
    assert list(view.inbox_names) == ["b", "a"]


HEAVY = ("pydantic", "pydantic_settings", "sqlalchemy", "sqlmodel")


def test_reading_the_queue_settings_imports_no_pydantic_nor_sqlalchemy(tmp_path: Path) -> None:
    config = tmp_path / "i2vd.yaml"
    config.write_text(
        "inbox: {photos: in}\ndatabase_url: sqlite:////srv/q.db\n"
        "windows: [{engine: diffusion, start: 22:00, end: '06:00', timezone: Europe/Berlin}]\n",
        encoding="utf-8",
    )
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from daemon.queue_settings import load_queue_settings\n"
        f"s = load_queue_settings(Path({str(config)!r}))\n"
        "print(s.database_url, list(s.inbox_names), s.windows[0].timezone)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "I2VD_OUTBOX": str(tmp_path / "out")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    loaded, imported = result.stdout.splitlines()
    assert loaded == "sqlite:////srv/q.db ['photos'] Europe/Berlin"
    assert imported == "[]"
