"""The claim loop: one job at a time, from a queue row to published files (or failed/).

claim -> plan -> render -> verify -> publish -> finish. Every expected failure is a
:class:`~daemon.problems.Problem`, handled in one place (``failure.job_failed``):
permanent ones (the input can never work) are reported at once, retryable ones (disk
full, encoder hiccup, model not there yet, unexpected error) back off and try again
until ``max_attempts``. The parts of a job live in modules named for them: ``plan``,
``render``, ``outputs``, ``original``, ``failure``, ``reports``, ``recovery``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import admin, failure, outputs, recovery
from .attempts import RENDER_DONE, RENDER_STARTED, rendering
from .breaker import GPU_ENGINES, DeviceBreaker, DeviceFault
from .capabilities import ALL_ENGINES, Capabilities
from .config import Settings
from .control import JobCancelled
from .digests import sha256_of
from .engines import Engine, JobInterrupted
from .images import read_facts
from .mounts import MountGate, ShareUnavailable, job_roots
from .ownership import identity
from .plan import context_for, plan_output, source_pixels_needed
from .problems import Problem, RetryableProblem
from .publish import describe_os_error
from .registration import queue_state
from .render import engine_options, model_location, render_video
from .rules import Rule
from .scope import Scope
from .sidecar import build_sidecar
from .store import Job, JobStore, LeaseLost
from .tables import DaemonState

__all__ = ["Worker", "engine_options", "model_location", "source_pixels_needed"]

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 10.0
# How long a job waits before looking again for a folder that is unavailable.
SHARE_WAIT_SECONDS = 5.0


class PermanentFailure(Problem):
    """The job can never succeed as queued (its image left the inbox, it crashed i2vd
    on every attempt, it made working GPUs fault ``gpu_fault_limit`` times)."""


class Bug(RetryableProblem):
    """An exception nobody expected: retried, since it may not recur, and logged with
    its traceback."""

    default_hint = "tell whoever looks after i2vd: this is a fault in i2vd, the log has details"


@dataclass
class Worker:
    settings: Settings
    store: JobStore
    owner: str  # "host:pid", the lease holder's name
    stop: threading.Event = field(default_factory=threading.Event)
    engines: dict[str, Engine] = field(default_factory=dict)
    # Only jobs of this engine: the extra workers that run motion jobs side by side.
    only_engine: str | None = None
    current: Job | None = None
    # What this daemon claims on a shared queue (None: every job in the queue).
    can_run: Capabilities | None = None
    breaker: DeviceBreaker = field(default_factory=DeviceBreaker)
    # Told of each claimed job and each step, for the watchdog, status and metrics.
    on_claim: Callable[[Job], None] = lambda job: None
    on_step: Callable[[Job, float], None] = lambda job, done: None
    # Told when the job's engine starts loading a model (named): the service manager
    # and the watchdog allow for a load, which can take minutes.
    on_load: Callable[[Job, str], None] = lambda job, model: None
    on_end: Callable[[Job], None] = lambda job: None
    # Engines whose jobs must not start now (i2vd pause, schedule windows).
    holding: Callable[[], frozenset[str]] = frozenset
    # Whether each folder is there (an unmounted share is not "files deleted").
    gate: MountGate | None = None
    _last_progress_write: float = 0.0
    _last_progress_log: float = 0.0

    @property
    def scope(self) -> Scope:
        return Scope(self.settings, self.store, self.owner)

    def run_once(self, now: float) -> Job | None:
        """Claim and run one job; None when nothing is runnable."""
        job = self.store.claim(self.owner, now, self.settings.lease_seconds, self._claimable())
        if job is None or job.id is None:
            return None
        self.current = job
        self.on_claim(job)
        self._last_progress_write = self._last_progress_log = time.monotonic()
        try:
            self._run(job)
        finally:
            self.current = None
            self.on_end(job)
        return self.store.get(job.id)

    def _claimable(self) -> Capabilities | None:
        """What to claim now: only ``only_engine``'s jobs on an extra worker, and no GPU
        job while the circuit breaker is open."""
        can_run = self.can_run
        if self.only_engine is not None:
            every = can_run or Capabilities(ALL_ENGINES)
            can_run = every.without(frozenset(every.engines) - {self.only_engine})
        held = self.holding()  # paused, or outside an engine's schedule window
        if not self.breaker.allows_gpu(time.monotonic()):
            held = held | GPU_ENGINES
        if not held:
            return can_run
        return (can_run or Capabilities(ALL_ENGINES)).without(held)

    def heartbeat(self, now: float) -> None:
        job = self.current
        if job is not None and job.id is not None:
            self.store.heartbeat(job.id, self.owner, now, self.settings.lease_seconds)

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
        scope = self.scope
        rule: Rule | None = None
        work_file = self.settings.work_dir / f"job-{job.id}.mp4"
        try:
            rule = Rule.model_validate(job.rule_data)
            if self._waits_for_share(job):
                return  # nothing is decided from a folder that is not there
            if recovery.finish_interrupted_publish(scope, job, rule):
                return
            if job.attempts > job.max_attempts:
                # Shutdowns refund their attempt, so only crashes got it this far.
                job.attempts = job.max_attempts
                raise PermanentFailure(
                    f"i2vd stopped while making this video, {job.max_attempts} times in a "
                    "row (it crashed, was stopped by force, or the computer lost power)",
                    "the picture may be too much for this computer: ask whoever looks after "
                    "i2vd to check the log around those times, then move the image back into "
                    "the inbox to try again",
                )
            self._process(scope, job, rule, work_file)
            if self.breaker.faulted and job.engine in GPU_ENGINES:
                self.breaker.success()
                # No longer faulted: back to what the queue says.
                self.store.daemons.heartbeat(self.owner, queue_state(self.store), "")
                log.info("job %d: the GPU works again", job.id)
        except DeviceFault as exc:
            self._device_fault(scope, job, rule, exc.reason)
        except LeaseLost:
            # Another daemon runs the job now: its row and its outputs are not ours.
            log.warning("job %d: its lease ran out and another daemon took it over", job.id)
        except JobCancelled as exc:
            outputs.discard_partial(scope, job)
            if self.store.cancel(job.id, time.time(), str(exc), owner=self.owner):
                where = admin.set_aside(self.store, self.settings, job)
                log.info("job %d cancelled by an administrator; image: %s", job.id, where)
        except JobInterrupted as exc:
            outputs.discard_partial(scope, job)
            self.store.requeue_interrupted(job.id, owner=self.owner)
            why = f"({exc})" if str(exc) else "by shutdown"
            log.info("job %d interrupted %s; back in the queue", job.id, why)
        except outputs.Superseded as exc:
            outputs.discard_partial(scope, job)
            self.store.cancel(job.id, time.time(), str(exc), owner=self.owner)
            log.info("job %d cancelled: %s", job.id, exc)
        except Problem as exc:
            if not self._waits_for_share(job):
                failure.job_failed(scope, job, rule, exc)
        except OSError as exc:
            if not self._waits_for_share(job):
                problem = describe_os_error(exc, Path(exc.filename or job.source))
                failure.job_failed(scope, job, rule, problem)
        except Exception as exc:
            log.exception("job %d: unexpected error", job.id)
            bug = Bug(
                "something went wrong inside i2vd itself", detail=f"{type(exc).__name__}: {exc}"
            )
            failure.job_failed(scope, job, rule, bug)
        finally:
            work_file.unlink(missing_ok=True)

    def _process(self, scope: Scope, job: Job, rule: Rule, work_file: Path) -> None:
        assert job.id is not None
        started = time.time()
        source = Path(job.source)
        try:
            # Identity first: a replacement after this point shows at publish time.
            read_as = identity(source)
            data = source.read_bytes()
        except FileNotFoundError:
            raise PermanentFailure(
                f"{job.relative} is no longer in the inbox", "drop the image again"
            ) from None
        if sha256_of(data) != job.sha256:
            raise outputs.Superseded(
                f"{job.relative} was replaced by new content after it was queued"
            )
        relative = PurePosixPath(job.relative)
        context = context_for(
            rule, relative, dt.datetime.now(), read_facts(data), job.text, job.variant
        )
        plan = plan_output(rule, relative, self.settings.outbox, context, job.variant, Path.exists)
        dest = str(plan.fate.dest) if plan.fate.dest else None
        self.store.plan_outputs(job.id, str(plan.video), str(plan.sidecar), dest, owner=self.owner)

        done = outputs.reusable(scope, job)
        if done is not None:
            self._require_shares(job)
            log.info("job %d: same image and rule as job %d; reusing its video", job.id, done.id)
            document = outputs.duplicate_sidecar(scope, job, rule, plan, done, started)
            assert done.video_path is not None
            video = Path(done.video_path)
            outputs.publish(scope, job, rule, plan, video, read_as, document, duplicate_of=done)
        else:
            self._mark_progress(job, RENDER_STARTED)  # from here a crash is the picture's
            rendered = render_video(
                self.settings,
                self.engines,
                rule,
                plan,
                data,
                work_file,
                lambda progress: self._checkpoint(job, progress),
                lambda model: self._loading(job, model),
            )
            self._mark_progress(job, RENDER_DONE)  # encoded: the crash window closes
            timings = {
                "queued": started - job.created_at,
                "load": rendered.clip.load_seconds,
                "generate": rendered.generate_seconds,
                "encode": rendered.encode_seconds,
            }
            document = build_sidecar(
                job,
                rule,
                plan.prompt,
                plan.negative_prompt,
                rendered.requested,
                rendered.clip,
                timings,
                plan.outputs,
            )
            self._require_shares(job)
            outputs.publish(scope, job, rule, plan, work_file, read_as, document)
        timings = document["timings"]
        log.info(
            "job %d done in %.2fs (queued %.2fs, generate %.2fs, encode %.2fs) -> %s",
            job.id,
            time.time() - started,
            timings.get("queued", 0.0),
            timings.get("generate", 0.0),
            timings.get("encode", 0.0),
            plan.video,
        )

    def _device_fault(self, scope: Scope, job: Job, rule: Rule | None, reason: str) -> None:
        """The GPU failed: the job goes back without using an attempt, and this daemon
        takes no GPU job for a while (see breaker.py).

        The fault counts against the job only when the GPU was working when the job
        started on it (no fault in a row before this one; a fresh daemon's GPU counts
        as working): faults of a GPU already faulting are the GPU's. A job whose
        counted faults reach ``gpu_fault_limit`` is an image that breaks GPUs, and
        fails instead of going round every daemon for ever."""
        assert job.id is not None
        outputs.discard_partial(scope, job)
        counted = not self.breaker.faulted  # read before this fault is recorded
        limit = self.settings.gpu_fault_limit
        faults = self.store.hand_back_after_device_fault(job.id, self.owner, counted, limit)
        self.breaker.fault(reason, time.monotonic())
        self.store.daemons.heartbeat(self.owner, DaemonState.FAULTED, reason)
        if faults is None:
            fate = "another daemon had taken the job over"
        elif faults.cap_reached:
            fate = f"the job fails: the image faulted a working GPU {faults.counted} times"
        elif counted:
            fate = (
                f"the job is back in the queue (device fault {faults.counted} of {limit} on "
                "a working GPU)"
            )
        else:
            fate = "the job is back in the queue (not counted: this GPU was already faulting)"
        log.error(
            "job %d: the GPU failed (%s); %s. This daemon takes no GPU job for %.0fs "
            "(fault %d in a row; it restarts at %d)",
            job.id,
            reason,
            fate,
            self.breaker.cooldown,
            self.breaker.in_a_row,
            self.breaker.limit,
        )
        if faults is not None and faults.cap_reached:
            problem = PermanentFailure(
                "the graphics card failed each time it tried to make this video, on "
                f"{faults.counted} tries on a card that was otherwise working",
                "the picture may trigger a fault in the graphics driver: try a smaller size "
                "or another rule, or ask whoever looks after i2vd to update the driver; to "
                f"try again: i2vd retry {job.id}",
                detail=f"device faults on a GPU that was working when the job started: "
                f"{faults.counted} of {limit}; the last: {reason} (each earlier one is in "
                "the log of the daemon that met it)",
                extra={"device_faults": faults.counted},
            )
            failure.job_failed(scope, job, rule, problem)

    def _loading(self, job: Job, model: str) -> None:
        """Called by an engine before it loads a model, which can take minutes. Once
        the daemon is stopping, no load begins: the job goes back to the queue now,
        instead of holding up the stop for the load's length."""
        if self.stop.is_set():
            raise JobInterrupted()
        self.on_load(job, model)

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
            self._mark_progress(job, rendering(round(done, 3)))
        if now - self._last_progress_log >= PROGRESS_LOG_SECONDS:
            self._last_progress_log = now
            log.info("job %d: %.0f%% done", job.id, 100 * done)

    def _mark_progress(self, job: Job, progress: float) -> None:
        """Progress in the job row, which also tells crash recovery whether the picture
        was being worked on (``attempts``)."""
        assert job.id is not None
        self.store.heartbeat(job.id, self.owner, None, self.settings.lease_seconds, progress)

    # --- shares ------------------------------------------------------------------

    def _require_shares(self, job: Job) -> None:
        """Before publishing: never write into an empty mountpoint or a folder made
        anew where a renamed one was."""
        if self.gate is not None and not self.gate.all_available(job_roots(job, self.settings)):
            raise ShareUnavailable(f"a folder {job.relative} needs is unavailable")

    def _waits_for_share(self, job: Job) -> bool:
        """True while a folder the job needs (its inbox, the outbox, the failed folder)
        is unavailable: the job goes back to wait, its attempt handed back, its partial
        outputs kept for the retry to finish from what provably exists. The gate says
        once which folder and what to check."""
        if self.gate is None or self.gate.all_available(job_roots(job, self.settings)):
            return False
        assert job.id is not None
        self.store.postpone(job.id, time.time() + SHARE_WAIT_SECONDS, owner=self.owner)
        log.debug("job %d waits for an unavailable folder", job.id)
        return True
