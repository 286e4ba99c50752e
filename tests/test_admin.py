"""The admin commands against a running daemon: real subprocesses, a real queue file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import FAILING_RULE, REPO, Layout, make_image, wait_for

pytestmark = pytest.mark.slow

# 1024p, 60 s at 24 fps (1,440 frames): a job that runs for a while and reports
# every frame as a step.
LONG_RULE = """\
name: long
match: {patterns: ["long*"]}
priority: 10
engine: motion
preset: quick
params: {resolution: 1024}
motion: {duration: 60, fps: 24}
"""

DIFFUSION_RULE = """\
name: ai
match: {folders: ["ai/**"]}
priority: 20
engine: diffusion
model: ./models/never-loaded
"""


def i2vd(layout: Layout, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", *args, "--config", str(layout.config_file)],
        cwd=layout.root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def as_json(layout: Layout, *args: str) -> Any:
    code, out, err = i2vd(layout, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def job_state(layout: Layout, job_id: int) -> dict[str, Any]:
    data: dict[str, Any] = as_json(layout, "show", str(job_id))
    return data


def first_job(layout: Layout, state: str | None = None) -> dict[str, Any]:
    args = ("jobs", "--state", state) if state else ("jobs",)
    rows = wait_for(lambda: as_json(layout, *args), 30, 0.2)
    row: dict[str, Any] = rows[0]
    return row


def test_status_jobs_and_show_describe_a_running_daemon(layout: Layout, daemon: Any) -> None:
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "trip" / "a.jpg")
    wait_for(lambda: (layout.outbox / "trip" / "a.motion.mp4").exists(), 30)

    status = wait_for(lambda: (s := as_json(layout, "status"))["daemons"] and s, 10, 0.2)
    assert status["paused"] is False
    assert status["counts"] == {"done": 1}
    (me,) = status["daemons"]
    assert me["pid"] == proc.proc.pid and me["alive"] and me["version"]
    assert status["running"] == [] and status["last_failure"] is None

    code, text, _ = i2vd(layout, "status")
    assert code == 0 and "daemons: 1 running" in text and "1 done" in text

    (row,) = as_json(layout, "jobs")
    assert {"id", "state", "source", "rule", "attempts", "progress", "error", "hint"} <= set(row)
    assert (row["state"], row["source"], row["rule"]) == ("done", "trip/a.jpg", "motion")
    code, text, _ = i2vd(layout, "jobs", "--state", "done")
    assert code == 0 and "trip/a.jpg" in text
    assert as_json(layout, "jobs", "--state", "failed") == []

    shown = job_state(layout, row["id"])
    assert shown["rule_as_queued"]["name"] == "motion"
    assert shown["outputs"]["video"].endswith("trip/a.motion.mp4")
    assert {"generate", "encode"} <= set(shown["timings"])
    code, text, _ = i2vd(layout, "show", str(row["id"]))
    assert code == 0 and "rule as queued:" in text
    code, _, err = i2vd(layout, "show", "999")
    assert code == 1 and "there is no job 999" in err
    assert proc.stop() == 0


def test_retry_of_a_failed_image_ends_as_one_video_and_no_stale_report(
    layout: Layout, daemon: Any
) -> None:
    layout.rule("broken", FAILING_RULE)
    layout.write_config(max_attempts=1)
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "broken.jpg")
    wait_for(lambda: layout.files(layout.failed) == ["broken.jpg", "broken.jpg.error.json"], 30)
    failed = first_job(layout, "failed")
    status = as_json(layout, "status")
    assert status["last_failure"]["id"] == failed["id"] and status["last_failure"]["error"]

    layout.rule("broken", FAILING_RULE.replace('prompt: "{{ 1 // 0 }}"\n', ""))  # fixed
    time.sleep(1.0)  # the rule reload is debounced
    code, out, err = i2vd(layout, "retry", str(failed["id"]))
    assert code == 0, err
    assert "back in the inbox" in out
    wait_for(lambda: (layout.outbox / "broken.broken.mp4").exists(), 30)
    wait_for(lambda: layout.files(layout.inbox) == [], 10)
    assert layout.files(layout.outbox) == ["broken.broken.json", "broken.broken.mp4", "broken.jpg"]
    assert layout.files(layout.failed) == []
    code, _, err = i2vd(layout, "retry", str(failed["id"]))
    assert code == 1 and "neither in" in err  # nothing left to retry
    assert proc.stop() == 0


def test_cancel_of_a_queued_and_of_a_running_job(layout: Layout, daemon: Any) -> None:
    layout.rule("long", LONG_RULE)
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "long-1.jpg", 1024, 768, seed=1)
    running = wait_for(
        lambda: [r for r in as_json(layout, "jobs", "--state", "running") if r["progress"] > 0],
        60,
        0.1,
    )[0]
    make_image(layout.inbox / "long-2.jpg", 1024, 768, seed=2)
    waiting = wait_for(lambda: as_json(layout, "jobs", "--state", "queued"), 30, 0.1)[0]

    code, out, err = i2vd(layout, "cancel", str(waiting["id"]), str(running["id"]))
    assert code == 0, err
    assert f"job {waiting['id']} cancelled" in out
    assert f"job {running['id']} is running: it stops at its next step" in out
    wait_for(lambda: job_state(layout, running["id"])["state"] == "cancelled", 30, 0.2)
    assert job_state(layout, waiting["id"])["state"] == "cancelled"
    # Both images wait in failed/ with a report saying how to bring them back.
    wait_for(lambda: len(layout.files(layout.failed)) == 4, 10)
    report = json.loads((layout.failed / "long-1.jpg.error.json").read_text())
    assert report["error"] == "cancelled by an administrator"
    assert [p for p in layout.files(layout.outbox) if "long" in p] == []
    code, _, err = i2vd(layout, "cancel", str(running["id"]))
    assert code == 1 and "already ended" in err
    assert proc.stop() == 0


def test_pause_holds_across_a_restart_and_resume_releases(layout: Layout, daemon: Any) -> None:
    proc = daemon()
    proc.wait_started()
    code, out, _ = i2vd(layout, "pause")
    assert code == 0 and "paused" in out
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: as_json(layout, "jobs", "--state", "queued"), 30, 0.2)  # intake goes on
    time.sleep(2.0)
    assert not (layout.outbox / "a.motion.mp4").exists()
    assert proc.stop() == 0

    again = daemon()
    again.wait_started()
    status = as_json(layout, "status")
    assert status["paused"] is True and status["counts"] == {"queued": 1}
    time.sleep(2.0)
    assert not (layout.outbox / "a.motion.mp4").exists()
    assert i2vd(layout, "resume")[0] == 0
    wait_for(lambda: (layout.outbox / "a.motion.mp4").exists(), 30)
    assert as_json(layout, "status")["paused"] is False
    assert again.stop() == 0


def test_pause_now_puts_the_running_job_back_without_using_an_attempt(
    layout: Layout, daemon: Any
) -> None:
    layout.rule("long", LONG_RULE)
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "long-1.jpg", 1024, 768)
    job = wait_for(
        lambda: [r for r in as_json(layout, "jobs", "--state", "running") if r["progress"] > 0],
        60,
        0.1,
    )[0]
    assert i2vd(layout, "pause", "--now")[0] == 0
    wait_for(lambda: job_state(layout, job["id"])["state"] == "queued", 30, 0.2)
    assert job_state(layout, job["id"])["attempts"] == 0
    assert i2vd(layout, "resume")[0] == 0
    wait_for(lambda: job_state(layout, job["id"])["state"] == "done", 90, 0.3)
    assert proc.stop() == 0


def test_a_closed_window_keeps_diffusion_jobs_queued_while_motion_jobs_run(
    layout: Layout, daemon: Any
) -> None:
    layout.rule("ai", DIFFUSION_RULE)
    now = time.gmtime()
    start = f"{(now.tm_hour + 2) % 24:02d}:00"
    end = f"{(now.tm_hour + 3) % 24:02d}:00"
    layout.write_config(windows=[{"engine": "diffusion", "start": start, "end": end}])
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "ai" / "portrait.jpg")
    make_image(layout.inbox / "b.jpg", seed=3)
    wait_for(lambda: (layout.outbox / "b.motion.mp4").exists(), 30)
    time.sleep(1.5)
    rows = as_json(layout, "jobs")
    assert {(r["source"], r["state"]) for r in rows} == {
        ("ai/portrait.jpg", "queued"),
        ("b.jpg", "done"),
    }
    (window,) = as_json(layout, "status")["windows"]
    assert window["engine"] == "diffusion" and window["open"] is False
    assert window["reopens_at"]
    code, text, _ = i2vd(layout, "status")
    assert code == 0 and "window diffusion: closed until" in text
    assert proc.stop() == 0


SENTINEL = """\
import os, pathlib
pathlib.Path(os.environ["TORCH_SENTINEL"]).write_text("imported")
raise ImportError("the admin commands must not import torch")
"""


def test_admin_commands_never_import_torch(layout: Layout, tmp_path: Path) -> None:
    fake = tmp_path / "sentinel" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(SENTINEL)
    marker = tmp_path / "torch-was-imported"
    env = {
        "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)]),
        "TORCH_SENTINEL": str(marker),
    }
    layout.rule("ai", DIFFUSION_RULE)
    for args in (
        ("status",),
        ("status", "--json"),
        ("jobs",),
        ("show", "1"),
        ("retry", "1"),
        ("cancel", "1"),
        ("pause",),
        ("resume",),
    ):
        code, _, err = i2vd(layout, *args, env=env)
        assert code in (0, 1), (args, err)
        assert not marker.exists(), args


# Run as `python -c REPORT_IMPORTS VERB …`: `i2vd VERB …`, then the modules it imported
# written to $I2VD_IMPORTS_REPORT (also when the command exits with an error code).
REPORT_IMPORTS = """\
import atexit, json, os, runpy, sys

