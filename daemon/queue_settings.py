"""The settings an admin command needs to reach the queue, without the full validation.

``i2vd status``, ``jobs``, ``show``, ``retry``, ``cancel``, ``pause`` and ``resume``
need only the queue's database, the folders and the schedule windows. They are meant
to answer in a fraction of a second; importing pydantic to validate every setting
would take most of that. This is the light view those commands use: the same config
file and ``I2VD_*`` variables, read for these keys only.

This module is also the one owner of what both readers share (the config file, the
folder defaults, the inbox forms, path resolution, the default database URL, the
folder layout check): ``config.Settings`` uses these same functions, so the light
view cannot drift from the full one. It imports only the standard library and yaml.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .windows import Window

if TYPE_CHECKING:
    from .config import Settings

ENV_PREFIX = "I2VD_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
# The folders' defaults, relative to base_dir: `i2vd run` in a checkout uses ./inbox…
DEFAULT_INBOX = Path("inbox")
DEFAULT_OUTBOX = Path("outbox")
DEFAULT_FAILED_DIR = Path("failed")
DEFAULT_RULES_DIR = Path("rules")
DEFAULT_STATE_DIR = Path("state")
# The keys the light view reads; every other setting is left to `Settings`.
QUEUE_KEYS = ("database_url", "inbox", "outbox", "failed_dir", "state_dir", "base_dir", "windows")


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the key and the bad value."""


class NeedsFullCheck(Exception):
    """The light reader met a value it does not vouch for: ask ``config.load_settings``,
    whose full validation gives the answer or the canonical error message."""


@dataclass(frozen=True)
class QueueSettings:
    """Where the queue and the folders are, as this host sees them."""

    database_url: str
    # Each inbox's name and its folder on this host, in the order of `inbox`.
    inbox_names: dict[str, Path]
    outbox: Path
    failed_dir: Path
    state_dir: Path
    windows: tuple[Window, ...] = field(default=())

    @property
    def inbox(self) -> list[Path]:
        return list(self.inbox_names.values())

    @classmethod
    def of(cls, settings: Settings) -> QueueSettings:
        """The same view of fully validated settings."""
        return cls(
            database_url=settings.database_url,
            inbox_names=settings.inbox_names,
            outbox=settings.outbox,
            failed_dir=settings.failed_dir,
            state_dir=settings.state_dir,
            windows=tuple(settings.windows),
        )


def load_queue_settings(config_file: Path | None = None) -> QueueSettings:
    """The queue's settings from ``config_file`` (or ``I2VD_CONFIG``) and ``I2VD_*``
    variables, read as ``config.load_settings`` reads them, for ``QUEUE_KEYS`` only.

    Other settings are not looked at, let alone validated (``i2vd run`` and ``i2vd
    doctor`` check them). Raises ``SettingsError`` when the config file cannot be
    read or holds no mapping (the very message ``load_settings`` gives), and
    ``NeedsFullCheck`` for anything it does not vouch for: a value of an unexpected
    type, a bad window, overlapping folders, a key spelt in other letter case, an
    ``I2VD_<KEY>__…`` variable. The caller then calls ``config.load_settings``, which
    either accepts the value after all or stops with the canonical message (exit 2).
    For the keys it reads, the light reader never answers where the full check would
    refuse, nor answers differently (tests/test_queue_settings.py holds it to that).
    """
    config_file = config_file_from_env(config_file)
    values = config_values(config_file)
    # Names of the environment are matched case-insensitively, as pydantic-settings
    # does (the last of two spellings wins, in the environment's order, there too).
    env = {name.lower(): value for name, value in os.environ.items()}
    for key in values:
        if isinstance(key, str) and key.lower() in QUEUE_KEYS and key not in QUEUE_KEYS:
            raise NeedsFullCheck(f"{key}: a setting spelt in other letter case")
    for name in env:
        if any(name.startswith(f"{ENV_PREFIX}{key}__".lower()) for key in QUEUE_KEYS):
            raise NeedsFullCheck(f"{name}: a nested environment variable")

    def raw(key: str, default: object) -> tuple[object, bool]:
        """The value of ``key`` and whether it is an environment variable's text."""
        name = f"{ENV_PREFIX}{key}".lower()
        if name in env:
            return env[name], True
        return values.get(key, default), False

    try:
        base = resolve_base(_path("base_dir", raw("base_dir", Path.cwd())[0]))

        def folder(key: str, default: Path) -> Path:
            return resolve_path(base, _path(key, raw(key, default)[0]))

        names, folders = split_inbox_names(raw("inbox", [DEFAULT_INBOX])[0])
        inbox = [resolve_path(base, _path("inbox", f)) for f in _folder_list(folders)]
        outbox = folder("outbox", DEFAULT_OUTBOX)
        failed_dir = folder("failed_dir", DEFAULT_FAILED_DIR)
        state_dir = folder("state_dir", DEFAULT_STATE_DIR)
        check_folders(inbox, outbox, failed_dir, state_dir)
        database_url = raw("database_url", "")[0]
        if not isinstance(database_url, str):
            raise ValueError(f"database_url {database_url!r}: not text")
        return QueueSettings(
            database_url=database_url or default_database_url(state_dir),
            inbox_names=name_inboxes(names, inbox),
            outbox=outbox,
            failed_dir=failed_dir,
            state_dir=state_dir,
            windows=_windows(*raw("windows", [])),
        )
    except (ValueError, TypeError) as exc:
        raise NeedsFullCheck(str(exc)) from None


