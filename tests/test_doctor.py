"""``i2vd doctor`` on a sound install and on a broken one, as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import Layout

pytestmark = pytest.mark.slow

BROKEN_MODEL_RULE = """\
name: ai
match: {folders: ["ai/**"]}
engine: diffusion
model: ./models/missing-pipeline
"""


def doctor(layout: Layout, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor", "--config", str(layout.config_file), *args],
        cwd=layout.root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_a_sound_install_exits_0(layout: Layout) -> None:
    code, out = doctor(layout)
    assert code == 0, out
    assert "nothing is wrong" in out or "0 problem(s)" in out
    assert "FAIL" not in out


def test_a_broken_install_is_found_and_each_problem_says_how_to_fix_it(layout: Layout) -> None:
    layout.rule("ai", BROKEN_MODEL_RULE)
    (layout.root / "outbox-file").write_text("not a folder")
    layout.write_config(
        outbox="outbox-file",
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
    )
    code, out = doctor(layout, "--json", env={"IMAGEIO_FFMPEG_EXE": "/nonexistent/ffmpeg"})
    assert code == 1, out
    findings: list[dict[str, Any]] = json.loads(out)
    failed = {f["check"]: f for f in findings if f["level"] == "fail"}
    assert set(failed) >= {"folders", "database", "ffmpeg", "model"}, findings
    assert "is a file, not a folder" in failed["folders"]["message"]
    assert "cannot reach" in failed["database"]["message"]
    assert "missing-pipeline does not exist" in failed["model"]["message"]
    assert all(f["fix"] for f in failed.values())


def test_the_text_report_names_the_fix_under_each_problem(layout: Layout) -> None:
    layout.write_config(rules_dir="no-rules-here")
    code, out = doctor(layout)
    assert code == 1
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL rules:"))
    assert lines[at + 1].strip().startswith("fix: create it")