def report():
    with open(os.environ["I2VD_IMPORTS_REPORT"], "w") as out:
        json.dump(sorted(sys.modules), out)

atexit.register(report)
runpy.run_module("daemon", run_name="__main__", alter_sys=True)
"""
# What makes a command slow to start (the ORM, Alembic, imaging, the GPU stack), or is
# not needed by a SQLite queue (psycopg).
HEAVY = (
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "pydantic",
    "pydantic_settings",
    "torch",
    "PIL",
    "numpy",
    "cv2",
    "jinja2",
    "psycopg",
)


def imports_of(layout: Layout, tmp_path: Path, *args: str) -> tuple[int, str, set[str]]:
    report = tmp_path / "imports.json"
    report.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", REPORT_IMPORTS, *args, "--config", str(layout.config_file)],
        cwd=layout.root,
        env={**os.environ, "PYTHONPATH": str(REPO), "I2VD_IMPORTS_REPORT": str(report)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = {name.partition(".")[0] for name in json.loads(report.read_text())}
    return result.returncode, result.stdout + result.stderr, modules


def test_admin_commands_import_no_orm_and_no_imaging(layout: Layout, tmp_path: Path) -> None:
    """Each verb against a populated queue: plain DB-API, nothing heavy imported."""
    from daemon.digests import sha256_file
    from daemon.store import JobStore
    from store_procs import job_for

    settings = layout.load()
    (name,) = settings.inbox_names
    image = make_image(layout.inbox / "a.jpg")
    waiting = make_image(layout.inbox / "b.jpg", seed=2)
    store = JobStore(settings.database_url)
    try:
        jobs = []
        for n, path in enumerate((image, waiting)):
            job = job_for(
                n,
                inbox=name,
                source=str(path),
                inbox_root=str(layout.inbox),
                relative=path.name,
                sha256=sha256_file(path),
            )
            jobs.append(store.enqueue(job))
        failed, queued = (job.id for job in jobs)
        assert failed is not None and queued is not None
        store.claim("host:1")
        store.fail(failed, None, "boom", "hint", retry_at=None, owner="host:1")
    finally:
        store.close()

    for args, expected in (
        (("status",), 0),
        (("status", "--json"), 0),
        (("jobs",), 0),
        (("jobs", "--state", "queued", "--limit", "5", "--json"), 0),
        (("show", str(failed)), 0),
        (("show", "999"), 1),
        (("pause", "--now"), 0),
        (("resume",), 0),
        (("cancel", str(queued)), 0),
        (("retry", str(failed)), 0),  # its image never left the inbox: queued again
        (("retry", "--failed"), 0),
    ):
        code, output, modules = imports_of(layout, tmp_path, *args)
        assert code == expected, (args, output)
        assert not modules & set(HEAVY), (args, sorted(modules & set(HEAVY)))
    assert layout.files(layout.failed) == ["b.jpg", "b.jpg.error.json"]  # the cancelled one
    code, _, _ = i2vd(layout, "show", str(failed), "--json")
    assert code == 0


def test_an_admin_command_creates_a_queue_no_daemon_has_made(layout: Layout) -> None:
    database = layout.state / "i2vd.db"
    assert not database.exists()
    status = as_json(layout, "status")
    assert status["counts"] == {} and status["daemons"] == [] and status["paused"] is False
    assert as_json(layout, "jobs") == []
    from daemon.admin_queue import AdminQueue

    with AdminQueue(f"sqlite:///{database}") as queue:  # its schema is complete
        assert queue.count_by_state() == {}


def test_an_admin_command_on_a_queue_that_cannot_be_opened(layout: Layout) -> None:
    layout.write_config(database_url=f"sqlite:///{layout.root / 'missing' / 'i2vd.db'}")
    code, _, err = i2vd(layout, "status")
    assert code == 3
    assert "cannot open the queue database" in err and "check database_url" in err
    layout.write_config(database_url="mysql://db/i2vd")
    code, _, err = i2vd(layout, "jobs")
    assert code == 3 and "must start with sqlite:/// or postgresql://" in err
    layout.config_file.write_text("inbox: [\n", encoding="utf-8")  # not YAML
    code, _, err = i2vd(layout, "jobs")
    assert code == 2 and "not valid YAML" in err


def test_a_queue_upgraded_by_a_newer_i2vd_is_said_plainly(layout: Layout) -> None:
    """An admin command that finds a column missing upgrades the queue, and learns only
    then that a newer i2vd made it: it says so, no traceback."""
    from daemon.dbapi import Database
    from daemon.store import JobStore

    url = layout.load().database_url
    JobStore(url).close()
    db = Database(url)
    db.write("UPDATE alembic_version SET version_num = '0099'")
    db.write("ALTER TABLE daemon DROP COLUMN inboxes_json")  # read by every admin command
    db.close()
    code, _, err = i2vd(layout, "status")
    assert code == 3, err
    assert "newer than this i2vd knows" in err and "upgrade i2vd on this host" in err
    assert "Traceback" not in err


def i2vd_on_read_only(layout: Layout, folder: Path, verb: str) -> subprocess.CompletedProcess[str]:
    """`i2vd VERB` with ``folder`` mounted read-only in a private mount namespace."""
    at = shlex.quote(str(folder))
    read_only = f"mount --bind {at} {at} && mount -o remount,ro,bind {at} {at}"
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    command = [sys.executable, "-m", "daemon", verb, "--config", str(layout.config_file)]
    return subprocess.run(
        [*unshare, f'{read_only} && exec "$0" "$@"', *command],
        cwd=layout.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_read_only_state_folder_is_said_plainly(layout: Layout) -> None:
    """No queue yet, and the folder it would be made in is read-only (a private mount
    namespace mounts it so): the lock file cannot be made; said plainly, exit 3."""
    state = layout.state
    result = i2vd_on_read_only(layout, state, "status")
    assert result.returncode == 3, result.stderr
    assert f"cannot write {state / 'i2vd.db.lock'}" in result.stderr
    assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
    assert list(state.iterdir()) == []


def test_a_daemon_on_a_read_only_state_folder_says_so_and_exits_3(layout: Layout) -> None:
    """The same read-only folder for `i2vd run`: a plain message, no traceback."""
    state = layout.state
    state.mkdir(parents=True, exist_ok=True)
    (state / "work").mkdir()  # the daemon's scratch folder, which it would create
    result = i2vd_on_read_only(layout, state, "run")
    assert result.returncode == 3, result.stderr
    assert "i2vd: cannot start: cannot open the queue database" in result.stderr
    assert f"cannot write {state / 'i2vd.db.lock'}" in result.stderr
    assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
