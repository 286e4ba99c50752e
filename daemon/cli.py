"""The ``i2vd`` command: thin over the library; domain errors become one clear message."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .config import SettingsError, load_settings

# 0 and 1 come from the service (1: --once saw a failure); these two are decided here.
EXIT_CONFIG, EXIT_STARTUP = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video hot-folder daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="watch the inboxes and process images")
    run.add_argument("--config", type=Path, help="YAML settings file (default: $I2VD_CONFIG)")
    run.add_argument(
        "--once",
        action="store_true",
        help="process what is in the inboxes now, wait for the queue to drain, and exit "
        "(0 when every job succeeded, 1 otherwise)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs every timer tick at INFO and skipped overlaps at WARNING.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # At DEBUG, watchdog logs every raw inotify event, the daemon's own reads included.
    logging.getLogger("watchdog").setLevel(
        max(logging.INFO, logging.getLevelName(settings.log_level))
    )

    from .service import Service, StartupError  # keeps `i2vd --help` light

    try:
        return Service(settings, once=args.once).run()
    except StartupError as exc:
        print(f"i2vd: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP


if __name__ == "__main__":
    sys.exit(main())
