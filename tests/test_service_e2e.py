"""The daemon under a service manager, end to end: real subprocesses reporting over a
real notify socket, a watchdog that notices a hung engine, metrics scraped over HTTP
and a webhook receiver, all on 127.0.0.1 and temp folders."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import FAILING_RULE, REPO, Layout, make_image, wait_for
from tiny_pipelines import build_i2vgenxl

pytestmark = pytest.mark.slow

HANGING = (str(REPO / "tests" / "fake_hanging_engine.py"),)


class NotifySocket:
    """A datagram socket standing in for systemd: records each message with its time."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, key: str) -> list[tuple[float, str]]:
        return [
            (at, line)
            for at, message in list(self.messages)
            for line in message.split("\n")
            if line.startswith(key)
        ]

    def env(self, watchdog_seconds: float = 1.0) -> dict[str, str]:
        return {
            "NOTIFY_SOCKET": str(self.path),
            "WATCHDOG_USEC": str(int(watchdog_seconds * 1_000_000)),
        }

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def test_ready_status_watchdog_reload_and_stopping_reach_the_manager(
    layout: Layout, daemon: Any, notify: NotifySocket
) -> None:
    proc = daemon(env=notify.env(watchdog_seconds=1.0))
    wait_for(lambda: notify.lines("READY=1"), 20)
    ready_at = notify.lines("READY=1")[0][0]
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for _, line in notify.lines("EXTEND"))
    # Pings at a quarter of the period while idle and healthy.
    wait_for(lambda: len([t for t, _ in notify.lines("WATCHDOG=1") if t > ready_at]) >= 4, 10)
    statuses = [line for _, line in notify.lines("STATUS=")]
    assert any("0 queued" in s and "idle" in s for s in statuses), statuses

    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: (layout.outbox / "a.motion.mp4").exists(), 30)
    # The running job shows in the status (a new one is sent as soon as it starts).
    wait_for(lambda: any("job 1 a.jpg" in line for _, line in notify.lines("STATUS=")), 10)
    wait_for(lambda: "idle" in notify.lines("STATUS=")[-1][1], 10)

    before = len(notify.messages)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any("RELOADING=1" in m for _, m in notify.messages[before:]), 10)
    reload_at = next(t for t, m in notify.messages[before:] if "RELOADING=1" in m)
    wait_for(lambda: [t for t, _ in notify.lines("READY=1") if t >= reload_at], 10)
    reloading = next(m for _, m in notify.messages[before:] if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading

    assert proc.stop() == 0
    stopping = notify.lines("STOPPING=1")
    assert stopping and stopping[0][0] > reload_at
    assert proc.proc.returncode == 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_i2vgenxl(tmp_path_factory.mktemp("models") / "tiny-i2vgenxl")


def test_a_job_loading_its_model_asks_the_manager_for_the_load_allowance(
    layout: Layout, daemon: Any, notify: NotifySocket, tiny_model: Path
) -> None:
    layout.rule(
        "ai",
        "engine: diffusion\npriority: 10\n"
        f"model: {json.dumps(str(tiny_model))}\n"
        "preset: quick\nparams: {resolution: 256, frames: 8, fps: 8, steps: 10, seed: 1}\n",
    )
    layout.write_config(device="cpu", model_load_seconds=1234)
    proc = daemon(env={"NOTIFY_SOCKET": str(notify.path)})
    wait_for(lambda: notify.lines("READY=1"), 20)
    ready_at = notify.lines("READY=1")[0][0]
    load = "EXTEND_TIMEOUT_USEC=1234000000"
    assert notify.lines(load) == []  # start-up asks for its own phases' time, not this

    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: "job 1 done" in proc.log or "failed" in proc.log, 180)
    assert (layout.outbox / "a.ai.mp4").exists(), proc.log
    [(asked_at, _)] = notify.lines(load)
    assert asked_at > ready_at
    said = "job 1 a.jpg loading model tiny-i2vgenxl"
    loading = [at for at, line in notify.lines("STATUS=") if said in line]
    assert loading and loading[0] >= asked_at, notify.lines("STATUS=")

    # The model stays warm: the next job loads nothing, so asks for nothing.
    make_image(layout.inbox / "b.jpg", seed=2)
    wait_for(lambda: "job 2 done" in proc.log or "failed" in proc.log, 180)
    assert (layout.outbox / "b.ai.mp4").exists(), proc.log
    assert len(notify.lines(load)) == 1
    assert not any("job 2 b.jpg loading" in line for _, line in notify.lines("STATUS="))
    assert proc.stop() == 0


