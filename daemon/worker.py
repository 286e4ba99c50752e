"""The claim loop: one job at a time, from a queue row to published files (or failed/).

Failures are sorted into *permanent* (the input can never work: quarantine now) and
*retryable* (disk full, encoder hiccup, unexpected error: back off and try again
until ``max_attempts``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .config import Settings
from .engines import (
    Engine,
    EngineOptions,
    EngineUnavailable,
    JobInterrupted,
    RenderRequest,
    get_engine,
)
from .engines.diffusion import ModelUnavailable, OutOfMemory
from .images import BadImage, decode_image, read_facts, sha256_of
from .prompts import TemplateProblem, render, safe_output_name, template_context
from .publish import (
    PublishError,
    describe_os_error,
    free_path,
    free_stem,
    move_companions,
    place,
    quarantine,
    write_json,
)
from .rules import Rule
from .sidecar import build_sidecar, params_block
from .sizing import frame_size
from .store import Job, JobState, JobStore
from .video import VideoError, encode_mp4, verify

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 10.0
# Below this much free scratch space, an encoder failure is reported as a full disk.
LOW_DISK_BYTES = 64 * 2**20


def source_pixels_needed(rule: Rule) -> int:
    """The shorter source side that still gives every output pixel a source pixel (the
    motion engine's tightest window is 1/zoom of the frame). Larger JPEGs are decoded
    at a reduced scale down to this."""
    params = rule.resolved()
    longest = max(frame_size(params.resolution, rule.aspect, 4, 1))  # widest aspect allowed
    zoom = rule.motion.zoom if rule.engine == "motion" else 1.0
    return math.ceil(longest * zoom)


def model_location(model: str | None, base_dir: Path) -> str | None:
    """A rule's ``model`` as the engine loads it. Paths are relative to the config
    file's folder, never to wherever the daemon was started: ``./x``, ``../x``, ``~/x``
    and ``a/b/c`` are always folders; ``owner/name`` is that folder when it exists
    there, else a hub id such as ``ali-vilab/i2vgen-xl``."""
    if not model:
        return model
    path = Path(model).expanduser()
    if path.is_absolute():
        return str(path)
    local = model.startswith(("./", "../", "~")) or model.count("/") > 1
    if local or (base_dir / path).is_dir():
        return str(base_dir / path)
    return model


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        device=settings.device,
        state_dir=settings.state_dir,
        idle_seconds=settings.model_idle_seconds,
    )


class Superseded(Exception):
    """The file at the job's path now holds other content, which intake queues on its
    own; this job ends without touching the file."""


class PermanentFailure(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class _Plan:
    folder: Path
    video: Path
    sidecar: Path
    # What happens to the original: the rule's `source` (move/keep/delete), or "leave"
    # while other variants of the same drop still need it.
    source_action: str
    source_dest: Path | None  # where "move" puts it
    prompt: str
    negative_prompt: str
    source_identity: tuple[int, int, int]  # (inode, size, mtime_ns) when it was read


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _sidecar_field(path: Path, key: str) -> Any:
    """A field of a sidecar on disk, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _outputs(plan: _Plan) -> list[str]:
    names = [plan.video.name, plan.sidecar.name]
    return [*names, plan.source_dest.name] if plan.source_dest else names


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class Worker:
    settings: Settings
    store: JobStore
    owner: str  # "host:pid", the lease holder's name
    stop: threading.Event = field(default_factory=threading.Event)
    engines: dict[str, Engine] = field(default_factory=dict)
    current: Job | None = None
    # Told of each claimed job and each step, for the watchdog, status and metrics.
    on_claim: Callable[[Job], None] = lambda job: None
    on_step: Callable[[Job, float], None] = lambda job, done: None
    _last_progress_write: float = 0.0
    _last_progress_log: float = 0.0

    def run_once(self, now: float) -> Job | None:
        """Claim and run one job; None when nothing is runnable."""
        job = self.store.claim(self.owner, now, self.settings.lease_seconds)
        if job is None:
            return None
        self.current = job
        self.on_claim(job)
        self._last_progress_write = self._last_progress_log = time.monotonic()
        try:
            self._run(job)
        finally:
            self.current = None
        return self.store.get(job.id)  # type: ignore[arg-type]

    def heartbeat(self, now: float) -> None:
        job = self.current
        if job is not None and job.id is not None:
            self.store.heartbeat(job.id, self.owner, now, self.settings.lease_seconds)

    # --- one job ---------------------------------------------------------------

    def _run(self, job: Job) -> None:
        assert job.id is not None
        log.info(
            "job %d running: %s (rule %s, attempt %d/%d)",
            job.id,
            job.relative,
            job.rule_name,
            job.attempts,
            job.max_attempts,
        )
        work_file = self.settings.work_dir / f"job-{job.id}.mp4"
        try:
            if self._finish_interrupted_publish(job):
                return
            if job.attempts > job.max_attempts:
                # Shutdowns refund their attempt, so only crashes got it this far.
                job.attempts = job.max_attempts
                raise PermanentFailure(
                    f"i2vd stopped (crash, kill or power loss) during each of this job's "
                    f"{job.max_attempts} attempts",
                    "the image may crash the decoder or exhaust memory: check the log around "
                    "those attempts, then move the image back into the inbox to try again",
                )
            self._process(job, work_file)
        except JobInterrupted:
            self._discard_partial(job)
            self.store.requeue_interrupted(job.id, owner=self.owner)
            log.info("job %d interrupted by shutdown; back in the queue", job.id)
        except Superseded as exc:
            self._discard_partial(job)
            self.store.cancel(job.id, time.time(), str(exc), owner=self.owner)
            log.info("job %d cancelled: %s", job.id, exc)
        except OutOfMemory as exc:
            # What the ladder tried goes into the error report: the user's next step.
            self._failed(job, str(exc), exc.hint, retryable=False, backoff=exc.backoff)
        except (PermanentFailure, BadImage, EngineUnavailable, TemplateProblem) as exc:
            self._failed(job, str(exc), exc.hint, retryable=False)
        except (PublishError, ModelUnavailable) as exc:
            self._failed(job, str(exc), exc.hint, retryable=True)
        except VideoError as exc:
            self._failed(job, *self._explain_encoder_failure(exc), retryable=True)
        except OSError as exc:
            problem = describe_os_error(exc, Path(exc.filename or job.source))
            self._failed(job, str(problem), problem.hint, retryable=True)
        except Exception as exc:
            log.exception("job %d: unexpected error", job.id)
            self._failed(
                job,
                f"unexpected error: {exc!r}",
                "this is a bug in i2vd; the log has the traceback",
                retryable=True,
            )
        finally:
            work_file.unlink(missing_ok=True)

    def _process(self, job: Job, work_file: Path) -> None:
        assert job.id is not None
        started = time.time()
        rule = Rule.model_validate(job.rule_data)
        source = Path(job.source)
        try:
            # Identity first: a replacement after this point shows at publish time.
            read_as = _identity(source)
            data = source.read_bytes()
        except FileNotFoundError:
            raise PermanentFailure(
                f"{job.relative} is no longer in the inbox", "drop the image again"
            ) from None
        if sha256_of(data) != job.sha256:
            raise Superseded(f"{job.relative} was replaced by new content after it was queued")
        plan = self._plan(job, rule, source, data, read_as)
        dest = str(plan.source_dest) if plan.source_dest else None
        self.store.plan_outputs(job.id, str(plan.video), str(plan.sidecar), dest, owner=self.owner)

        original = self._reusable(job)
        if original is not None:
            self._publish_duplicate(job, plan, original, source, started)
            return

        engine = get_engine(rule.engine, self.engines, engine_options(self.settings))
        image = decode_image(data, min_side=source_pixels_needed(rule))
        params = rule.resolved()
        width, height = frame_size(params.resolution, rule.aspect, image.width, image.height)
        requested = params_block(params, width, height)
        request = RenderRequest(
            image=image,
            params=params,
            aspect=rule.aspect,
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            model=model_location(rule.model, self.settings.base_dir),
            motion=rule.motion,
            diffusion=rule.diffusion,
            checkpoint=lambda done: self._checkpoint(job, done),
        )
        t_generate = time.time()
        clip = engine.render(request)
        t_encode = time.time()
        self._checkpoint(job, 1.0)
        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        encode_mp4(clip.frames, work_file, clip.fps)
        verify(work_file, clip.width, clip.height, clip.fps, len(clip.frames))
        t_publish = time.time()

        timings = {
            "queued": started - job.created_at,
            "load": clip.load_seconds,
            "generate": t_encode - t_generate - clip.load_seconds,
            "encode": t_publish - t_encode,
        }
        document = build_sidecar(
            job, rule, plan.prompt, plan.negative_prompt, requested, clip, timings, _outputs(plan)
        )
        self._publish(job, plan, work_file, source, document, started)

    def _plan(
        self,
        job: Job,
        rule: Rule,
        source: Path,
        data: bytes,
        source_identity: tuple[int, int, int],
    ) -> _Plan:
        relative = PurePosixPath(job.relative)
        facts = read_facts(data)
        context = template_context(
            relative, rule.name, dt.datetime.now(), facts, job.text, job.variant
        )
        stem = safe_output_name(render(rule.output.name, context, "output.name"))
        folder = self.settings.outbox / relative.parent
        stem = free_stem(folder, stem, [".mp4", ".json"])
        action = self._source_action(job, rule)
        return _Plan(
            folder=folder,
            video=folder / f"{stem}.mp4",
            sidecar=folder / f"{stem}.json",
            source_action=action,
            source_dest=free_path(folder, source.name) if action == "move" else None,
            prompt=render(rule.prompt, context, "prompt"),
            negative_prompt=render(rule.negative_prompt, context, "negative_prompt"),
            source_identity=source_identity,
        )

    def _publish(
        self,
        job: Job,
        plan: _Plan,
        video_file: Path,
        source: Path,
        document: dict[str, Any],
        started: float,
        duplicate_of: Job | None = None,
    ) -> None:
        """Video, then sidecar, then the original: each appears whole or not at all."""
        assert job.id is not None
        try:
            # A duplicate hard-links the original's video: same bytes, no second copy.
            linked = duplicate_of is not None
            # The inode is recorded before and after placing (a cross-filesystem copy
            # makes a new one): only that file is this job's to remove after a failure.
            self.store.record_video(job.id, video_file.stat().st_ino, owner=self.owner)
            place(video_file, plan.video, keep_src=linked, link=linked)
            self.store.record_video(job.id, plan.video.stat().st_ino, owner=self.owner)
            document["timings"]["total"] = round(time.time() - job.created_at, 4)
            write_json(plan.sidecar, document)
            if _identity(source) != plan.source_identity:
                raise Superseded(f"{job.relative} was replaced while its video was made")
            self._settle_source(job, plan.source_action, plan.source_dest)
        except OSError as exc:
            # For a rename the destination (filename2) is what the user must fix.
            culprit = exc.filename2 or exc.filename or plan.folder
            raise describe_os_error(exc, Path(culprit)) from exc
        now = time.time()
        duplicate_id = duplicate_of.id if duplicate_of is not None else None
        if not self.store.finish(job.id, now, document["timings"], duplicate_id, owner=self.owner):
            # Our lease ran out mid-job and another daemon took the job: its row is theirs.
            log.warning("job %d: published, but its lease had been taken over", job.id)
        self._after_done(job, plan.source_action)
        log.info(
            "job %d done in %.2fs (queued %.2fs, generate %.2fs, encode %.2fs) -> %s",
            job.id,
            now - started,
            document["timings"].get("queued", 0.0),
            document["timings"].get("generate", 0.0),
            document["timings"].get("encode", 0.0),
            plan.video,
        )

    # --- the original ------------------------------------------------------------

    def _after_done(self, job: Job, action: str) -> None:
        """What happens to the original once the job is recorded done."""
        if action == "delete":
            self._delete_source(job)
        elif action == "leave":
            self._settle_drop(job, Rule.model_validate(job.rule_data))

    @staticmethod
    def _source_action(job: Job, rule: Rule) -> str:
        """What this job's publish does with the original. A job of a drop with
        several variants leaves it: the drop settles it once all its jobs ended
        (``_settle_drop``). ``delete`` happens only after the job is recorded done,
        so a failure after it can never discard the only copy's outputs."""
        return "leave" if job.variant else rule.source

    def _settle_source(self, job: Job, action: str, dest: Path | None) -> None:
        """Move or keep the original (and the companion files beside it)."""
        companions = [Path(name) for name in job.companions]
        if action == "move":
            if dest is None:
                dest = free_path(self.settings.outbox / PurePosixPath(job.relative).parent,
                                 Path(job.source).name)
            place(Path(job.source), dest)
            self._move_companions(job, companions, dest)
        elif action == "keep":
            self.store.mark_source_left(job.source, job.sha256)

    def _delete_source(self, job: Job) -> None:
        """``source: delete``, once the job is recorded done: the original (only if it
        is still the content this job read) and its companion files."""
        source = Path(job.source)
        try:
            if self._is_copy_of_source(source, job):
                source.unlink()
            for path in job.companions:
                Path(path).unlink(missing_ok=True)
        except OSError as exc:
            self.store.mark_source_left(job.source, job.sha256)
            log.error("job %d: could not delete %s: %s; it stays in the inbox and is not "
                      "taken again until it changes", job.id, job.relative, exc)

    def _settle_drop(self, job: Job, rule: Rule) -> None:
        """The last job of a drop to end takes care of the original: the rule's
        ``source`` if any variant succeeded, else failed/ with that job's report."""
        if not job.drop or not job.variant or not self.store.settle_drop(job.drop):
            return
        if not self._is_copy_of_source(Path(job.source), job):
            return  # gone, or a new picture under its name, which intake queues itself
        jobs = [self.store.get(job.id) or job, *self.store.siblings(job)]  # type: ignore[arg-type]
        if any(j.state == JobState.DONE for j in jobs):
            if rule.source == "delete":
                self._delete_source(job)
                return
            try:
                self._settle_source(job, rule.source, None)
            except OSError as exc:
                self.store.mark_source_left(job.source, job.sha256)
                log.error("job %d: could not %s the original %s: %s; it stays in the inbox",
                          job.id, rule.source, job.relative, exc)
            return
        relative = PurePosixPath(job.relative)
        folder = self.settings.failed_dir / relative.parent
        latest = jobs[0]  # this job's row as just recorded, with its error
        report = {
            "error": latest.error,
            "hint": latest.hint,
            "attempts": latest.attempts,
            "rule": job.rule_name,
            "source": job.relative,
            "sha256": job.sha256,
            "job": job.id,
            "variants": {j.variant: j.error for j in jobs},
        }
        try:
            dest = quarantine(Path(job.source), folder, report)
            self._move_companions(job, [Path(name) for name in job.companions], dest)
        except OSError as exc:
            self.store.mark_source_left(job.source, job.sha256)
            log.error("job %d: could not move %s to %s: %s", job.id, relative, folder, exc)
            return
        log.warning("every variant of %s failed -> %s", relative, dest)

    def _move_companions(self, job: Job, companions: list[Path], image_dest: Path) -> None:
        """The .txt/.yaml follow the image; failing to move them never fails the job
        (their content is in the sidecar)."""
        try:
            move_companions(companions, image_dest)
        except OSError as exc:
            log.warning("job %d: could not move %s: %s", job.id, [str(c) for c in companions], exc)

    # --- duplicates --------------------------------------------------------------

    def _reusable(self, job: Job) -> Job | None:
        """A finished job with the same identity whose video and sidecar are still the
        ones it published (same inode, sidecar of the same image): never reuse a file
        that merely has the old name."""
        for done in self.store.find_done(job.sha256, job.rule_name, job.rule_hash, exclude=job.id):
            if done.drop and done.drop == job.drop:
                continue  # another output of this very drop, never a copy to reuse
            if (
                done.video_path
                and done.sidecar_path
                and _inode(Path(done.video_path)) == done.video_inode
                and _sidecar_field(Path(done.sidecar_path), "sha256") == job.sha256
            ):
                return done
        return None

    def _publish_duplicate(
        self, job: Job, plan: _Plan, original: Job, source: Path, started: float
    ) -> None:
        assert original.video_path and original.sidecar_path
        original_video = Path(original.video_path)
        document = json.loads(Path(original.sidecar_path).read_text(encoding="utf-8"))
        document.update(
            source=job.relative,
            variant=job.variant or None,
            source_handling=Rule.model_validate(job.rule_data).source,
            outputs=_outputs(plan),
            duplicate_of=original_video.relative_to(self.settings.outbox).as_posix(),
            job=job.id,
            timings={
                "queued": round(started - job.created_at, 4),
                "load": 0.0,
                "generate": 0.0,
                "encode": 0.0,
            },
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        log.info("job %d: same image and rule as job %d; reusing its video", job.id, original.id)
        self._publish(job, plan, original_video, source, document, started, duplicate_of=original)

    # --- failure and recovery ------------------------------------------------------

    def _checkpoint(self, job: Job, done: float) -> None:
        """Called by engines between frames or steps: stop if asked, report progress.

        Progress reaches the job row at most once a second (each write is a synced
        commit) and the log at most every ``PROGRESS_LOG_SECONDS``.
        """
        if self.stop.is_set():
            raise JobInterrupted()
        self.on_step(job, done)
        assert job.id is not None
        now = time.monotonic()
        if now - self._last_progress_write >= 1.0:
            self._last_progress_write = now
            self.store.heartbeat(
                job.id, self.owner, time.time(), self.settings.lease_seconds, round(done, 3)
            )
        if now - self._last_progress_log >= PROGRESS_LOG_SECONDS:
            self._last_progress_log = now
            log.info("job %d: %.0f%% done", job.id, 100 * done)

    def _finish_interrupted_publish(self, job: Job) -> bool:
        """A crash mid-publish: complete it if everything landed, else remove our partials."""
        if not job.video_path:
            return False
        assert job.id is not None
        video, sidecar = Path(job.video_path), Path(job.sidecar_path or "")
        moved, source = Path(job.source_dest or ""), Path(job.source)
        ours = _inode(video) == job.video_inode and _sidecar_field(sidecar, "job") == job.id
        if ours and job.source_dest and moved.is_file():
            if source.exists() and self._is_copy_of_source(moved, job):
                source.unlink()  # the crash fell between placing the original and unlinking it
            completed = not source.exists()
            if completed:
                self._move_companions(job, [Path(name) for name in job.companions], moved)
        elif ours and not job.source_dest:
            # Keep, delete or a variant: the sidecar's presence says the publish got
            # that far; what follows "done" is redone after marking it.
            rule = Rule.model_validate(job.rule_data)
            action = self._source_action(job, rule)
            if action == "keep":
                self.store.mark_source_left(job.source, job.sha256)
            self.store.finish(job.id, time.time(), {}, owner=self.owner)
            log.info("job %d: its publish had completed before a restart; marked done", job.id)
            self._after_done(job, action)
            return True
        else:
            completed = False
        if completed:
            self.store.finish(job.id, time.time(), {}, owner=self.owner)
            log.info("job %d: its publish had completed before a restart; marked done", job.id)
            return True
        self._discard_partial(job)
        return False

    def _discard_partial(self, job: Job) -> None:
        """Remove what this job published before failing: only files that are provably
        its own (recorded inode, sidecar naming this job, a copy of its original)."""
        current = self.store.get(job.id) if job.id is not None else None
        if current is None or not current.video_path:
            return
        source, moved = Path(current.source), Path(current.source_dest or "")
        if current.source_dest and moved.exists() and not source.exists():
            return  # the original already moved: the publish is complete, keep it
        video, sidecar = Path(current.video_path), Path(current.sidecar_path or "")
        leftovers = [
            video if _inode(video) == current.video_inode else None,
            sidecar if _sidecar_field(sidecar, "job") == current.id else None,
            moved if current.source_dest and self._is_copy_of_source(moved, current) else None,
        ]
        for path in leftovers:
            if path is None:
                continue
            try:
                path.unlink()
            except OSError as exc:
                # Its folder may be gone or be a file now; the retry plans afresh.
                log.warning("job %d: could not remove %s: %s", current.id, path, exc)
        self.store.plan_outputs(current.id, None, None, None, owner=self.owner)  # type: ignore[arg-type]

    @staticmethod
    def _is_copy_of_source(path: Path, job: Job) -> bool:
        """``path`` holds this job's original: a hard link to it, or a full copy."""
        source = Path(job.source)
        try:
            # A hard link to the original is a copy; the original's own path is not
            # proof of anything (a new picture may have been dropped under its name).
            if path != source and source.exists() and os.path.samefile(path, source):
                return True
            return (
                path.stat().st_size == job.size_bytes and sha256_of(path.read_bytes()) == job.sha256
            )
        except OSError:
            return False

    def _failed(
        self,
        job: Job,
        error: str,
        hint: str,
        retryable: bool,
        backoff: list[dict[str, Any]] | None = None,
    ) -> None:
        assert job.id is not None
        self._discard_partial(job)
        now = time.time()
        if retryable and job.attempts < job.max_attempts:
            delay = self.settings.retry_delay_seconds * 2 ** (job.attempts - 1)
            self.store.fail(job.id, now, error, hint, retry_at=now + delay, owner=self.owner)
            log.warning(
                "job %d attempt %d/%d failed: %s; retrying in %.0fs",
                job.id,
                job.attempts,
                job.max_attempts,
                error,
                delay,
            )
            return
        if retryable:
            hint = (
                f"{hint}, then move the image back into the inbox (i2vd gave up after "
                f"{job.attempts} attempts)"
            )
        self.store.fail(job.id, now, error, hint, retry_at=None, owner=self.owner)
        self._quarantine(job, error, hint, backoff)

    def _variant_failed(self, job: Job, report: dict[str, Any]) -> None:
        """One variant of several failed: its report goes to failed/ on its own; the
        original is settled by the drop's last job (``_settle_drop``)."""
        relative = PurePosixPath(job.relative)
        folder = self.settings.failed_dir / relative.parent
        try:
            write_json(free_path(folder, f"{relative.name}.{job.variant}.error.json"), report)
        except OSError as exc:
            log.error("job %d: cannot write its error report to %s: %s", job.id, folder, exc)
        log.warning("job %d (variant %s) failed: %s: %s", job.id, job.variant, relative,
                    report["error"])
        self._settle_drop(job, Rule.model_validate(job.rule_data))

    def _explain_encoder_failure(self, exc: VideoError) -> tuple[str, str]:
        """A full scratch disk makes ffmpeg write a broken file: say that, not 'encoder'."""
        work_dir = self.settings.work_dir
        try:
            free = shutil.disk_usage(work_dir).free
        except OSError:
            free = None
        if free is not None and free < LOW_DISK_BYTES:
            return (
                f"only {free // 2**20} MiB free on the disk holding {work_dir} ({exc})",
                "free disk space there, or point state_dir at a larger disk",
            )
        return str(exc), "ffmpeg failed; its message is above and in the log"

    def _quarantine(
        self, job: Job, error: str, hint: str, backoff: list[dict[str, Any]] | None = None
    ) -> None:
        source = Path(job.source)
        relative = PurePosixPath(job.relative)
        report: dict[str, Any] = {
            "error": error,
            "hint": hint,
            "attempts": job.attempts,
            "rule": job.rule_name,
            "variant": job.variant or None,
            "source": job.relative,
            "sha256": job.sha256,
            "job": job.id,
        }
        if backoff:
            report["backoff"] = backoff
        if job.variant:
            self._variant_failed(job, report)
            return
        if not self._is_copy_of_source(source, job):
            # Gone, or replaced by new content that intake queues as a job of its own.
            log.error("job %d failed: %s: %s", job.id, relative, error)
            return
        try:
            dest = quarantine(source, self.settings.failed_dir / relative.parent, report)
            self._move_companions(job, [Path(name) for name in job.companions], dest)
        except OSError as exc:
            assert job.id is not None
            self.store.mark_source_stuck(job.id)
            log.error(
                "job %d failed: %s: %s; it stays in the inbox because moving it to "
                "%s failed too (%s); it is not retried until it changes",
                job.id,
                relative,
                error,
                self.settings.failed_dir,
                exc,
            )
            return
        log.warning(
            "job %d failed after %d attempt(s): %s: %s -> %s",
            job.id,
            job.attempts,
            relative,
            error,
            dest,
        )
