"""Intake in-process: real image files, rules loaded from YAML, a real SQLite JobStore."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Layout, make_image
from daemon.intake import Intake, IntakeResult
from daemon.rules import LoadedRule, load_rules
from daemon.store import Job, JobStore

PEOPLE_RULE = """\
name: people
match: {folders: ["people/**"]}
priority: 10
engine: motion
preset: quick
params: {resolution: 256}
"""


@pytest.fixture
def store(layout: Layout) -> Iterator[JobStore]:
    job_store = JobStore(layout.load().database_url)
    yield job_store
    job_store.close()


class Desk:
    """An Intake over the layout's rules folder, recording what it queued."""

    def __init__(self, layout: Layout, store: JobStore) -> None:
        self.layout = layout
        self.store = store
        self.queued: list[Job] = []
        self.rules: list[LoadedRule] = []
        self.reload()
        self.intake = Intake(store, lambda: self.rules, layout.failed, 3, self.queued.append)

    def reload(self) -> None:
        self.rules, problems = load_rules(self.layout.rules)
        assert problems == []

    def take(self, path: Path) -> IntakeResult:
        return self.intake.take(self.layout.inbox, path)


@pytest.fixture
def desk(layout: Layout, store: JobStore) -> Desk:
    return Desk(layout, store)


def test_queued_jobs_carry_rule_hash_and_relative_path(layout: Layout, desk: Desk) -> None:
    layout.rule("people", PEOPLE_RULE)
    desk.reload()
    top = make_image(layout.inbox / "a.jpg")
    nested = make_image(layout.inbox / "people" / "team one" / "b.png", seed=1)

    first, second = desk.take(top), desk.take(nested)

    assert (first.outcome, second.outcome) == ("queued", "queued")
    rules = {loaded.rule.name: loaded for loaded in desk.rules}
    for result, path, relative, rule in [
        (first, top, "a.jpg", "motion"),
        (second, nested, "people/team one/b.png", "people"),
    ]:
        job = desk.store.get(result.job.id)
        assert job is not None
        assert job.state == "queued"
        assert job.relative == relative
        assert job.source == str(path)
        assert job.inbox_root == str(layout.inbox)
        assert job.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert job.size_bytes == path.stat().st_size
        assert job.rule_name == rule
        assert job.rule_file == str(layout.rules / f"{rule}.yaml")
        assert job.rule_hash == rules[rule].rule.content_hash()
        assert job.rule_data["name"] == rule
        assert job.engine == "motion"
        assert (job.attempts, job.max_attempts) == (0, 3)
    assert [job.id for job in desk.queued] == [first.job.id, second.job.id]
    assert desk.store.count_by_state() == {"queued": 2}
    assert layout.files(layout.inbox) == ["a.jpg", "people/team one/b.png"]


def test_the_same_file_taken_twice_is_one_job(layout: Layout, desk: Desk, store: JobStore) -> None:
    path = make_image(layout.inbox / "a.jpg")
    first = desk.take(path)
    again = desk.take(path)
    # A restarted daemon has an empty memory: the database must still know the file.
    after_restart = Desk(layout, store).take(path)

    assert first.outcome == "queued"
    assert again.outcome == "known"
    assert after_restart.outcome == "known"
    assert after_restart.job is not None and after_restart.job.id == first.job.id
    assert len(desk.queued) == 1
    assert store.count_by_state() == {"queued": 1}
    assert layout.files(layout.inbox) == ["a.jpg"]


def test_new_content_at_the_same_path_is_new_work(layout: Layout, desk: Desk) -> None:
    path = make_image(layout.inbox / "a.jpg")
    first = desk.take(path)
    make_image(path, seed=9)
    second = desk.take(path)
    assert (first.outcome, second.outcome) == ("queued", "queued")
    assert first.job.sha256 != second.job.sha256
    assert desk.store.count_by_state() == {"queued": 2}


def test_unmatched_image_stays_and_is_logged_once(
    layout: Layout, desk: Desk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.intake")
    path = make_image(layout.inbox / "anim.gif")  # not in the default patterns

    outcomes = [desk.take(path).outcome for _ in range(3)]

    assert outcomes[0] == "unmatched"
    assert "queued" not in outcomes
    lines = [r.getMessage() for r in caplog.records if "no rule matches" in r.getMessage()]
    assert lines == ["no rule matches anim.gif; it stays in the inbox (add or widen a rule)"]
    assert desk.store.count_by_state() == {}
    assert layout.files(layout.inbox) == ["anim.gif"]
    assert layout.files(layout.failed) == []

    # A rule that matches arrives: after a restart (a fresh Intake), the image is taken.
    layout.rule("gifs", "engine: motion\npreset: quick\nmatch: {patterns: ['*.gif']}\n")
    restarted = Desk(layout, desk.store)
    result = restarted.take(path)
    assert result.outcome == "queued"
    assert result.job.rule_name == "gifs"


def _truncated_jpeg(path: Path) -> None:
    make_image(path, fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "truncated.jpg": (_truncated_jpeg, "damaged or cut short"),
    "empty.jpg": (lambda path: path.write_bytes(b""), "empty"),
    "notes.png": (lambda path: path.write_text("not a picture\n"), "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_is_rejected_to_failed_with_a_reason(
    layout: Layout, desk: Desk, name: str
) -> None:
    write, reason = BAD_FILES[name]
    folder = layout.inbox / "shoot" / "day 1"
    folder.mkdir(parents=True)
    path = folder / name
    write(path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    result = desk.take(path)

    assert result.outcome == "rejected"
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == [f"shoot/day 1/{name}", f"shoot/day 1/{name}.error.json"]
    report = json.loads((layout.failed / "shoot" / "day 1" / f"{name}.error.json").read_text())
    assert reason in report["error"]
    assert report["hint"]
    assert report["attempts"] == 1
    assert report["rule"] == "motion"
    assert report["source"] == f"shoot/day 1/{name}"
    assert report["sha256"] == sha256

    job = desk.store.get(result.job.id)
    assert job is not None
    assert (job.state, job.attempts, job.error, job.hint) == (
        "failed",
        1,
        report["error"],
        report["hint"],
    )
    assert desk.store.count_by_state() == {"failed": 1}
    assert desk.queued == []
    assert desk.take(path).outcome == "vanished"


def test_bad_image_dropped_again_is_rejected_again(layout: Layout, desk: Desk) -> None:
    path = layout.inbox / "notes.png"
    path.write_text("still not a picture\n")
    assert desk.take(path).outcome == "rejected"
    path.write_text("still not a picture\n")
    assert desk.take(path).outcome == "rejected"
    assert layout.files(layout.failed) == [
        "notes-2.png",
        "notes-2.png.error.json",
        "notes.png",
        "notes.png.error.json",
    ]
    assert desk.store.count_by_state() == {"failed": 2}


def test_a_vanished_file_is_not_queued(layout: Layout, desk: Desk) -> None:
    assert desk.take(layout.inbox / "gone.jpg").outcome == "vanished"
    assert desk.store.count_by_state() == {}