def _path(key: str, value: object) -> Path:
    # pydantic takes a Path from text only; anything else is for it to judge.
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    raise ValueError(f"{key} {value!r}: not a path")


def _folder_list(value: object) -> list[object]:
    folders = one_or_many(value)
    if not isinstance(folders, list) or not folders:
        raise ValueError(f"inbox {value!r}: not a folder or a list of folders")
    return folders


def _windows(value: object, from_env: bool) -> tuple[Window, ...]:
    if from_env and isinstance(value, str):  # I2VD_WINDOWS: a JSON list
        value = json.loads(value)  # its JSONDecodeError is a ValueError
    if not isinstance(value, list):
        raise ValueError(f"windows {value!r}: not a list")
    return tuple(Window.from_mapping(item) for item in value)


# --- what Settings shares with the light view ---------------------------------------


def config_file_from_env(config_file: Path | None) -> Path | None:
    """The config file given, else ``I2VD_CONFIG`` when set, else none."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return config_file


def config_values(config_file: Path | None) -> dict[str, Any]:
    """The config file's settings, with ``base_dir`` defaulting to the file's folder
    (none: no values; ``Settings`` then takes the working directory)."""
    if config_file is None:
        return {}
    values = read_config_file(config_file)
    values.setdefault("base_dir", config_file.resolve().parent)
    return values


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's mapping of setting: value (empty file: no settings)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of setting: value")
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise SettingsError(f"config file {path}: {odd[0]!r} is not the name of a setting")
    return data


def one_or_many(value: Any) -> Any:
    """Folders as a list. `inbox: ./inbox` and `inbox: [a, b]` both mean "these
    folders"; an env var may also carry several folders as a JSON list or separated by
    the path separator. Other values are returned as they are, for the caller to judge."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {exc}") from None
        return [part for part in value.split(os.pathsep) if part]
    if isinstance(value, Path):
        return [value]
    return value


def split_inbox_names(value: Any) -> tuple[list[str] | None, Any]:
    """``inbox: {photos: /mnt/share/in, …}`` (or that as a JSON object in the
    environment): the names apart, the folders as a list. Any other form: no names,
    the value as it is."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"inbox: not a valid JSON object: {exc}") from None
    if not isinstance(value, dict):
        return None, value
    names = [str(name) for name in value]
    if not all(name.strip() for name in names):
        raise ValueError("inbox: every inbox name must be a non-empty word")
    return names, list(value.values())


def name_inboxes(names: list[str] | None, folders: list[Path]) -> dict[str, Path]:
    """Each inbox's name and its folder: the names given, else each folder's own path
    (one host). Jobs record the name, never this host's path."""
    return dict(zip(names or [str(folder) for folder in folders], folders, strict=True))


def resolve_base(base_dir: Path) -> Path:
    """``base_dir`` itself, absolute (relative: against the working directory)."""
    return resolve_path(Path(), base_dir)


def resolve_path(base: Path, path: Path) -> Path:
    """``path`` with ``~`` expanded, against ``base`` when relative, links resolved."""
    try:
        return (base / path.expanduser()).resolve()
    except RuntimeError as exc:  # ~someone this host does not know, a symlink loop
        raise ValueError(f"the folder {str(path)!r} cannot be found: {exc}") from None


def default_database_url(state_dir: Path) -> str:
    """The queue when ``database_url`` is not set: a SQLite file in ``state_dir``.

    The URL's path is percent-decoded and ends at a ``?`` (SQLAlchemy's reading, and
    database_url.py's), so a folder with ``%`` or ``?`` in its name has them escaped."""
    path = str(state_dir / "i2vd.db").replace("%", "%25").replace("?", "%3F")
    return f"sqlite:///{path}"


def check_folders(inbox: list[Path], outbox: Path, failed_dir: Path, state_dir: Path) -> None:
    """Refuse folder layouts that would make i2vd re-ingest its own output or take an
    image twice (``ValueError``); the message names both folders."""
    for i, folder in enumerate(inbox):
        for other in inbox[i + 1 :]:
            if _overlap(folder, other):
                raise ValueError(f"inbox folders {folder} and {other} overlap")
        for key, path in (("outbox", outbox), ("failed_dir", failed_dir), ("state_dir", state_dir)):
            if _overlap(folder, path):
                raise ValueError(
                    f"{key} ({path}) and the inbox {folder} must not be inside one another"
                )


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)
