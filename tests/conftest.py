"""Shared fixtures: a daemon folder layout in tmp_path, test images, a daemon subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from daemon.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent

MOTION_RULE = """\
name: motion
engine: motion
preset: quick
params: {resolution: 256}
motion: {effect: zoom_in, zoom: 1.2}
"""

# Valid for `rules check` (no unknown variable), fails when the worker renders its
# prompt: a job that fails for sure.
FAILING_RULE = """\
name: broken
match: {patterns: ["broken*"]}
priority: 5
engine: motion
preset: quick
params: {resolution: 256}
prompt: "{{ 1 // 0 }}"
"""


def permissions_enforced() -> bool:
    """Whether this process is refused a write into a read-only folder (root is not,
    unless its override capabilities were dropped, e.g. with capsh)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o500)
        try:
            Path(folder, "probe").touch()
        except PermissionError:
            return True
        finally:
            os.chmod(folder, 0o700)
        return False


NEEDS_PERMISSIONS = pytest.mark.skipif(
    not permissions_enforced(), reason="permission bits are not enforced for this user (root)"
)


def picture(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A test picture with structure everywhere (gradients, a grid, a disc), so motion,
    crops and orientation are all visible in the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), dtype=np.float64)
    img[..., 0] = 255 * x / max(1, width - 1)
    img[..., 1] = 255 * y / max(1, height - 1)
    img[..., 2] = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 9.0)
    disc = (x - width * 0.3) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) / 6) ** 2
    img[disc] = (255, 255, 255)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image(
    path: Path,
    width: int = 320,
    height: int = 240,
    fmt: str | None = None,
    seed: int = 0,
    **save: Any,
) -> Path:
    """Write a real image file (format from the extension unless ``fmt`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(width, height, seed)).save(path, format=fmt, **save)
    return path


@dataclass
class Layout:
    """A daemon's folders under one tmp dir, and a config file pointing at them."""

    root: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def rules(self) -> Path:
        return self.root / "rules"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config_file(self) -> Path:
        return self.root / "i2vd.yaml"

    def write_config(self, **overrides: Any) -> Path:
        values = {
            "inbox": "inbox",
            "outbox": "outbox",
            "failed_dir": "failed",
            "rules_dir": "rules",
            "state_dir": "state",
            "settle_seconds": 0.5,
            "rescan_seconds": 30,
            "retry_delay_seconds": 0.2,
            "log_level": "DEBUG",
            # Off unless a test is about it: the others compare whole folder listings.
            "status_page": False,
        }
        values.update(self.settings)
        values.update(overrides)
        self.config_file.write_text(yaml.safe_dump(values), encoding="utf-8")
        return self.config_file

    def load(self, **overrides: Any) -> Settings:
        return load_settings(self.write_config(**overrides))

    def rule(self, name: str, text: str) -> Path:
        self.rules.mkdir(parents=True, exist_ok=True)
        path = self.rules / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    def files(self, folder: Path) -> list[str]:
        """Every file below ``folder``, relative, sorted (hidden ones included)."""
        if not folder.exists():
            return []
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path)
    for folder in (lay.inbox, lay.outbox, lay.failed, lay.rules, lay.state):
        folder.mkdir()
    lay.rule("motion", MOTION_RULE)
    lay.write_config()
    return lay


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


class DaemonProcess:
    """``i2vd run`` as a real subprocess, with its log captured to a file."""

    def __init__(
        self,
        layout: Layout,
        *args: str,
        env: dict[str, str] | None = None,
        program: tuple[str, ...] = ("-m", "daemon"),
    ) -> None:
        self.layout = layout
        self.log_path = layout.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *program, "run", "--config", str(layout.config_file), *args],
            cwd=layout.root,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_started(self, timeout: float = 20.0) -> None:
        wait_for(lambda: "i2vd started" in self.log or self.proc.poll() is not None, timeout)
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log}"

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)


@pytest.fixture
def daemon(layout: Layout) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons on ``layout``; every one still running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, program: tuple[str, ...] = ("-m", "daemon")
    ) -> DaemonProcess:
        proc = DaemonProcess(layout, *args, env=env, program=program)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.wait()


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty queue database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    from pg import create_database, drop_database

    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)
