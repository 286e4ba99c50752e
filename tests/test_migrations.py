"""Upgrades keep the queue: Alembic migrations, and queues made by i2vd 0.1.0.

0.1.0 made its schema with ``create_all`` and had no ``alembic_version``; its queues
are built here by 0.1.0's own store module (tests/released/), in a subprocess so its
tables never meet today's.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

from conftest import REPO, Layout, make_image
from daemon import migrate, schema_version
from daemon.database import normalise_url
from daemon.rules import load_rules
from daemon.store import Job, JobState, JobStore

RELEASED_STORE = REPO / "tests" / "released" / "store_0_1_0.py"

# Builds a queue with 0.1.0's code. argv: its store module, database URL, JSON list of
# jobs (each the Job fields plus "end": None | "running" | "done" | "failed").
BUILD_WITH_0_1_0 = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    spec = importlib.util.spec_from_file_location("store_0_1_0", sys.argv[1])
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    store = old.JobStore(sys.argv[2])
    for fields in json.loads(sys.argv[3]):
        end = fields.pop("end")
        job = store.enqueue(old.Job(**fields))
        if end is None:
            continue
        now = time.time()
        claimed = store.claim("oldhost:4242", now - 600, 60)  # its lease ran out long ago
        assert claimed.id == job.id, "list the jobs that end before those that wait"
        if end == "done":
            store.finish(claimed.id, now, {"total": 1.0})
        elif end == "failed":
            store.fail(claimed.id, now, "boom", "try again", retry_at=None)
    store.close()
    """
)


def build_with_0_1_0(url: str, jobs: list[dict[str, Any]]) -> None:
    subprocess.run(
        [sys.executable, "-c", BUILD_WITH_0_1_0, str(RELEASED_STORE), url, json.dumps(jobs)],
        check=True,
        cwd=REPO,
    )


def old_job(n: int, end: str | None, root: str = "/srv/in", **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "source": f"{root}/img{n}.jpg",
        "inbox_root": root,
        "relative": f"img{n}.jpg",
        "sha256": f"{n:064x}",
        "size_bytes": 1000 + n,
        "rule_name": "motion",
        "rule_hash": "h1",
        "rule_file": "/rules/motion.yaml",
        "rule_json": json.dumps({"name": "motion"}),
        "engine": "motion",
        "end": end,
    }
    fields.update(extra)
    return fields


def test_models_and_migrations_agree(queue_url: str) -> None:
    """Whoever changes daemon/tables.py must add the migration that makes it so."""
    store = JobStore(queue_url)
    try:
        with store.engine.connect() as conn:
            # Alembic cannot compare an index on an expression (priority DESC): that
            # one is checked by its definition below.
            opts = {
                "compare_type": True,
                "include_object": lambda obj, name, *_: name != "ix_job_runnable",
            }
            context = MigrationContext.configure(conn, opts=opts)
            differences = compare_metadata(context, SQLModel.metadata)
            definition = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_job_runnable'"
                if conn.dialect.name == "sqlite"
                else "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_job_runnable'"
            ).scalar_one()
        assert differences == []
        assert re.search(r"\(inbox, priority DESC, not_before, id\) WHERE", definition)
        assert migrate.current(store.engine) == migrate.head()
    finally:
        store.close()


def test_a_0_1_0_queue_is_stamped_upgraded_and_kept(queue_url: str) -> None:
    build_with_0_1_0(
        queue_url,
        [old_job(1, "running"), old_job(2, "failed"), old_job(3, "done"), old_job(4, None)],
    )
    engine = create_engine(normalise_url(queue_url))
    try:
        assert "alembic_version" not in inspect(engine).get_table_names()
        assert migrate.current(engine) is None
    finally:
        engine.dispose()

    store = JobStore(queue_url)
    try:
        assert migrate.current(store.engine) == migrate.head()
        rows = store.list_jobs(newest_first=False)
        assert [(j.relative, j.state) for j in rows] == [
            ("img1.jpg", "running"),
            ("img2.jpg", "failed"),
            ("img3.jpg", "done"),
            ("img4.jpg", "queued"),
        ]
        # Named inboxes did not exist: each job keeps the folder it was found in.
        assert {j.inbox for j in rows} == {"/srv/in"}
        assert [j.size_bytes for j in rows] == [1001, 1002, 1003, 1004]
        assert rows[1].error == "boom" and rows[2].timings_json == '{"total": 1.0}'
        assert store.control.get().paused is False
        # The dead 0.1.0 daemon's job comes back; then everything waiting can be claimed.
        assert [j.id for j in store.recover(None)] == [rows[0].id]
        claimed = {store.claim("new:1").id for _ in range(2)}  # type: ignore[union-attr]
        assert claimed == {rows[0].id, rows[3].id}
        # The new unique key holds from now on: the same drop is not queued again.
        twin = Job(**{**rows[3].model_dump(exclude={"id"}), "state": JobState.QUEUED})
        assert store.enqueue(twin).id == rows[3].id
    finally:
        store.close()
    # Opening it again changes nothing.
    store = JobStore(queue_url)
    try:
        assert store.count_by_state() == {"running": 2, "failed": 1, "done": 1}
    finally:
        store.close()


