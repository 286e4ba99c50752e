"""The rules in force, kept current while the daemon runs: live reload with a last-good
fallback per file.

``RuleSet.reload`` re-reads the rules folder. Each rule file (and each preset file in
``presets/``) is judged on its own: a valid file replaces its previous version; a file
that does not validate leaves its last good version in force and its problems are
logged once, with file, line, column and field; removing a file removes its rule.
Unchanged files are not even read (their inode, size, mtime and ctime are compared
first) unless their mtime is too recent to trust; read files whose bytes hash the same
are not parsed again. Files are read with the one loader (``daemon.rules``) that
``rules check`` uses: this module adds the cache and the last good versions only.

The daemon records the last good versions in ``state_dir`` (``daemon.last_good``);
``rules_in_force`` starts from that record, so ``rules explain`` sees a broken file the
way the running daemon does. ``RulesWatcher`` (``daemon.rules_watcher``) decides when to
reload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .config import Settings
from .last_good import LastGood, Record, read_last_good, record_path
from .rules import (
    BUILTIN_PRESETS,
    LoadedRule,
    Preset,
    RuleFileError,
    RuleProblem,
    drop_conflicts,
    parse_preset,
    parse_rule,
    preset_files,
    preset_name_problem,
    read_file,
    rule_files,
)
from .rules_watcher import RulesWatcher

__all__ = ["ReloadResult", "RuleSet", "RulesWatcher", "rules_in_force"]

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
    data: bytes = b""  # the bytes last read
    unreadable: tuple[RuleProblem, ...] = ()  # why the last read failed
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
    ``rules`` returns a snapshot that later reloads never change.

    ``record``: where to keep the last good versions for ``rules explain`` (the daemon
    passes its state folder's); ``start_from``: last good versions to begin with;
    ``logger``: where problems and changes are told."""

    def __init__(
        self,
        rules_dir: Path,
        record: Path | None = None,
        start_from: LastGood | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.rules_dir = rules_dir
        self._record = None if record is None else Record(record, rules_dir, logger)
        self._log = logger
        self._lock = threading.Lock()
        self._snapshot: tuple[LoadedRule, ...] = ()
        self._rules: dict[Path, _Source[LoadedRule]] = {}
        self._presets: dict[Path, _Source[Preset]] = {}
        self._user_presets: dict[str, tuple[Path, Preset]] = {}
        self._conflicts: frozenset[str] = frozenset()
        self._loaded_once = False
        self._folder_missing = False
        if start_from is not None:
            for path, loaded in start_from.rules.items():
                self._rules[path] = _Source(path, good=loaded)
            for path, preset in start_from.presets.items():
                self._presets[path] = _Source(path, good=preset)

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
                self._log.info("rules folder %s can be read now; reading its rules", self.rules_dir)
            problems: list[RuleProblem] = []
            presets, presets_key = self._reload_presets(problems)
            result = self._reload_rules(presets, presets_key, problems)
            if self._record is not None:
                self._record.keep(self.last_good())
            return result

    def last_good(self) -> LastGood:
        """The last good version of each rule and preset file now in the folder."""
        return LastGood(
            {p: s.good for p, s in self._rules.items() if s.good is not None},
            {p: s.good for p, s in self._presets.items() if s.good is not None},
        )

    def _folder_unreadable(self, first: bool, exc: OSError) -> ReloadResult:
        """A share that is briefly gone must not empty the daemon: the rules stay."""
        if not first and not self._folder_missing:
            self._log.warning(
                "rules folder %s cannot be read (%s); keeping the %d rule(s) in force "
                "until it is back",
                self.rules_dir,
                exc.strerror or exc,
                len(self._snapshot),
            )
        self._folder_missing = True
        return ReloadResult(folder_missing=True)

    def _read(self, source: _Source[Any]) -> None:
        """Refresh ``source.digest`` unless a trusted stat says the bytes are the same."""
        try:
            st = os.stat(source.path)
        except OSError:
            st = None
        if st is not None and source.stamp == _stamp(st):
            return
        try:
            data = read_file(source.path)
        except RuleFileError as exc:
            source.stamp, source.digest, source.unreadable = None, None, tuple(exc.problems)
            return
        source.digest, source.data = hashlib.sha256(data).hexdigest(), data
        # The stat was taken before the read, so a stored stamp never claims newer bytes
        # than were hashed; a recent mtime is not trusted at all.
        trusted = st is not None and time.time_ns() - st.st_mtime_ns > RACY_NS
        source.stamp = _stamp(st) if st is not None and trusted else None

    def _reload_presets(self, problems: list[RuleProblem]) -> tuple[dict[str, Preset], str]:
        """Built-in presets plus each preset file's current or last good version."""
        paths = preset_files(self.rules_dir)
        self._presets = {p: self._presets.get(p) or _Source[Preset](p) for p in paths}
        effective = dict(BUILTIN_PRESETS)
        user: dict[str, tuple[Path, Preset]] = {}
        fixed: set[str] = set()
        for path in paths:
            source = self._presets[path]
            name = path.stem
            self._read(source)
            blocked = preset_name_problem(path, effective)
            if blocked is not None:
                source.key, source.good, source.problems = None, None, (blocked,)
            elif source.key != (source.digest, "") or source.digest is None:
                self._parse(source, parse_preset)
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
                self._log.info(
                    "preset %s: fixed, now in force (%s)", name, ", ".join(changes) or path
                )
            elif before is None:
                self._log.info("preset %s loaded from %s", name, path)
            elif changes:
                self._log.info("preset %s updated: %s", name, ", ".join(changes))
        for name, (path, _) in self._user_presets.items():
            if name not in user:
                self._log.info("preset %s removed (%s was removed)", name, path)
        self._user_presets = user
        canonical = json.dumps({k: v.model_dump() for k, v in effective.items()}, sort_keys=True)
        return effective, hashlib.sha256(canonical.encode()).hexdigest()

    def _reload_rules(
        self, presets: Mapping[str, Preset], presets_key: str, problems: list[RuleProblem]
    ) -> ReloadResult:
        paths = rule_files(self.rules_dir)
        self._rules = {p: self._rules.get(p) or _Source[LoadedRule](p) for p in paths}
        fixed: set[Path] = set()
        for path in paths:
            source = self._rules[path]
            self._read(source)
            key = (source.digest, presets_key)
            # Unreadable files are retried each time; their problem is logged once.
            if source.key != key or source.digest is None:
                self._parse(source, lambda p, data: parse_rule(p, data, presets))
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
                self._log.error(
                    "%s; %s (the first file in sorted order keeps the name)", conflict, NOT_LOADED
                )
                problems.append(conflict)
        self._conflicts = reported

        result = self._announce(self._snapshot, in_force, fixed, tuple(problems))
        self._snapshot = tuple(in_force)
        return result

    @staticmethod
    def _parse(source: _Source[T], parse: Callable[[Path, bytes], T]) -> None:
        """The file's current bytes replace its last good version if they validate."""
        if source.digest is None:
            source.problems = source.unreadable
            return
        try:
            source.good, source.problems = parse(source.path, source.data), ()
        except RuleFileError as exc:
            source.problems = tuple(exc.problems)

    def _report(self, source: _Source[Any], not_loaded: str) -> list[RuleProblem]:
        """Log a file's problems once per change of its bytes or of the problems."""
        now = (source.digest, tuple(str(p) for p in source.problems))
        if now == source.reported:
            return []
        source.reported = now
        outcome = KEEPING if source.good is not None else not_loaded
        for problem in source.problems:
            self._log.error("%s; %s", problem, outcome)
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
                    self._log.info(
                        "rule %s: fixed, now in force (loaded from %s)", name, loaded.file
                    )
                else:
                    self._log.info("rule %s loaded from %s", name, loaded.file)
            elif prior != loaded:
                updated.append(loaded)
                changes = _changes(
                    prior.rule.model_dump(mode="json"), loaded.rule.model_dump(mode="json")
                )
                if prior.file != loaded.file:
                    changes.insert(0, f"now from {loaded.file}")
                what = ", ".join(changes) or "reformatted"
                if is_fixed:
                    self._log.info("rule %s: fixed, now in force (%s)", name, what)
                else:
                    self._log.info("rule %s updated: %s", name, what)
            elif is_fixed:
                self._log.info(
                    "rule %s: fixed, now in force (the same as before the broken edit)", name
                )
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
            self._log.info("rule %s removed (%s)", name, reason)
        return ReloadResult(tuple(added), tuple(updated), tuple(removed), problems)


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


# Explain tells problems in its own report; its process has no log of its own.
_QUIET = logging.Logger("i2vd.rules_in_force")
_QUIET.disabled = True


def rules_in_force(settings: Settings) -> tuple[list[LoadedRule], list[RuleProblem]]:
    """The rules a daemon with ``settings`` has in force, and every problem of every
    file: for a broken file, its last good version as the daemon recorded it (a file
    never good is not loaded). Reads the rules folder and the record; writes nothing."""
    start = read_last_good(record_path(settings.state_dir), settings.rules_dir)
    ruleset = RuleSet(settings.rules_dir, start_from=start, logger=_QUIET)
    # A fresh set reports every problem on its first reload.
    problems = list(ruleset.reload().problems)
    return ruleset.rules(), problems
