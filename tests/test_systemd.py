"""The shipped systemd units: valid for systemd, hardened, and the example settings load."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from daemon.config import load_settings

UNITS = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)"
)


def staged(tmp_path: Path, name: str, as_name: str | None = None, extra: str = "") -> Path:
    """The unit copied to ``tmp_path``, its ExecStart pointed at this interpreter's
    ``i2vd`` (verify refuses a command that does not exist here)."""
    text = (UNITS / name).read_text(encoding="utf-8")
    i2vd = Path(sys.executable).with_name("i2vd")
    command = i2vd if i2vd.exists() else Path(sys.executable)
    assert "ExecStart=/opt/i2vd/venv/bin/i2vd " in text
    text = text.replace("/opt/i2vd/venv/bin/i2vd", str(command))
    text = text.replace("[Service]\n", f"[Service]\n{extra}", 1)
    path = tmp_path / (as_name or name)
    path.write_text(text, encoding="utf-8")
    return path


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


@needs_analyze
@pytest.mark.parametrize(
    ("name", "as_name"), [("i2vd.service", None), ("i2vd@.service", "i2vd@0.service")]
)
def test_units_verify_without_a_single_complaint(
    tmp_path: Path, name: str, as_name: str | None
) -> None:
    result = analyze("verify", staged(tmp_path, name, as_name))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_verify_would_catch_an_unknown_key(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported on stderr."""
    result = analyze("verify", staged(tmp_path, "i2vd.service", extra="ProtectSytem=strict\n"))
    assert "Unknown key" in result.stderr or "unknown" in result.stderr.lower(), result.stderr


@needs_analyze
@pytest.mark.parametrize(
    ("name", "as_name"), [("i2vd.service", None), ("i2vd@.service", "i2vd@0.service")]
)
def test_units_are_hardened_to_an_exposure_of_at_most_3(
    tmp_path: Path, name: str, as_name: str | None
) -> None:
    unit = staged(tmp_path, name, as_name)
    result = analyze("security", "--offline=true", unit)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 3.0, result.stdout


def test_units_keep_the_gpu_reachable_and_say_why() -> None:
    for name in ("i2vd.service", "i2vd@.service"):
        text = (UNITS / name).read_text(encoding="utf-8")
        settings = dict(
            line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
        )
        assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
        assert settings["PrivateDevices"] == "false" and settings["DevicePolicy"] == "closed"
        for device in ("nvidiactl", "nvidia-frontend", "nvidia-uvm", "nvidia-caps"):
            assert f"DeviceAllow=char-{device} rw" in text
        assert "AMD" in text and "CPU" in text  # what to change on other hosts
    template = (UNITS / "i2vd@.service").read_text(encoding="utf-8")
    assert "Environment=I2VD_DEVICE=cuda:%i" in template


def test_every_hardening_line_of_the_main_unit_has_a_reason() -> None:
    """Each directive after the hardening banner sits under a comment (its own or
    the group's it belongs to), never bare after a blank line."""
    lines = (UNITS / "i2vd.service").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# --- hardening"))
    end = lines.index("[Install]")
    bare = [
        line
        for prev, line in zip(lines[start:end], lines[start + 1 : end], strict=False)
        if line and not line.startswith("#") and not prev
    ]
    assert bare == []


def test_the_example_settings_load_and_match_the_unit() -> None:
    example = UNITS / "i2vd.yaml"
    settings = load_settings(example)
    assert [w.engine for w in settings.windows] == ["diffusion", "diffusion"]
    assert settings.metrics_host == "127.0.0.1"
    unit = (UNITS / "i2vd.service").read_text(encoding="utf-8")
    rw = re.search(r"^ReadWritePaths=(.*)$", unit, re.M)
    assert rw is not None
    writable = rw.group(1).split()
    for folder in (*settings.inbox, settings.outbox, settings.failed_dir):
        assert str(folder) in writable
    assert str(settings.state_dir) == "/var/lib/i2vd"  # StateDirectory=i2vd
