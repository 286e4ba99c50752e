"""The rules in force seen from outside the daemon: the last good versions it records in
state_dir, `rules explain` reading them, and an empty rule file meaning the same to
`rules check` and to the daemon."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conftest import MOTION_RULE, DaemonProcess, Layout, make_image, wait_for
from daemon.cli import main
from daemon.last_good import record_path
from daemon.rules import EMPTY_RULE_FILE
from daemon.ruleset import RuleSet, rules_in_force

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

WIDER = MOTION_RULE.replace("resolution: 256", "resolution: 512")
BROKEN = MOTION_RULE.replace("resolution: 256", "resolution: 512, frames: 999")
FRAMES = "Input should be less than or equal to 32 (got 999)"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def explain(capsys: pytest.CaptureFixture[str], layout: Layout, path: str) -> dict[str, Any]:
    code, out, err = cli(
        capsys, "rules", "explain", "--json", "--config", str(layout.config_file), path
    )
    assert err == ""
    [report] = json.loads(out)
    report["exit"] = code
    return report


def test_a_broken_file_keeps_its_recorded_last_good_version(layout: Layout) -> None:
    settings = layout.load()
    live = RuleSet(settings.rules_dir, record=record_path(settings.state_dir))
    live.reload()
    layout.rule("motion", WIDER)
    live.reload()
    never = layout.rule("never", "priority: high\n")
    path = layout.rule("motion", BROKEN)
    live.reload()

    rules, problems = rules_in_force(settings)
    assert [(r.rule.name, r.rule.resolved().resolution) for r in rules] == [("motion", 512)]
    assert [str(p) for p in problems] == [
        f"{path}:4:35: params.frames: {FRAMES}",
        f"{never}:1:11: priority: Input should be a valid integer, unable to parse string "
        "as an integer (got 'high')",
    ]
    assert rules == live.rules()

    # Without a record (no daemon ever ran here) the broken file is only a problem.
    record_path(settings.state_dir).unlink()
    rules, problems = rules_in_force(settings)
    assert rules == [] and len(problems) == 2

    # A record written for another rules folder is not this one's.
    other = layout.load(rules_dir=str(layout.root / "elsewhere"))
    (layout.root / "elsewhere").mkdir()
    RuleSet(other.rules_dir, record=record_path(settings.state_dir)).reload()
    assert rules_in_force(settings)[0] == []


def test_the_record_is_written_only_when_a_last_good_version_changes(layout: Layout) -> None:
    settings = layout.load()
    record = record_path(settings.state_dir)
    live = RuleSet(settings.rules_dir, record=record)
    live.reload()
    first = record.stat().st_mtime_ns, record.read_text(encoding="utf-8")
    layout.rule("motion", BROKEN)
    live.reload()
    live.reload()
    assert (record.stat().st_mtime_ns, record.read_text(encoding="utf-8")) == first
    layout.rule("motion", WIDER)
    live.reload()
    assert record.read_text(encoding="utf-8") != first[1]
    assert not [p for p in settings.state_dir.iterdir() if p.name.endswith(".tmp")]


def test_explain_shows_the_last_good_version_of_a_broken_file(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = layout.load()
    live = RuleSet(settings.rules_dir, record=record_path(settings.state_dir))
    layout.rule("motion", WIDER)
    live.reload()
    path = layout.rule("motion", BROKEN)
    live.reload()
    report = explain(capsys, layout, "a.jpg")
    assert (report["exit"], report["verdict"]) == (0, "rule motion wins")
    assert report["skipped_rule_files"] == [f"{path}:4:35: params.frames: {FRAMES}"]
    assert report["winner"]["outputs"][0]["params"]["resolution"] == 512

    code, out, _ = cli(capsys, "rules", "explain", "--config", str(layout.config_file), "a.jpg")
    assert code == 0
    assert "  invalid rule files (skipped; a running daemon keeps their last good version):" in (
        out.splitlines()
    )


DaemonFactory = Callable[..., DaemonProcess]


@pytest.mark.slow
def test_explain_agrees_with_the_running_daemon_on_a_broken_file(
    layout: Layout, daemon: DaemonFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = daemon()
    proc.wait_started()
    path = layout.rule("motion", WIDER)
    wait_for(lambda: "rule motion updated" in proc.log, 10)
    layout.rule("motion", BROKEN)
    wait_for(lambda: "keeping the last good version" in proc.log, 10)

    report = explain(capsys, layout, "a.jpg")
    assert report["verdict"] == "rule motion wins"
    assert report["skipped_rule_files"] == [f"{path}:4:35: params.frames: {FRAMES}"]
    assert report["winner"]["outputs"][0]["params"]["resolution"] == 512

    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: (layout.outbox / "a.motion.json").exists(), 30)
    assert proc.stop() == 0
    sidecar = json.loads((layout.outbox / "a.motion.json").read_text(encoding="utf-8"))
    assert sidecar["effective"]["width"] == 512


@pytest.mark.slow
def test_an_empty_rule_file_is_the_same_problem_for_check_and_the_daemon(
    layout: Layout, daemon: DaemonFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = layout.rule("empty", "")
    problem = f"{empty}:1:1: (file): {EMPTY_RULE_FILE}"

    code, out, err = cli(capsys, "rules", "check", "--config", str(layout.config_file))
    assert (code, out) == (4, problem + "\n")
    assert err == "1 rule ok, 1 problem in 1 file\n"

    proc = daemon("--once")
    assert proc.wait() == 0
    assert f"ERROR   daemon.ruleset: {problem}; rule not loaded" in proc.log
    assert "rule motion loaded" in proc.log and "rule empty" not in proc.log


def test_an_empty_rule_file_is_the_same_problem_for_the_live_set(
    layout: Layout, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same, without a daemon process: check's line is the live set's, word for word."""
    caplog.set_level(logging.INFO, logger="daemon.ruleset")
    layout.rule("empty", "\n")
    _, out, _ = cli(capsys, "rules", "check", "--config", str(layout.config_file))
    result = RuleSet(layout.rules).reload()
    assert [str(p) for p in result.problems] == out.splitlines()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{out.strip()}; rule not loaded"]
