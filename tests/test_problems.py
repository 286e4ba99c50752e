"""The problem vocabulary: every expected failure is a Problem that says whether a retry
may help, and the worker knows no engine's own exceptions."""

from __future__ import annotations

import ast

import pytest

from conftest import REPO
from daemon.companions import CompanionProblem
from daemon.engines import EngineUnavailable
from daemon.engines.diffusion import ModelUnavailable, OutOfMemory
from daemon.explain import PathProblem
from daemon.images import BadImage
from daemon.problems import Problem
from daemon.prompts import TemplateProblem
from daemon.publish import PublishError
from daemon.video import VideoError


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        (BadImage, False),
        (CompanionProblem, False),
        (TemplateProblem, False),
        (EngineUnavailable, False),
        (OutOfMemory, False),
        (PathProblem, False),
        (ModelUnavailable, True),
        (PublishError, True),
        (VideoError, True),
    ],
)
def test_every_expected_failure_is_a_problem(kind: type[Problem], retryable: bool) -> None:
    problem = kind("it broke", "do this")
    assert isinstance(problem, Problem) and problem.retryable is retryable
    assert (str(problem), problem.message, problem.hint) == ("it broke", "it broke", "do this")
    assert problem.report() == {"error": "it broke", "hint": "do this"}


def test_default_hints_and_report_details() -> None:
    assert "fix the template" in TemplateProblem("bad template").hint
    assert "check the log" in VideoError("no frames").hint
    ladder = [{"attempt": 1, "result": "out of memory"}]
    oom = OutOfMemory("out of memory", "lower the resolution", ladder)
    assert oom.backoff == ladder
    assert oom.report() == {
        "error": "out of memory",
        "hint": "lower the resolution",
        "backoff": ladder,
    }
    detailed = PublishError("no space", "free some", detail="ENOSPC on /out")
    assert detailed.report_extra() == {"detail": "ENOSPC on /out"}


def test_the_worker_imports_no_engine_exceptions() -> None:
    """Job code catches Problem; only engines/ may name an engine's own classes."""
    job_modules = (
        "worker",
        "failure",
        "outputs",
        "original",
        "ownership",
        "recovery",
        "reports",
        "render",
    )
    for name in job_modules:
        tree = ast.parse((REPO / "daemon" / f"{name}.py").read_text(encoding="utf-8"))
        imported = [
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        ]
        assert not [m for m in imported if "diffusion" in m], (name, imported)
