"""The rules in force, kept current while the daemon runs: live reload with a last-good
fallback per file.

``RuleSet.reload`` re-reads the rules folder. Each rule file (and each preset file in
``presets/``) is judged on its own: a valid file replaces its previous version; a file
that does not validate leaves its last good version in force and its problems are
logged once, with file, line, column and field; removing a file removes its rule.
Unchanged files are not even read (their inode, size, mtime and ctime are compared
first) unless their mtime is too recent to trust; read files whose bytes hash the same
are not parsed again.

``RulesWatcher`` decides when to reload: watchdog events on the rules folder and its
``presets/`` (debounced, so an editor's burst of writes is one reload), a periodic
rescan for shares where events never arrive, and explicit requests (SIGHUP).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from .rules import (
    BUILTIN_PRESETS,
    PRESET_NAME,
    LoadedRule,
    Preset,
    RuleFileError,
    RuleProblem,
    drop_conflicts,
    is_rule_file_name,
    load_preset_file,
    load_rule_file,
    preset_files,
    rule_files,
)

log = logging.getLogger(__name__)

# A file modified this recently may change again within the same timestamp tick
# (NFS and SMB keep coarse times, FAT two seconds): its stat is not trusted, it is read.
RACY_NS = 2_000_000_000

KEEPING = "keeping the last good version"
NOT_LOADED = "rule not loaded"

Stamp = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
T = TypeVar("T")


@dataclass
class _Source(Generic[T]):
    """What is known about one rule or preset file."""

    path: Path
    stamp: Stamp | None = None  # a trusted stat of the bytes hashed in `digest`
    digest: str | None = None  # sha256 of the bytes last read; None: unreadable
    empty: bool = False  # the bytes last read were only white space
    key: tuple[str | None, str] | None = None  # (digest, presets) `good`/`problems` are from
    good: T | None = None  # the last version that validated
    problems: tuple[RuleProblem, ...] = ()  # of the current bytes; empty when valid
    reported: tuple[str | None, tuple[str, ...]] = (None, ())  # last logged (digest, problems)


@dataclass(frozen=True)
class ReloadResult:
    """What one reload changed in the rules in force."""

    added: tuple[LoadedRule, ...] = ()
    updated: tuple[LoadedRule, ...] = ()
    removed: tuple[str, ...] = ()
    problems: tuple[RuleProblem, ...] = ()  # newly reported by this reload
    folder_missing: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    @property
    def new_or_changed(self) -> tuple[LoadedRule, ...]:
        return self.added + self.updated


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class RuleSet:
    """The daemon's current rules. ``reload`` from any thread (one runs at a time);
    ``rules`` returns a snapshot that later reloads never change."""

    def __init__(self, rules_dir: Path) -> None:
        self.rules_dir = rules_dir
        self._lock = threading.Lock()
        self._snapshot: tuple[LoadedRule, ...] = ()
        self._rules: dict[Path, _Source[LoadedRule]] = {}
        self._presets: dict[Path, _Source[Preset]] = {}
        self._user_presets: dict[str, tuple[Path, Preset]] = {}
        self._conflicts: frozenset[str] = frozenset()
        self._loaded_once = False
        self._folder_missing = False
        # How often files were read and parsed: tests check that an unchanged folder
        # costs neither.
        self.reads = 0
        self.parses = 0

    @property
    def snapshot(self) -> tuple[LoadedRule, ...]:
        return self._snapshot

    def rules(self) -> list[LoadedRule]:
        """The rules in force now, in file order (a fresh list each call)."""
        return list(self._snapshot)

    # --- reloading ---------------------------------------------------------------

    def reload(self) -> ReloadResult:
        with self._lock:
            first = not self._loaded_once
            self._loaded_once = True
            try:
                os.listdir(self.rules_dir)
            except OSError as exc:
                return self._folder_unreadable(first, exc)
            if self._folder_missing:
                self._folder_missing = False
                log.info("rules folder %s can be read now; reading its rules", self.rules_dir)
            problems: list[RuleProblem] = []
            presets, presets_key = self._reload_presets(problems)
            return self._reload_rules(presets, presets_key, problems)

    def _folder_unreadable(self, first: bool, exc: OSError) -> ReloadResult:
        """A share that is briefly gone must not empty the daemon: the rules stay."""
        if not first and not self._folder_missing:
            log.warning(
                "rules folder %s cannot be read (%s); keeping the %d rule(s) in force "
                "until it is back",
                self.rules_dir,
                exc.strerror or exc,
                len(self._snapshot),
            )
        self._folder_missing = True
        return ReloadResult(folder_missing=True)

    def _listing(self, files: list[Path]) -> list[Path]:
        return [path for path in files if is_rule_file_name(path.name)]

    def _read(self, source: _Source[Any]) -> None:
        """Refresh ``source.digest`` unless a trusted stat says the bytes are the same."""
        try:
            st = os.stat(source.path)
        except OSError:
            st = None
        if st is not None and source.stamp == _stamp(st):
            return
        self.reads += 1
        try:
            data = source.path.read_bytes()
        except OSError:
            source.stamp, source.digest = None, None
            return
        source.digest = hashlib.sha256(data).hexdigest()
        source.empty = not data.strip()
        # The stat was taken before the read, so a stored stamp never claims newer bytes
        # than were hashed; a recent mtime is not trusted at all.
        trusted = st is not None and time.time_ns() - st.st_mtime_ns > RACY_NS
        source.stamp = _stamp(st) if st is not None and trusted else None

    def _reload_presets(self, problems: list[RuleProblem]) -> tuple[dict[str, Preset], str]:
        """Built-in presets plus each preset file's current or last good version."""
        paths = self._listing(preset_files(self.rules_dir))
        self._presets = {p: self._presets.get(p) or _Source[Preset](p) for p in paths}
        effective = dict(BUILTIN_PRESETS)
        user: dict[str, tuple[Path, Preset]] = {}
        fixed: set[str] = set()
        for path in paths:
            source = self._presets[path]
            name = path.stem
            self._read(source)
            blocked = _preset_name_problem(path, effective)
            if blocked is not None:
                source.key, source.good, source.problems = None, None, (blocked,)
            elif source.key != (source.digest, "") or source.digest is None:
                self.parses += 1
                try:
                    source.good, source.problems = _guarded(load_preset_file, path), ()
                except RuleFileError as exc:
                    source.problems = tuple(exc.problems)
                source.key = (source.digest, "")
            if blocked is None and source.good is not None:
                effective[name] = source.good
                user[name] = (path, source.good)
            was_broken = bool(source.reported[1])
            problems.extend(self._report(source, "preset not loaded"))
            if was_broken and not source.problems:
                fixed.add(name)

        for name, (path, preset) in user.items():
            before = self._user_presets.get(name)
            changes = _changes(before[1].model_dump(), preset.model_dump()) if before else []
            if name in fixed:
                log.info("preset %s: fixed, now in force (%s)", name, ", ".join(changes) or path)
            elif before is None:
                log.info("preset %s loaded from %s", name, path)
            elif changes:
                log.info("preset %s updated: %s", name, ", ".join(changes))
        for name, (path, _) in self._user_presets.items():
            if name not in user:
                log.info("preset %s removed (%s was removed)", name, path)
        self._user_presets = user
        canonical = json.dumps({k: v.model_dump() for k, v in effective.items()}, sort_keys=True)
        return effective, hashlib.sha256(canonical.encode()).hexdigest()

    def _reload_rules(
        self, presets: Mapping[str, Preset], presets_key: str, problems: list[RuleProblem]
    ) -> ReloadResult:
        paths = self._listing(rule_files(self.rules_dir))
        self._rules = {p: self._rules.get(p) or _Source[LoadedRule](p) for p in paths}
        fixed: set[Path] = set()
        for path in paths:
            source = self._rules[path]
            self._read(source)
            key = (source.digest, presets_key)
            # Unreadable files are retried each time; their problem is logged once.
            if source.key != key or source.digest is None:
                self.parses += 1
                try:
                    if source.empty:
                        # Valid YAML for a rule of all defaults, but far more often a
                        # save caught half-way (truncated, not yet written): never that.
                        message = "the file is empty; write the rule's fields or remove it"
                        raise RuleFileError([RuleProblem(path, 1, 1, "(file)", message, "read")])
                    loaded = _guarded(lambda p: load_rule_file(p, presets), path)
                    source.good, source.problems = loaded, ()
                except RuleFileError as exc:
                    source.problems = tuple(exc.problems)
                source.key = key
            was_broken = bool(source.reported[1])
            problems.extend(self._report(source, NOT_LOADED))
            if was_broken and not source.problems:
                fixed.add(path)

        candidates = [s.good for s in self._rules.values() if s.good is not None]
        in_force, conflicts = drop_conflicts(candidates)
        reported = frozenset(str(c) for c in conflicts)
        for conflict in conflicts:
            if str(conflict) not in self._conflicts:
                log.error("%s; %s (the first file in sorted order keeps the name)", conflict,
                          NOT_LOADED)
                problems.append(conflict)
        self._conflicts = reported

        result = self._announce(self._snapshot, in_force, fixed, tuple(problems))
        self._snapshot = tuple(in_force)
        return result

    def _report(self, source: _Source[Any], not_loaded: str) -> list[RuleProblem]:
        """Log a file's problems once per change of its bytes or of the problems."""
        now = (source.digest, tuple(str(p) for p in source.problems))
        if now == source.reported:
            return []
        source.reported = now
        outcome = KEEPING if source.good is not None else not_loaded
        for problem in source.problems:
            log.error("%s; %s", problem, outcome)
        return list(source.problems)

    def _announce(
        self,
        old: tuple[LoadedRule, ...],
        new: list[LoadedRule],
        fixed: set[Path],
        problems: tuple[RuleProblem, ...],
    ) -> ReloadResult:
        """Log what changed among the rules in force; the result says the same."""
        before = {r.rule.name: r for r in old}
        after = {r.rule.name: r for r in new}
        added, updated, removed = [], [], []
        for name, loaded in after.items():
            prior = before.get(name)
            is_fixed = loaded.file in fixed
            if prior is None:
                added.append(loaded)
                if is_fixed:
                    log.info("rule %s: fixed, now in force (loaded from %s)", name, loaded.file)
                else:
                    log.info("rule %s loaded from %s", name, loaded.file)
            elif prior != loaded:
                updated.append(loaded)
                changes = _changes(
                    prior.rule.model_dump(mode="json"), loaded.rule.model_dump(mode="json")
                )
                if prior.file != loaded.file:
                    changes.insert(0, f"now from {loaded.file}")
                what = ", ".join(changes) or "reformatted"
                if is_fixed:
                    log.info("rule %s: fixed, now in force (%s)", name, what)
                else:
                    log.info("rule %s updated: %s", name, what)
            elif is_fixed:
                log.info("rule %s: fixed, now in force (the same as before the broken edit)", name)
        for name, loaded in before.items():
            if name in after:
                continue
            removed.append(name)
            source = self._rules.get(loaded.file)
            if source is None:
                reason = f"{loaded.file} was removed"
            elif source.good is not None and source.good.rule.name != name:
                reason = f"{loaded.file} now names rule {source.good.rule.name}"
            else:
                reason = f"{loaded.file} lost the name to another file"
            log.info("rule %s removed (%s)", name, reason)
        return ReloadResult(tuple(added), tuple(updated), tuple(removed), problems)


