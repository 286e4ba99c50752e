"""Every admin verb is on the command line and documented in the README."""

from __future__ import annotations

from conftest import REPO
from daemon.cli import build_parser

ADMIN = ("status", "jobs", "show", "retry", "cancel", "pause", "resume", "doctor")


def test_every_admin_verb_is_a_command_and_documented() -> None:
    parser = build_parser()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for verb in ADMIN:
        args = parser.parse_args([verb, *(["1"] if verb in ("show", "cancel") else [])])
        assert args.verb == verb
        assert f"`i2vd {verb}" in readme, verb
        assert f"$ i2vd {verb}" in readme, f"no example output of i2vd {verb}"


def test_the_help_of_an_admin_verb_states_its_exit_codes(capsys: object) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for verb in ADMIN:
        help_text = sub.choices[verb].format_help()  # type: ignore[attr-defined]
        assert "exit codes:" in help_text and "3  the queue database" in help_text
