"""From a stable path to a queued job: check the image, hash it, pick its rule, enqueue.

Idempotent: the same file content at the same path is queued once, however many
events and rescans report it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

from .companions import (
    CompanionProblem,
    Companions,
    companion_paths,
    is_companion,
    read_companions,
)
from .digests import sha256_file, sha256_of
from .images import BadImage, check_image
from .reports import clear_stale_reports, failure_report, quarantine_original
from .rules import LoadedRule, Rule, pick_rule
from .store import PENDING, Job, JobState, JobStore

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What intake made of a path."""

    QUEUED = "queued"  # one job per output, queued now
    KNOWN = "known"  # already queued or handled: nothing new
    UNMATCHED = "unmatched"  # no rule matches: it stays in the inbox
    UNREADABLE = "unreadable"  # the service user cannot read it
    REJECTED = "rejected"  # not a usable image (or companion file): reported in failed/
    VANISHED = "vanished"  # gone before it could be read
    COMPANION = "companion"  # a .txt/.yaml, read with its image, never on its own


@dataclass(frozen=True)
class IntakeResult:
    outcome: Outcome
    job: Job | None = None
    jobs: tuple[Job, ...] = ()  # every job queued (one per variant)


def still_in_inbox(job: Job | None) -> bool:
    """True when ``job`` accounts for the file now at its path: it is pending, or it
    ended but could not move the file away (taking it again would loop forever).
    Any other file at the path is a new drop, including the same image dropped again."""
    if job is None:
        return False
    return job.state in PENDING or job.source_stuck


