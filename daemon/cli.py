"""The ``i2vd`` command: thin over the library; domain errors become one clear message."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .job_states import JobState
from .names import ReadableNames
from .queue_settings import NeedsFullCheck, QueueSettings, SettingsError, load_queue_settings

if TYPE_CHECKING:
    from .config import Settings

# Imports here stay light: the admin verbs answer in a fraction of a second, so
# pydantic (the full settings), the rules' models and the ORM are imported only by
# the verbs that need them.

# 0 and 1 come from the service (1: --once saw a failure); the others are decided here.
EXIT_CONFIG, EXIT_STARTUP = 2, 3
JOB_STATES = tuple(state.value for state in JobState)
# The verbs that work on the queue (admin.py); `doctor` is not one of them.
ADMIN_VERBS = ("status", "jobs", "show", "retry", "cancel", "pause", "resume")
# `rules check`: one code per cause; when several occur, the lowest wins (syntax first).
EXIT_RULES_SYNTAX, EXIT_RULES_SCHEMA, EXIT_RULES_CONFLICT = 4, 5, 6

CHECK_EPILOG = """\
Every problem is printed on stdout as FILE:LINE:COLUMN: FIELD: MESSAGE, one per line;
a one-line summary goes to stderr. Templates are checked too (syntax, unknown
variables and filters).

exit codes:
  0  every rule and preset is valid (also for a rules folder with no rule files,
     with a warning: every image would stay in the inbox)
  2  the rules folder does not exist, or the settings are invalid
  4  a file is not valid YAML, cannot be read, or is empty
  5  a rule or preset does not validate (unknown field, bad value, bad template)
  6  a conflict: two rules with the same name, or a preset named like a built-in one
When several kinds of problems occur, the lowest code among them wins.
"""

EXPLAIN_EPILOG = """\
PATH is an image inside an inbox (absolute or from the working directory), there or
not yet, or an inbox-relative path such as people/anna.jpg (looked up in the inbox
that has it, else the first inbox). Nothing is generated, queued or moved.

