"""The daemon's last good version of each rule and preset file, kept in ``state_dir``.

The running daemon keeps a broken file's last good version in force; ``rules explain``
runs in another process and must show the same. The live rule set writes what it holds
here (atomically, only when it changes) and ``rules explain`` starts from it. A missing,
unreadable or foreign record is an empty one: explain then sees only the files as they
are, as a daemon started now would.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .rules import LoadedRule, Preset, Rule

log = logging.getLogger(__name__)

FILE_NAME = "rules-in-force.json"
_VERSION = 1


def record_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


@dataclass(frozen=True)
class LastGood:
    """The last version of each file that validated, by file."""

    rules: dict[Path, LoadedRule] = field(default_factory=dict)
    presets: dict[Path, Preset] = field(default_factory=dict)

    def to_json(self, rules_dir: Path) -> str:
        doc = {
            "version": _VERSION,
            "rules_dir": str(rules_dir),
            "rules": [
                {"file": str(path), "rule": loaded.rule.model_dump(mode="json")}
                for path, loaded in sorted(self.rules.items())
            ],
            "presets": [
                {"file": str(path), "preset": preset.model_dump(mode="json")}
                for path, preset in sorted(self.presets.items())
            ],
        }
        return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def read_last_good(path: Path, rules_dir: Path) -> LastGood:
    """The record at ``path`` if it was written for ``rules_dir``; else an empty one."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return LastGood()
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        return LastGood()
    if doc.get("rules_dir") != str(rules_dir):
        return LastGood()
    found = LastGood()
    for entry in _entries(doc, "rules"):
        try:
            file = Path(entry["file"])
            found.rules[file] = LoadedRule(Rule.model_validate(entry["rule"]), file)
        except (KeyError, TypeError, ValidationError):
            continue  # one damaged entry must not hide the others
    for entry in _entries(doc, "presets"):
        try:
            found.presets[Path(entry["file"])] = Preset.model_validate(entry["preset"])
        except (KeyError, TypeError, ValidationError):
            continue
    return found


def _entries(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = doc.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def write_record(path: Path, text: str) -> None:
    """Replace the record at once: a reader sees the old one or the new one, whole. No
    fsync: a record lost in a crash is written again by the next daemon's first reload."""
    fd, temp = tempfile.mkstemp(prefix=".rules-in-force.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class Record:
    """Keeps the record at ``path`` equal to a rule set's last good versions, writing
    only when they change."""

    def __init__(self, path: Path, rules_dir: Path, logger: logging.Logger = log) -> None:
        self.path = path
        self.rules_dir = rules_dir
        self._log = logger
        self._written: str | None = None
        self._warned = False

    def keep(self, last_good: LastGood) -> None:
        text = last_good.to_json(self.rules_dir)
        if text == self._written:
            return
        try:
            write_record(self.path, text)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self._log.warning(
                    "cannot record the rules in force in %s (%s); rules explain will not "
                    "see the last good version of a broken file",
                    self.path,
                    exc.strerror or exc,
                )
            return
        self._written, self._warned = text, False
