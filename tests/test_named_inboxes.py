"""Named inboxes: each host maps an inbox's name to its own mount point; the queue
records the name and the inbox-relative path, never one host's absolute path."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import SettingsError, load_settings
from daemon.host_paths import HostPaths
from daemon.store import JobStore
from store_procs import job_for


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


# --- the queue's paths, seen from each host -------------------------------------------


def test_each_host_sees_a_job_at_its_own_paths(queue_url: str) -> None:
    alpha, beta = JobStore(queue_url), JobStore(queue_url)
    try:
        alpha.host_paths = HostPaths({"photos": Path("/mnt/nas/in")}, Path("/mnt/nas/out"))
        beta.host_paths = HostPaths({"photos": Path("/Volumes/in")}, Path("/Volumes/out"))
        job = alpha.enqueue(
            job_for(1, inbox="photos", relative="trip/a.jpg", source="/mnt/nas/in/trip/a.jpg")
        )
        assert job.id is not None

        claimed = beta.claim("beta:1")
        assert claimed is not None
        assert (claimed.source, claimed.inbox_root) == ("/Volumes/in/trip/a.jpg", "/Volumes/in")
        beta.plan_outputs(
            job.id, "/Volumes/out/trip/a.mp4", "/Volumes/out/trip/a.json", "/Volumes/out/trip/a.jpg"
        )
        # Stored neutral; each host reads its own outbox.
        with beta.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT video_path, source_dest FROM job").one()
        assert tuple(stored) == ("@outbox/trip/a.mp4", "@outbox/trip/a.jpg")
        seen_by_alpha = alpha.get(job.id)
        assert seen_by_alpha is not None
        assert (seen_by_alpha.video_path, seen_by_alpha.sidecar_path) == (
            "/mnt/nas/out/trip/a.mp4",
            "/mnt/nas/out/trip/a.json",
        )
        # A path outside the outbox (another folder entirely) is kept as given.
        beta.plan_outputs(job.id, "/elsewhere/a.mp4", None, None)
        assert alpha.get(job.id).video_path == "/elsewhere/a.mp4"  # type: ignore[union-attr]

        # Intake on either host finds the file's job by inbox name and relative path.
        found = beta.job_for_file("/Volumes/in/trip/a.jpg", job.sha256)
        assert found is not None and found.id == job.id
        assert beta.job_for_file("/Volumes/in/trip/b.jpg", job.sha256) is None
        beta.keep_in_inbox("/Volumes/in/trip/a.jpg", job.sha256)
        assert alpha.get(job.id).source_stuck  # type: ignore[union-attr]
    finally:
        alpha.close()
        beta.close()


def test_rows_from_before_inbox_names_keep_their_paths(queue_url: str) -> None:
    store = JobStore(queue_url)
    try:
        store.host_paths = HostPaths({"photos": Path("/srv/in")}, Path("/srv/out"))
        old = store.enqueue(
            job_for(1, inbox="/srv/old-in", source="/srv/old-in/img1.jpg", inbox_root="/srv/old-in")
        )
        assert old.source == "/srv/old-in/img1.jpg"
        assert store.job_for_file("/srv/old-in/img1.jpg", old.sha256) is not None
    finally:
        store.close()