def _guarded(load: Callable[[Path], T], path: Path) -> T:
    """``load(path)``, with any exception the YAML library lets out (PyYAML's
    constructors raise LookupError for some tagged scalars such as ``!!int``) turned into
    a problem of that file: one bad save must not stop the reload of the others."""
    try:
        return load(path)
    except RuleFileError:
        raise
    except Exception as exc:
        message = f"cannot be read as YAML ({type(exc).__name__}: {exc})"
        raise RuleFileError([RuleProblem(path, 1, 1, "(yaml)", message, "yaml")]) from None


def _preset_name_problem(path: Path, taken: Mapping[str, Preset]) -> RuleProblem | None:
    """A preset is named by its file's stem: it must be a valid name and a new one."""
    name = path.stem
    if not re.match(PRESET_NAME, name):
        return RuleProblem(path, 1, 1, "(file)", "preset names use letters, digits, _ . -")
    if name in taken:
        owner = "built in" if name in BUILTIN_PRESETS else "defined twice (.yaml and .yml)"
        message = f"preset {name!r} is {owner}; rename the file"
        return RuleProblem(path, 1, 1, "(file)", message, "conflict")
    return None


_MISSING = object()


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values that differ, with old and new values."""
    out: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a == b:
            continue
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_changes(a, b, path + "."))
        else:
            out.append(f"{path} {_short(a)} -> {_short(b)}")
    return out


# --- when to reload --------------------------------------------------------------


class _RulesEvents(FileSystemEventHandler):
    """Any change to a rule or preset file, or to the folders, pokes the watcher."""

    def __init__(self, poke: Callable[[], None]) -> None:
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Opens and plain closes are the reloads' own reads: never a reason to reload.
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, event.dest_path]
        names = [os.path.basename(os.fsdecode(p)) for p in paths if p]
        # A folder's own "modified" is any change inside it, rule file or not.
        folder_event = event.is_directory and event.event_type != "modified"
        if folder_event or any(is_rule_file_name(n) for n in names):
            self._poke()


@dataclass
class RulesWatcher:
    """Calls ``reload`` on its own thread: ``debounce`` seconds after the last change
    seen in the rules folder (at most ``max_delay`` after the first), every
    ``interval`` seconds, and at once on ``request(0)``."""

    rules_dir: Path
    reload: Callable[[], object]
    mode: str = "auto"  # auto | events | polling, as watch_mode
    interval: float | None = 30.0  # the safety rescan; None: none
    observe: bool = True
    debounce: float = 0.4
    max_delay: float = 2.0
    poll_interval: float = 2.0
    event_observer: Callable[[], BaseObserver] = Observer
    kind: str = ""  # events | polling | "" (rescans only)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _due: float | None = None
    _first: float | None = None
    _stopping: bool = False
    _thread: threading.Thread | None = None
    _observer: BaseObserver | None = None
    _watches: dict[Path, tuple[ObservedWatch, int]] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set)

    def start(self) -> None:
        if self.observe:
            try:
                self._ensure_observer()
            except Exception:
                log.exception("cannot watch the rules folder; relying on rescans and SIGHUP")
        self._thread = threading.Thread(target=self._run, name="rules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def request(self, delay: float | None = None) -> None:
        """Reload ``delay`` seconds from now (default: the debounce); later requests
        push it back, but never past ``max_delay`` after the first one."""
        with self._cond:
            now = time.monotonic()
            if self._first is None:
                self._first = now
            wait = self.debounce if delay is None else delay
            self._due = min(now + wait, self._first + self.max_delay)
            self._cond.notify_all()

    def _run(self) -> None:
        next_rescan = None if self.interval is None else time.monotonic() + self.interval
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._due is not None and now >= self._due:
                        break
                    if next_rescan is not None and now >= next_rescan:
                        break
                    deadlines = [t for t in (self._due, next_rescan) if t is not None]
                    self._cond.wait(min(deadlines) - now if deadlines else None)
                self._due = self._first = None
            if self.interval is not None:
                next_rescan = time.monotonic() + self.interval
            try:
                self.reload()
            except Exception:
                log.exception("reloading the rules failed; the rules in force stay")
            if self.observe:
                try:
                    self._ensure_observer()
                except Exception:
                    log.exception("cannot watch the rules folder; relying on rescans")

    # --- the observer ------------------------------------------------------------

    def _ensure_observer(self) -> None:
        """Watch the rules folder and ``presets/`` (non-recursively) wherever they exist
        now; a folder created, removed or replaced later is (re)watched after the next
        reload."""
        if self._observer is None:
            if self.mode == "polling":
                self._use_polling()
            else:
                observer = self.event_observer()
                try:
                    observer.start()
                except OSError as exc:
                    return self._events_unavailable(exc)
                self._observer, self.kind = observer, "events"
        assert self._observer is not None
        for folder in (self.rules_dir, self.rules_dir / "presets"):
            try:
                inode = folder.stat().st_ino if folder.is_dir() else None
            except OSError:
                inode = None
            known = self._watches.get(folder)
            if known is not None and known[1] != inode:
                del self._watches[folder]
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(known[0])
            if inode is None or folder in self._watches:
                continue
            try:
                watch = self._observer.schedule(
                    _RulesEvents(self.request), str(folder), recursive=False
                )
            except OSError as exc:
                if self.kind == "events":
                    return self._events_unavailable(exc)
                self._warn_once(
                    str(folder),
                    "cannot watch %s for changes (%s); rules are re-read every %ss and on "
                    "SIGHUP",
                    folder,
                    exc,
                    self.interval,
                )
                continue
            self._watches[folder] = (watch, inode)

    def _events_unavailable(self, exc: OSError) -> None:
        """inotify cannot be had (typically max_user_watches): poll in ``auto`` mode; in
        ``events`` mode rely on the rescans and SIGHUP."""
        if self.mode == "auto":
            self._warn_once(
                "fallback",
                "file events unavailable for the rules folder (%s); watching it by polling "
                "every %.1fs",
                exc,
                self.poll_interval,
            )
            self._use_polling()
            self._ensure_observer()
            return
        self._warn_once(
            "events",
            "file events unavailable for the rules folder (%s); rules are re-read every "
            "%ss and on SIGHUP",
            exc,
            self.interval,
        )
        if self._observer is not None:
            self._observer.stop()
        self._observer, self.kind = None, ""
        self.observe = False

    def _use_polling(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self._watches.clear()
        self._observer = PollingObserver(timeout=self.poll_interval)
        self._observer.start()
        self.kind = "polling"

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