def test_without_notify_socket_nothing_is_sent_and_logs_are_as_before(
    layout: Layout, daemon: Any
) -> None:
    proc = daemon()
    proc.wait_started()
    assert proc.stop() == 0
    assert "cannot notify" not in proc.log
    assert " INFO    daemon.service: i2vd started" in proc.log


def test_a_hung_engine_stops_the_pings_within_the_allowance_then_the_job_comes_back(
    layout: Layout, daemon: Any, notify: NotifySocket
) -> None:
    stall = 2.0
    layout.write_config(stall_seconds=stall, model_load_seconds=stall)
    proc = daemon(env=notify.env(watchdog_seconds=1.0), program=HANGING)
    wait_for(lambda: notify.lines("READY=1"), 20)
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: "reported a step, now hanging" in proc.log, 30)
    hung_at = time.monotonic()
    time.sleep(stall + 3.0)
    pings = [t for t, _ in notify.lines("WATCHDOG=1")]
    assert pings and pings[0] < hung_at  # it did ping while healthy
    last = max(pings)
    # The step was reported just before the fake hung: the pings stop within the
    # allowance (plus one ping period), and stay stopped.
    assert last <= hung_at + stall + 0.5, (last - hung_at, pings)
    assert "watchdog pings stopped" in proc.log
    assert proc.proc.poll() is None  # alive but useless: systemd's kill comes next

    proc.proc.kill()  # what WatchdogSec= does
    proc.wait()
    again = daemon()  # what Restart=on-failure does
    wait_for(lambda: (layout.outbox / "a.motion.mp4").exists(), 40)
    assert again.stop() == 0
    assert "was running when i2vd stopped; queued again" in again.log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> str:
    text: str = (
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    return text


def value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_served_over_http_and_the_counters_move(layout: Layout, daemon: Any) -> None:
    port = free_port()
    layout.write_config(metrics_port=port)
    proc = daemon()
    proc.wait_started()
    done = 'i2vd_jobs_finished_total{engine="motion",outcome="done",rule="motion"}'
    first = wait_for(lambda: scrape(port), 10)
    assert value(first, done) == 0.0
    assert "i2vd_queue_jobs" in first and "i2vd_paused 0.0" in first
    for i in range(2):
        make_image(layout.inbox / f"m{i}.jpg", seed=i)
    wait_for(lambda: value(scrape(port), done) == 2.0, 60)
    text = scrape(port)
    assert value(text, 'i2vd_job_duration_seconds_count{engine="motion"}') == 2.0
    assert value(text, 'i2vd_job_queue_wait_seconds_count{engine="motion"}') == 2.0
    assert value(text, 'i2vd_queue_jobs{state="done"}') == 2.0
    assert value(text, "i2vd_last_success_timestamp_seconds") > time.time() - 120
    assert "m0.jpg" not in text and str(layout.root) not in text  # no paths in labels
    assert proc.stop() == 0


def test_run_once_writes_the_metrics_textfile(layout: Layout, daemon: Any) -> None:
    target = layout.root / "textfile" / "i2vd.prom"
    layout.write_config(metrics_textfile=str(target))
    make_image(layout.inbox / "a.jpg")
    assert daemon("--once").wait(60) == 0
    text = target.read_text()
    assert (
        value(text, 'i2vd_jobs_finished_total{engine="motion",outcome="done",rule="motion"}') == 1
    )


class HookReceiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                outer.posts.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/i2vd"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_webhook_receiver_gets_the_failure_post(layout: Layout, daemon: Any) -> None:
    receiver = HookReceiver()
    try:
        layout.rule("broken", FAILING_RULE)
        layout.write_config(
            max_attempts=1, webhooks=[{"url": receiver.url, "events": ["failed", "drained"]}]
        )
        proc = daemon()
        proc.wait_started()
        make_image(layout.inbox / "broken.jpg")
        wait_for(lambda: [p for p in receiver.posts if p["event"] == "failed"], 30)
        failed = next(p for p in receiver.posts if p["event"] == "failed")
        assert failed["job"]["source"] == "broken.jpg"
        assert failed["job"]["rule"] == "broken" and failed["job"]["state"] == "failed"
        assert failed["job"]["error"]
        wait_for(lambda: [p for p in receiver.posts if p["event"] == "drained"], 10)
        assert proc.stop() == 0
    finally:
        receiver.server.shutdown()