class Intake:
    def __init__(
        self,
        store: JobStore,
        rules: Callable[[], list[LoadedRule]],
        failed_dir: Path,
        max_attempts: int,
        on_queued: Callable[[Job], None] = lambda job: None,
        inbox_name: Callable[[Path], str] = str,
    ) -> None:
        self.store = store
        self.rules = rules
        self.failed_dir = failed_dir
        self.max_attempts = max_attempts
        self.on_queued = on_queued
        # Jobs record the inbox by name (hosts mount it at different paths).
        self.inbox_name = inbox_name
        # path -> ((size, mtime_ns), job id or None) already dealt with, so a rescan
        # costs a stat (and a primary-key lookup), not a read and a hash.
        self._handled: dict[Path, tuple[tuple[int, int], int | None]] = {}

    def retain(self, present: set[Path]) -> None:
        """Forget files no longer in the inbox, so the memory stays bounded by its size."""
        self._handled = {path: seen for path, seen in self._handled.items() if path in present}

    def forget_unmatched(self) -> None:
        """Forget files no rule matched, so the next scan tries them against new rules."""
        self._handled = {p: seen for p, seen in self._handled.items() if seen[1] is not None}

    def take(self, root: Path, path: Path) -> IntakeResult:
        try:
            stat = path.stat()
        except OSError:
            return IntakeResult(Outcome.VANISHED)
        fingerprint = (stat.st_size, stat.st_mtime_ns)
        cached = self._handled.get(path)
        if cached is not None and cached[0] == fingerprint:
            job = self.store.get(cached[1]) if cached[1] is not None else None
            if cached[1] is None or still_in_inbox(job):
                return IntakeResult(Outcome.KNOWN, job)
        if is_companion(path):
            return IntakeResult(Outcome.COMPANION)  # read with its image, never on its own
        relative = PurePosixPath(path.relative_to(root).as_posix())

        loaded = pick_rule(self.rules(), relative)
        if loaded is None:
            self._handled[path] = (fingerprint, None)
            log.info("no rule matches %s; it stays in the inbox (add or widen a rule)", relative)
            return IntakeResult(Outcome.UNMATCHED)

        try:
            sha256 = sha256_file(path)
        except FileNotFoundError:
            return IntakeResult(Outcome.VANISHED)
        except OSError as exc:
            self._handled[path] = (fingerprint, None)
            log.warning(
                "cannot read %s (%s); it stays in the inbox until it changes or "
                "i2vd restarts: give the service user read access",
                relative,
                exc.strerror,
            )
            return IntakeResult(Outcome.UNREADABLE)
        known = self.store.job_for_file(str(path), sha256)
        kept = known is not None and known.state == JobState.DONE and known.source_stuck
        if still_in_inbox(known) and not kept:
            self._handled[path] = (fingerprint, known.id if known else None)
            return IntakeResult(Outcome.KNOWN, known)

        # Taken again after failing (moved back by hand): its old report goes.
        for report in clear_stale_reports(self.failed_dir, relative.as_posix()):
            log.info("%s is taken again: removed its earlier report %s", relative, report)
        job = self._new_job(root, path, relative, sha256, stat.st_size, loaded)
        try:
            check_image(path)
            companions = read_companions(path)
        except FileNotFoundError:
            return IntakeResult(Outcome.VANISHED)
        except (BadImage, CompanionProblem) as exc:
            job = self._reject(job, path, exc)
            self._handled[path] = (fingerprint, job.id)
            return IntakeResult(Outcome.REJECTED, job)

        planned = self._variants(job, loaded.rule, companions)
        if kept and known is not None and self._same_work(known, planned):
            # A kept original (`source: keep`) is remembered by content; it is new work
            # only once its rule or its .txt/.yaml changed.
            self._handled[path] = (fingerprint, known.id)
            return IntakeResult(Outcome.KNOWN, known)
        outcome = self.store.enqueue_drop(planned)
        jobs = tuple(outcome.jobs)
        self._handled[path] = (fingerprint, jobs[0].id)
        if not outcome.new:  # another daemon watching this inbox queued it first
            return IntakeResult(Outcome.KNOWN, jobs[0])
        for queued in jobs:
            variant = f" variant {queued.variant}" if queued.variant else ""
            log.info(
                "job %d queued: %s -> rule %s%s (%s)",
                queued.id,
                relative,
                queued.rule_name,
                variant,
                queued.engine,
            )
            self.on_queued(queued)
        return IntakeResult(Outcome.QUEUED, jobs[0], jobs)

    def _same_work(self, known: Job, planned: list[Job]) -> bool:
        done = {known.rule_hash, *(j.rule_hash for j in self.store.siblings(known))}
        return {j.rule_hash for j in planned} <= done

    @staticmethod
    def _variants(job: Job, rule: Rule, companions: Companions) -> list[Job]:
        """One job per output. Each snapshots its own rule (the image's overrides and
        its variant laid over) and the companion text: identity covers all of it."""
        drop = uuid.uuid4().hex
        out = []
        for variant, variant_rule in companions.apply(rule):
            rule_hash = variant_rule.content_hash()
            if variant or companions.text or companions.overrides:
                # Two variants differing only by name are still two outputs asked for.
                identity = f"{rule_hash}:{variant}:{companions.fingerprint()}"
                rule_hash = sha256_of(identity.encode())[:16]
            # A new row each (SQLModel's model_copy would share the ORM state).
            fields = job.model_dump(exclude={"id"})
            fields.update(
                drop=drop,
                variant=variant,
                text=companions.text,
                companions_json=json.dumps([str(f) for f in companions.files]),
                rule_hash=rule_hash,
                rule_json=json.dumps(variant_rule.model_dump(mode="json")),
            )
            out.append(Job(**fields))
        return out

    def _new_job(
        self,
        root: Path,
        path: Path,
        relative: PurePosixPath,
        sha256: str,
        size: int,
        loaded: LoadedRule,
    ) -> Job:
        rule = loaded.rule
        return Job(
            source=str(path),
            inbox_root=str(root),
            inbox=self.inbox_name(root),
            relative=relative.as_posix(),
            sha256=sha256,
            size_bytes=size,
            rule_name=rule.name,
            rule_hash=rule.content_hash(),
            rule_file=str(loaded.file),
            rule_json=json.dumps(rule.model_dump(mode="json")),
            engine=rule.engine,
            priority=rule.priority,
            max_attempts=self.max_attempts,
        )

    def _reject(self, job: Job, path: Path, exc: BadImage | CompanionProblem) -> Job:
        """A file that is not a usable image goes straight to failed/, with the reason."""
        now = time.time()
        job.state, job.attempts, job.finished_at = JobState.FAILED, 1, now
        job.error, job.hint = str(exc), exc.hint
        job = self.store.enqueue(job)
        report = failure_report(job, exc.message, exc.hint, **exc.report_extra())
        dest = quarantine_original(self.store, job, self.failed_dir, report, companion_paths(path))
        if dest is not None:
            log.warning("job %d failed: %s: %s -> %s", job.id, job.relative, exc, dest)
        return job