def test_drops_queued_twice_by_0_1_0_keep_their_first_job(queue_url: str) -> None:
    build_with_0_1_0(queue_url, [old_job(1, None), old_job(1, None), old_job(2, None)])
    store = JobStore(queue_url)
    try:
        rows = store.list_jobs(newest_first=False)
        assert [j.state for j in rows] == ["queued", "cancelled", "queued"]
        assert "queued twice" in (rows[1].error or "")
    finally:
        store.close()


def test_a_0_1_0_queue_is_processed_by_this_version(layout: Layout, daemon) -> None:
    """Jobs queued, running (its daemon killed) and ended under 0.1.0, then this
    version starts on the same queue: the waiting ones are published, the ended ones
    are left alone."""
    settings = layout.load()
    rule = load_rules(layout.rules)[0][0].rule
    rule_fields = {
        "rule_name": rule.name,
        "rule_hash": rule.content_hash(),
        "rule_file": str(layout.rules / "motion.yaml"),
        "rule_json": json.dumps(rule.model_dump(mode="json")),
    }
    jobs = []
    for n, end in enumerate(["running", "failed", "done", None, None]):
        image = make_image(layout.inbox / f"img{n}.jpg", seed=n)
        fields = old_job(n, end, root=str(layout.inbox), **rule_fields)
        fields["sha256"] = hashlib.sha256(image.read_bytes()).hexdigest()
        fields["size_bytes"] = image.stat().st_size
        if end in ("failed", "done"):
            image.unlink()  # 0.1.0 had moved these away already
        jobs.append(fields)
    build_with_0_1_0(settings.database_url, jobs)

    proc = daemon("--once")
    assert proc.wait(120) == 0, proc.log
    published = sorted(p.name for p in layout.outbox.glob("*.mp4"))
    assert published == ["img0.motion.mp4", "img3.motion.mp4", "img4.motion.mp4"]
    assert layout.files(layout.inbox) == []
    store = JobStore(settings.database_url)
    try:
        states = [j.state for j in store.list_jobs(newest_first=False)]
        assert states == ["done", "failed", "done", "done", "done"]
    finally:
        store.close()


@pytest.mark.parametrize("daemons", [4])
def test_upgrading_daemons_at_once_never_fail(queue_url: str, daemons: int) -> None:
    build_with_0_1_0(queue_url, [old_job(n, None) for n in range(5)])
    from store_procs import open_store, run_in_processes

    started = time.monotonic()
    results = run_in_processes(open_store, [(queue_url,)] * daemons)
    assert results == [str({JobState.QUEUED.value: 5})] * daemons
    assert time.monotonic() - started < 120


def test_migrations_are_shipped_as_package_data() -> None:
    assert (migrate.MIGRATIONS / "script.py.mako").is_file()
    versions = sorted(p.name for p in (migrate.MIGRATIONS / "versions").glob("0*.py"))
    assert versions[0].startswith("0001_") and len(versions) >= 2
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"daemon.migrations" = ["script.py.mako"]' in pyproject
    assert Path(migrate.__file__).parent / "migrations" == migrate.MIGRATIONS


def test_a_queue_upgraded_by_a_newer_i2vd_is_refused_with_what_to_do(
    layout: Layout, daemon
) -> None:
    url = layout.load().database_url
    JobStore(url).close()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    finally:
        engine.dispose()
    with pytest.raises(migrate.SchemaTooNew, match="upgrade i2vd on this host"):
        JobStore(url)
    proc = daemon()
    assert proc.wait(60) == 3
    assert "the queue database is at schema 0099, newer than this i2vd knows" in proc.log
    assert "Traceback" not in proc.log


def test_the_newest_revision_is_read_from_the_file_names_as_alembic_reads_it() -> None:
    assert schema_version.newest_revision() == migrate.head()


def test_an_up_to_date_queue_is_opened_without_importing_alembic(queue_url: str) -> None:
    """Almost every start finds the schema current: it costs one read, not Alembic's
    import; a queue that is behind is still upgraded (the tests above)."""
    JobStore(queue_url).close()  # made and brought up to date
    probe = (
        "import sys; from daemon.store import JobStore; "
        f"JobStore({queue_url!r}).close(); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "False", out.stderr
