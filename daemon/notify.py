"""systemd's notification protocol (sd_notify) with the standard library.

The protocol is one datagram of ``KEY=value`` lines to the socket named in
``NOTIFY_SOCKET``; it is systemd's stable interface, so no libsystemd is needed. An
address starting with ``@`` is in the abstract namespace. Without ``NOTIFY_SOCKET``
(a terminal, a container, a test) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager. Safe to call from any thread."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self.watchdog_seconds = _watchdog_seconds(env)
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send one message; False when there is no manager or it could not be reached."""
        if self._address is None:
            return False
        message = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._socket is None:
                    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    self._socket = socket.socket(socket.AF_UNIX, kind)
                self._socket.sendto(message, self._address)
            except OSError as exc:
                # The manager going away must never stop the daemon; say it once.
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify the service manager (%s): %s", self._address, exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *self._status_line(status))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload to this message.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Send STATUS= only when it changed: systemctl shows the latest one."""
        if text == self._last_status:
            return True
        self._last_status = text
        return self.send(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before a start (or stop) counts as hung."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _status_line(self, status: str | None) -> list[str]:
        if status is None:
            return []
        self._last_status = status
        return [f"STATUS={_one_line(status)}"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog period systemd expects pings within, if it watches this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. the one that exec'd us)
    return int(usec) / 1_000_000
