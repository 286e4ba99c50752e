"""The problem vocabulary: what can go wrong with a job, said once.

Every stage and engine raises its own subclass of :class:`Problem`; the worker
catches that one base and never needs to know which stage or engine spoke. A
problem carries what the failure report (``.error.json``), the share's status page
and the log need:

- ``message``: what went wrong, in words a person who does not program can follow;
- ``hint``: what to do next, in the same words;
- ``retryable``: whether another attempt may succeed (a share coming back, a model
  being fetched) or would fail the same way (a damaged picture, a bad template);
- ``detail``: technical detail for admins (library messages, byte counts, exception
  names), kept out of the plain words;
- ``extra``: further fields for the failure report (e.g. an out-of-memory ladder's
  attempts), merged into ``.error.json`` as they are.

Subclasses set ``retryable`` (and, where they have one, a default ``hint``) as class
attributes, so a raise site reads ``raise BadImage("…", "…")``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Problem(Exception):
    """Base of every expected failure of a job. Unexpected exceptions are bugs."""

    retryable: ClassVar[bool] = False
    default_hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        detail: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})

    def report_extra(self) -> dict[str, Any]:
        """The fields beyond message and hint this problem adds to a failure report."""
        fields: dict[str, Any] = {"detail": self.detail} if self.detail else {}
        fields.update(self.extra)
        return fields

    def report(self) -> dict[str, Any]:
        """The fields this problem contributes to a failure report."""
        fields: dict[str, Any] = {"error": self.message, "hint": self.hint}
        if self.detail:
            fields["detail"] = self.detail
        fields.update(self.extra)
        return fields


class RetryableProblem(Problem):
    """A problem another attempt may not have: the base for transient causes."""

    retryable: ClassVar[bool] = True
