"""Webhooks: a real HTTP receiver on 127.0.0.1; retries bounded; the caller never waits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from conftest import wait_for
from daemon.webhooks import Webhook, Webhooks


class Receiver:
    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.hits += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                if outer.hits <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                outer.content_type = self.headers["Content-Type"]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_a_failure_is_posted_as_json(receiver: Receiver) -> None:
    hooks = Webhooks([Webhook(url=receiver.url)])
    hooks.send("failed", {"job": {"id": 3, "error": "broken"}})
    hooks.send("done", {"job": {"id": 4}})  # not asked for
    wait_for(lambda: receiver.bodies)
    hooks.close()
    assert len(receiver.bodies) == 1
    assert receiver.bodies[0]["event"] == "failed"
    assert receiver.bodies[0]["job"] == {"id": 3, "error": "broken"}
    assert receiver.content_type == "application/json"


def test_retries_are_bounded_and_then_delivery_succeeds_or_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Receiver(fail_first=2)
    hooks = Webhooks([Webhook(url=flaky.url, retries=2, retry_seconds=0.05)])
    hooks.send("failed", {"n": 1})
    wait_for(lambda: flaky.bodies)
    assert flaky.hits == 3
    dead = Receiver(fail_first=100)
    hooks2 = Webhooks([Webhook(url=dead.url, retries=1, retry_seconds=0.05)])
    hooks2.send("failed", {"n": 2})
    wait_for(lambda: hooks2.given_up == 1)
    assert dead.hits == 2
    assert "not delivered after 2 attempt(s)" in caplog.text
    for r in (flaky, dead):
        r.server.shutdown()


def test_a_slow_receiver_never_blocks_the_sender() -> None:
    slow = Receiver(delay=1.0)
    hooks = Webhooks([Webhook(url=slow.url, timeout_seconds=0.2, retries=0)])
    start = time.monotonic()
    for i in range(20):
        hooks.send("failed", {"n": i})
    assert time.monotonic() - start < 0.2
    hooks.close(timeout=0.5)
    slow.server.shutdown()


def test_urls_must_be_http() -> None:
    with pytest.raises(ValueError):
        Webhook(url="ftp://example.org/x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Webhook(url="http://example.org/x", events=["exploded"])  # type: ignore[list-item]
