"""Files beside an image that belong to it: ``<stem>.txt`` (text for the prompt) and
``<stem>.yaml`` (per-image overrides). They are read when the image is queued and
travel with it into the outbox or the failed folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .problems import Problem
from .prompts import MAX_TEXT_CHARS, clean_text
from .rules import ImageOverrides, Rule, RuleFileError, load_overrides

COMPANION_SUFFIXES = (".txt", ".yaml", ".yml")
# A prompt file larger than this is not a prompt; refusing it keeps memory bounded.
MAX_TEXT_BYTES = 64 * 1024


class CompanionProblem(Problem):
    """A file beside the image is unusable; the image fails with this message."""


def is_companion(path: Path) -> bool:
    """True for a ``.txt``/``.yaml`` file: never an image, never a job of its own."""
    return path.suffix.lower() in COMPANION_SUFFIXES


def companion_paths(image: Path) -> list[Path]:
    """The companion files that exist beside ``image`` (same stem, any case of suffix)."""
    try:
        siblings = list(image.parent.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in siblings
        if p.stem == image.stem and p != image and is_companion(p) and p.is_file()
    )


@dataclass(frozen=True)
class Companions:
    text: str = ""
    overrides: ImageOverrides | None = None
    files: list[Path] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Changes when anything read from the companions changes: part of job identity,
        so editing a ``.txt`` and dropping the image again makes new work."""
        data = self.text + "\0" + (self.overrides.model_dump_json() if self.overrides else "")
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def apply(self, rule: Rule) -> list[tuple[str, Rule]]:
        """The (variant, rule) pairs this image becomes: overrides first, then variants."""
        if self.overrides is not None:
            rule = rule.with_overrides(self.overrides)
        return rule.expand_variants()


def read_companions(image: Path) -> Companions:
    """Read ``<stem>.txt`` and ``<stem>.yaml`` beside ``image``; raise CompanionProblem
    for one that cannot be used (the image fails; the daemon carries on)."""
    files = companion_paths(image)
    text, overrides = "", None
    for path in files:
        if path.suffix.lower() == ".txt":
            text = _read_text(path)
        else:
            if overrides is not None:
                raise CompanionProblem(
                    f"both {image.stem}.yaml and {image.stem}.yml are beside the image",
                    "keep one of them, then drop the image again",
                )
            try:
                overrides = load_overrides(path)
            except RuleFileError as exc:
                # Each problem is file:line:column: field: what is wrong, in the
                # person's own file: what they need to fix it, so it stays in the words.
                problems = "; ".join(str(p) for p in exc.problems)
                raise CompanionProblem(
                    f"the settings file beside the image has a mistake: {problems}",
                    "fix the image's .yaml (README: Per-image overrides), then drop the "
                    "image and its .yaml again",
                ) from None
    return Companions(text, overrides, files)


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise CompanionProblem(
                f"{path.name} is too long for a prompt: larger than {MAX_TEXT_BYTES // 1024} KiB",
                f"keep it to a prompt (i2vd uses at most {MAX_TEXT_CHARS} characters), then "
                "drop the image again",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise CompanionProblem(
            f"i2vd could not read {path.name}, the text beside the image",
            "check that the file opens, or ask whoever looks after i2vd to let it read this "
            "folder; then drop the image again",
            detail=str(exc.strerror or exc),
        ) from None
    try:
        return clean_text(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CompanionProblem(
            f"{path.name} is not plain text i2vd can read (it is not UTF-8)",
            "save it as plain text in UTF-8 (most editors offer this under Save as), then "
            "drop the image again",
        ) from None