exit codes:
  0  every path has a winning rule and nothing that would fail its job
  1  some path has no winning rule, lies outside every inbox, or would fail (an
     unreadable image, a broken .txt/.yaml beside it, a template that cannot render)
  2  the settings are invalid, or the rules folder does not exist
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video hot-folder daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="watch the inboxes and process images")
    _config_option(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="process what is in the inboxes now, wait for the queue to drain, and exit "
        "(0 when every job succeeded, 1 otherwise)",
    )

    rules = verbs.add_parser("rules", help="check rule files; explain which rule an image gets")
    what = rules.add_subparsers(dest="rules_verb", required=True, metavar="ACTION")
    check = what.add_parser(
        "check",
        help="validate every rule and preset file",
        description="Validate every rule file (DIR/*.yaml) and preset file\n"
        "(DIR/presets/*.yaml) the way the daemon loads them.",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="rules folder (default: the settings' rules_dir; given DIR, no settings are read)",
    )
    _config_option(check)
    explain = what.add_parser(
        "explain",
        help="show which rule each image gets, and what it would make",
        description="Show, for each image path, which rule wins and why the others do not,\n"
        "the rendered prompts, the parameters, the frame size, the output names and\n"
        "where the original goes.",
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("paths", nargs="+", metavar="PATH", help="image path (see below)")
    explain.add_argument("--json", action="store_true", help="one JSON document (a list)")
    _config_option(explain)
    _admin_verbs(verbs)
    return parser


ADMIN_EPILOG = """\
Works on the queue's database, so it works while daemons run, here or on other hosts.

exit codes:
  0  done (doctor: nothing is wrong)
  1  some of it could not be done: a job that does not exist or is in the wrong
     state (the message says which); doctor: a problem was found
  2  the settings are invalid
  3  the queue database cannot be opened
"""


def _admin_verbs(verbs: Any) -> None:
    def verb(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=ADMIN_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _config_option(parser)
        return parser

    status = verb("status", "daemons, counts per state, running jobs, pause and windows")
    status.add_argument("--json", action="store_true", help="one JSON document")
    jobs = verb("jobs", "list jobs, newest first")
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    jobs.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    jobs.add_argument("--json", action="store_true", help="a JSON list")
    show = verb("show", "everything about one job")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="one JSON document")
    retry = verb("retry", "put failed or cancelled jobs back: the image returns to its inbox")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--json", action="store_true", help="a JSON list of outcomes")
    cancel = verb("cancel", "end waiting jobs now; running ones stop at their next step")
    cancel.add_argument("ids", type=int, nargs="+", metavar="ID")
    cancel.add_argument("--json", action="store_true", help="a JSON list of outcomes")
    pause = verb("pause", "claim no new job on any daemon of this queue (kept across restarts)")
    pause.add_argument(
        "--now", action="store_true", help="also stop running jobs at their next step (re-queued)"
    )
    verb("resume", "claim jobs again after a pause")
    doctor = verb("doctor", "check the installation and say how to fix what is wrong")
    doctor.add_argument("--json", action="store_true", help="a JSON list of findings")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML settings file (default: $I2VD_CONFIG)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "rules" and args.rules_verb == "check" and args.dir is not None:
        return rules_check(args.dir)
    if args.verb in ADMIN_VERBS:
        return admin(args)
    from .config import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.verb == "rules":
        if args.rules_verb == "check":
            return rules_check(settings.rules_dir)
        return rules_explain(settings, args.paths, as_json=args.json)
    if args.verb == "run":
        return run(settings, once=args.once)
    return doctor(settings, as_json=args.json)


def run(settings: Settings, once: bool) -> int:
    from .logs import setup

    # A live progress line only for `run --once` in a terminal (never under systemd).
    progress = setup(settings.log_level, live=once)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ReadableNames())  # undecodable bytes of names as \xNN

    from .service import Service, StartupError  # keeps `i2vd --help` light

    try:
        return Service(settings, once=once, progress_line=progress).run()
    except StartupError as exc:
        print(f"i2vd: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    finally:
        # The process is ending: from here until it is gone (interpreter teardown takes
        # a moment, and puts back the default handlers that kill), a late SIGTERM or
        # SIGHUP is ignored, so the exit code stays the service's own.
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


def _missing_rules_dir(rules_dir: Path) -> bool:
    if rules_dir.is_dir():
        return False
    what = "is not a folder" if rules_dir.exists() else "does not exist"
    print(f"i2vd: rules folder {rules_dir} {what} (set rules_dir)", file=sys.stderr)
    return True


def rules_check(rules_dir: Path) -> int:
    from .rules import ProblemKind
    from .rules_check import check_rules

    exit_by_kind = {
        ProblemKind.READ: EXIT_RULES_SYNTAX,
        ProblemKind.YAML: EXIT_RULES_SYNTAX,
        ProblemKind.SCHEMA: EXIT_RULES_SCHEMA,
        ProblemKind.CONFLICT: EXIT_RULES_CONFLICT,
    }

    if _missing_rules_dir(rules_dir):
        return EXIT_CONFIG
    report = check_rules(rules_dir)
    for problem in report.problems:
        print(problem)
    print(report.summary(), file=sys.stderr)
    if not report.rule_files:
        print(
            f"i2vd: warning: no rule files (*.yaml, *.yml) in {rules_dir}: every image "
            "would stay in the inbox",
            file=sys.stderr,
        )
    return min((exit_by_kind[p.kind] for p in report.problems), default=0)


def rules_explain(settings: Settings, paths: list[str], as_json: bool) -> int:
    from .explain import Explainer
    from .explain_format import format_report

    if _missing_rules_dir(settings.rules_dir):
        return EXIT_CONFIG
    explainer = Explainer(settings)
    reports = [explainer.explain(path) for path in paths]
    if as_json:
        print(json.dumps(reports, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(format_report(report) for report in reports))
    return 0 if all(report["ok"] for report in reports) else 1


def doctor(settings: Settings, as_json: bool) -> int:
    from dataclasses import asdict

    from .doctor import format_findings, healthy, run_checks

    findings = run_checks(settings)
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2, ensure_ascii=False))
    else:
        print(format_findings(findings))
    return 0 if healthy(findings) else 1


def _queue_settings(config: Path | None) -> QueueSettings:
    """What the admin verbs need of the settings: the one place that says how they
    are read. The light reader first (no pydantic); whatever it does not vouch for
    goes through the full validation, which answers or raises SettingsError."""
    try:
        return load_queue_settings(config)
    except NeedsFullCheck:
        from .config import load_settings

        return QueueSettings.of(load_settings(config))


