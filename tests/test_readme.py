"""The README is a contract: its commands, settings, examples and CI must agree with the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_image, wait_for
from daemon.config import Settings
from daemon.rules import ImageOverrides, Preset, Rule

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def the_two_commands() -> tuple[str, str]:
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    run, test = re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)[:2]
    return run.strip(), test.strip()


def test_ci_runs_the_readme_test_command() -> None:
    _, test_command = the_two_commands()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()
    assert "pytest" in test_command


def test_first_command_installs_and_runs_the_daemon() -> None:
    run_command, _ = the_two_commands()
    assert run_command.endswith("i2vd run")
    assert "pip install -e ." in run_command


def test_every_setting_is_documented() -> None:
    fields = [name for name in Settings.model_fields if name != "base_dir"]
    for name in fields:
        assert f"| `{name}` | `I2VD_{name.upper()}` |" in README, name


def test_yaml_examples_are_valid() -> None:
    blocks = code_blocks("yaml")
    assert blocks, "the README has YAML examples"
    for block in blocks:
        data = yaml.safe_load(block)
        if "match" in data or "engine" in data:
            Rule.model_validate(data)
        elif set(data) == set(Preset.model_fields):
            Preset.model_validate(data)
        elif set(data) <= set(ImageOverrides.model_fields):
            ImageOverrides.model_validate(data)
        else:
            Settings(**data)


def test_json_examples_parse() -> None:
    for block in code_blocks("json"):
        json.loads(block)


@pytest.mark.slow
def test_daemon_runs_on_its_defaults(tmp_path: Path) -> None:
    """`i2vd run` with no config, in a checkout-like folder, publishes a dropped image."""
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    console = Path(sys.executable).with_name("i2vd")
    command = [str(console), "run"] if console.exists() else [sys.executable, "-m", "daemon", "run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
        try:
            wait_for(lambda: "i2vd started" in log.read_text(), 20)
            for folder in ("inbox", "outbox", "failed", "state"):
                assert (tmp_path / folder).is_dir()
            make_image(tmp_path / "inbox" / "beach.jpg", 640, 480)
            wait_for(lambda: (tmp_path / "outbox" / "beach.motion.json").exists(), 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()
    sidecar = json.loads((tmp_path / "outbox" / "beach.motion.json").read_text())
    # The shipped rule: 4 s at 24 fps.
    assert sidecar["effective"]["width"] == 512 and sidecar["effective"]["frames"] == 96
    # Hidden entries (the .i2vd-root marker of a mounted root) are not outputs.
    outbox = (tmp_path / "outbox").iterdir()
    assert sorted(p.name for p in outbox if not p.name.startswith(".")) == [
        "beach.jpg",
        "beach.motion.json",
        "beach.motion.mp4",
        "i2vd-status.html",
        "i2vd-status.json",
    ]
    assert (tmp_path / "state" / "i2vd.db").exists()
