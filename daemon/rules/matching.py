"""Which rule an image gets: folder and file-name globs, then priority."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import PurePosixPath

from .models import LoadedRule, Rule


def folder_matches(glob: str, folder: str) -> bool:
    """Match an inbox-relative folder against a glob where ``**`` spans any number of
    folders, none included (so ``people/**`` matches ``people`` and all below it)."""
    return _segments_match(
        [p.lower() for p in glob.split("/") if p], [p.lower() for p in folder.split("/") if p]
    )


def _segments_match(globs: list[str], parts: list[str]) -> bool:
    if not globs:
        return not parts
    head, rest = globs[0], globs[1:]
    if head == "**":
        return any(_segments_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _segments_match(rest, parts[1:])


def rule_matches(rule: Rule, relative: PurePosixPath) -> bool:
    folder = "" if str(relative.parent) == "." else relative.parent.as_posix()
    name = relative.name.lower()
    return any(folder_matches(g, folder) for g in rule.match.folders) and any(
        fnmatch.fnmatchcase(name, p.lower()) for p in rule.match.patterns
    )


def pick_rule(rules: Iterable[LoadedRule], relative: PurePosixPath) -> LoadedRule | None:
    """The matching rule with the highest priority; ties go to the name that sorts first."""
    matching = [r for r in rules if rule_matches(r.rule, relative)]
    if not matching:
        return None
    return min(matching, key=lambda r: (-r.rule.priority, r.rule.name))