def admin(args: argparse.Namespace) -> int:
    """The queue verbs: open the queue, call the library, print what it returned."""
    try:
        settings = _queue_settings(args.config)
    except SettingsError as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from . import admin as lib
    from .dbapi import QueueDatabaseError, QueueUnavailable, SchemaMissing

    for upgraded in (False, True):
        try:
            queue = lib.open_queue(settings)
            try:
                return _admin_verb(lib, queue, settings, args)
            finally:
                queue.close()
        except SchemaMissing as exc:
            if upgraded:
                return _database_failed(exc)
            # A queue no daemon has created or upgraded yet: upgrade it as a starting
            # daemon would (the only case that imports the ORM and Alembic).
            if not _upgrade(lib, settings):
                return EXIT_STARTUP
        except QueueUnavailable as exc:
            return _cannot_open(exc)
        except QueueDatabaseError as exc:
            return _database_failed(exc)
    return EXIT_STARTUP


def _upgrade(lib: Any, settings: QueueSettings) -> bool:
    """Make or upgrade the queue's schema; False (the reason printed) when it cannot."""
    from sqlalchemy.exc import SQLAlchemyError

    from .schema_version import SchemaTooNew

    try:
        lib.upgrade(settings)
    except SchemaTooNew as exc:  # the message says what to do: upgrade i2vd here
        print(f"i2vd: {exc}", file=sys.stderr)
        return False
    except OSError as exc:
        # The lock file beside a SQLite queue, taken while the schema is made: its
        # folder is read-only, full, or not there.
        what = exc.filename or "the queue's folder"
        print(
            f"i2vd: cannot prepare the queue database: cannot write {what} "
            f"({exc.strerror or exc}); the folder of the queue's file must be writable",
            file=sys.stderr,
        )
        return False
    except (SQLAlchemyError, ImportError) as exc:
        _cannot_open(exc)
        return False
    return True


def _cannot_open(exc: Exception) -> int:
    print(
        f"i2vd: cannot open the queue database: {exc}; check database_url (i2vd doctor tells more)",
        file=sys.stderr,
    )
    return EXIT_STARTUP


def _database_failed(exc: Exception) -> int:
    print(
        f"i2vd: the queue database failed: {exc}; check database_url and the database "
        "(i2vd doctor tells more)",
        file=sys.stderr,
    )
    return EXIT_STARTUP


def _admin_verb(lib: Any, queue: Any, settings: QueueSettings, args: argparse.Namespace) -> int:
    from . import admin_text as text

    if args.verb == "status":
        data = lib.status(queue, settings)
        print(_dump(data) if args.json else text.status_text(data))
        return 0
    if args.verb == "jobs":
        rows = lib.list_jobs(queue, args.state, max(1, args.limit))
        print(_dump(rows) if args.json else text.jobs_text(rows))
        return 0
    if args.verb == "show":
        try:
            data = lib.show(queue, args.id)
        except lib.AdminProblem as exc:
            print(f"i2vd: {exc.message}; {exc.hint}", file=sys.stderr)
            return 1
        print(_dump(data) if args.json else text.show_text(data))
        return 0
    if args.verb == "pause":
        lib.pause(queue, now=args.now)
        print(
            "paused: running jobs stop at their next step and go back to the queue"
            if args.now
            else "paused: running jobs finish; no new job is started"
        )
        return 0
    if args.verb == "resume":
        lib.resume(queue)
        print("resumed")
        return 0
    if args.verb == "retry" and not args.ids and not args.failed:
        print("i2vd: name job IDs to retry, or --failed for every failed job", file=sys.stderr)
        return 1
    outcomes = (
        lib.retry(queue, settings, args.ids, failed=args.failed)
        if args.verb == "retry"
        else lib.cancel(queue, settings, args.ids)
    )
    if args.json:
        print(_dump([o.to_json() for o in outcomes]))
    for outcome in outcomes:
        if not args.json:
            print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    if args.verb == "retry" and args.failed and not outcomes and not args.json:
        print("no failed jobs")
    return 0 if all(o.ok for o in outcomes) else 1


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


if __name__ == "__main__":
    sys.exit(main())
