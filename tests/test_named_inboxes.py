"""Named inboxes: each host maps an inbox's name to its own mount point; the queue
records the name and the inbox-relative path, never one host's absolute path."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import SettingsError, load_settings


def config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "i2vd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_mapping_form_names_each_inbox(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, "inbox: {photos: /mnt/share/in, clients: drop}\n"))
    base = tmp_path.resolve()
    assert settings.inbox == [Path("/mnt/share/in"), base / "drop"]
    assert settings.inbox_names == {"photos": Path("/mnt/share/in"), "clients": base / "drop"}
    assert settings.inbox_name(base / "drop") == "clients"


def test_two_hosts_give_one_name_their_own_folders(tmp_path: Path) -> None:
    a = load_settings(config(tmp_path / "a", "inbox: {photos: /mnt/nas/in}\n"))
    b = load_settings(config(tmp_path / "b", "inbox: {photos: /Volumes/share/in}\n"))
    assert a.inbox_name(a.inbox[0]) == b.inbox_name(b.inbox[0]) == "photos"


@pytest.mark.parametrize("value", ["in", "[in, scans]"])
def test_the_list_forms_keep_working_named_by_their_folder(tmp_path: Path, value: str) -> None:
    settings = load_settings(config(tmp_path, f"inbox: {value}\n"))
    assert settings.inbox_names == {str(folder): folder for folder in settings.inbox}


def test_the_mapping_form_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("I2VD_INBOX", '{"photos": "/srv/photos", "scans": "/srv/scans"}')
    settings = load_settings(config(tmp_path, "inbox: ignored\n"))
    assert settings.inbox_names == {"photos": Path("/srv/photos"), "scans": Path("/srv/scans")}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('inbox: {"": /srv/in}\n', "non-empty"),
        ("inbox: {a: /srv/in, b: /srv/in/scans}\n", "overlap"),
        ("inbox: {}\n", "inbox"),
    ],
)
def test_bad_mappings_are_refused_with_the_reason(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        load_settings(config(tmp_path, text))


def test_a_bad_json_object_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("I2VD_INBOX", '{"photos": ')
    with pytest.raises(SettingsError, match="not a valid JSON object"):
        load_settings(config(tmp_path, "outbox: out\n"))
