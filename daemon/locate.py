"""Where a path given to ``rules explain`` is: which inbox, which inbox-relative path,
and whether the watcher would ever take it (the watcher's own name test)."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .companions import is_companion
from .problems import Problem
from .watch import DEFAULT_RESERVED, is_candidate_name


class PathProblem(Problem):
    """The path cannot be placed in any inbox."""


@dataclass(frozen=True)
class Place:
    inbox: Path
    relative: PurePosixPath

    @property
    def path(self) -> Path:
        return self.inbox / self.relative


def locate(arg: str, inboxes: Sequence[Path], cwd: Path) -> Place:
    """The inbox and inbox-relative path ``arg`` means: a path inside an inbox (absolute
    or from the working directory), else an inbox-relative path, looked up in the inbox
    that holds it or, for an image not there yet, the first inbox. A file that exists
    is preferred over a reading under which it would not."""
    given = Path(arg).expanduser()
    full = given if given.is_absolute() else cwd / given
    # Resolve the folder only: a symbolic link as the image is reported, not followed.
    full = full.parent.resolve() / full.name
    direct = next(
        (
            Place(inbox, PurePosixPath(full.relative_to(inbox).as_posix()))
            for inbox in inboxes
            if full.is_relative_to(inbox) and full != inbox
        ),
        None,
    )
    if given.is_absolute() or (direct is not None and os.path.lexists(full)):
        if direct is None:
            raise PathProblem(f"{arg} is outside every inbox ({_inbox_list(inboxes)})")
        return direct
    relative = PurePosixPath(given.as_posix())
    if ".." in relative.parts or str(relative) in ("", "."):
        if direct is not None:
            return direct
        raise PathProblem(f"{arg} is not a path inside an inbox ({_inbox_list(inboxes)})")
    for inbox in inboxes:
        if os.path.lexists(inbox / relative):
            return Place(inbox, relative)
    if direct is not None:
        return direct
    if full.exists():
        raise PathProblem(
            f"{arg} is outside every inbox ({_inbox_list(inboxes)}); to see what a drop "
            "would do, give the path it would have inside an inbox"
        )
    return Place(inboxes[0], relative)


def _inbox_list(inboxes: Sequence[Path]) -> str:
    return ", ".join(str(i) for i in inboxes)


def ignored_because(place: Place, reserved: Collection[str] = DEFAULT_RESERVED) -> str | None:
    """Why the watcher would never take this path, or None."""
    for part in place.relative.parts:
        if part.lower() in reserved:
            return f"{part!r} is the name of i2vd's status page, which is never a job"
        if not is_candidate_name(part):
            return (
                f"{part!r} is a hidden, temporary or partial name: the watcher waits for it "
                "to be renamed"
            )
    if place.path.is_symlink():
        return "it is a symbolic link, which the watcher never follows"
    if is_companion(place.path):
        return "a .txt/.yaml file belongs to the image with its stem; it is never a job"
    return None


__all__ = ["PathProblem", "Place", "ignored_because", "locate"]
