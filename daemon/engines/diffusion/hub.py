"""Whether a hub model can be had, decided before the hub client is asked, and the hub
client's output routed through the daemon's log.

The hub client, asked for a file it cannot reach, retries five times with back-off and
prints every retry twice (its own stderr handler and the root logger's). On a host with
no network every job then took half a minute to fail. Here the cache is read first; if
the model is not there, ``HF_HUB_OFFLINE`` and a plain TCP connection to the hub decide
in seconds whether a download can even start, and the message says which case it is.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
# One probe answers for this long: a queue of jobs for the same model asks once.
PROBE_TTL = 60.0
PROGRESS_EVERY = 10.0
_probe_lock = threading.Lock()
_probes: dict[str, tuple[float, str | None]] = {}


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_hint(hub_id: str, offline: bool) -> str:
    """The exact commands that get the weights, for the situation at hand."""
    hint = (
        "ask whoever looks after i2vd to fetch the model: download it into the Hugging Face "
        f"cache with `hf download {hub_id}` (older "
        f"huggingface_hub: `huggingface-cli download {hub_id}`)"
    )
    if offline:
        hint += " on this host, or unset HF_HUB_OFFLINE so i2vd can download it"
    else:
        hint += " on a host with network access and copy the cache (~/.cache/huggingface/hub) here"
    return (
        hint + f"; or download it into a folder (`hf download {hub_id} --local-dir "
        "/models/NAME`) and point the rule's 'model' at that folder; the job is retried"
    )


def _endpoint() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "huggingface.co", port


def unreachable() -> str | None:
    """Why the hub cannot be reached from here, or None if a connection opens."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return None  # only the proxy knows; the hub client goes through it
    host, port = _endpoint()
    key = f"{host}:{port}"
    with _probe_lock:
        seen = _probes.get(key)
        if seen is not None and time.monotonic() - seen[0] < PROBE_TTL:
            return seen[1]
    reason: str | None = None
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = f"{host}:{port}: {exc.strerror or type(exc).__name__}"
    with _probe_lock:
        _probes[key] = (time.monotonic(), reason)
    return reason


@dataclass(frozen=True)
class HubState:
    cached_index: Path | None  # model_index.json in the cache, if there
    reachable: bool


def hub_state(hub_id: str) -> HubState:
    """Where ``hub_id`` can come from; raises ModelUnavailable when from nowhere."""
    from huggingface_hub import constants, try_to_load_from_cache

    from .loading import ModelUnavailable

    cached = try_to_load_from_cache(hub_id, "model_index.json")
    index = Path(cached) if isinstance(cached, str) else None
    if offline():
        if index is None:
            raise ModelUnavailable(
                f"the AI model {hub_id!r} is not on this computer yet, and i2vd is set not "
                "to download models",
                fetch_hint(hub_id, offline=True),
                detail=f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and "
                "HF_HUB_OFFLINE is set, so i2vd may not download it",
            )
        return HubState(index, reachable=False)
    why = unreachable()
    if why is not None and index is None:
        raise ModelUnavailable(
            f"the AI model {hub_id!r} is not on this computer yet, and this computer cannot "
            "reach the site it is downloaded from",
            fetch_hint(hub_id, offline=False),
            detail=f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and the "
            f"Hugging Face hub cannot be reached from this host ({why})",
        )
    return HubState(index, reachable=why is None)


def route_hub_logging() -> None:
    """The hub client's messages through the daemon's handlers only (it adds its own
    stderr handler too, which printed every retry line twice), its bars off."""
    from huggingface_hub import utils

    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    hub.propagate = True
    hub_utils: Any = utils  # the bars' switch is not in its typed exports
    hub_utils.disable_progress_bars()


def _repo_folder(hub_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}"


def _bytes_under(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue  # a partial file renamed meanwhile
    return total


class DownloadWatcher:
    """While a hub model loads, log how much of it has arrived in the cache every
    ``PROGRESS_EVERY`` seconds (the weights are tens of GB; the hub client's own bars are
    off). Silent when nothing arrives: a cached model logs nothing."""

    def __init__(self, hub_id: str | None, every: float = PROGRESS_EVERY) -> None:
        self.hub_id = hub_id
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0
        self.reports: list[int] = []

    def __enter__(self) -> DownloadWatcher:
        if self.hub_id is not None:
            # Measured here, not in the thread: what arrives after entering is the download.
            folder = _repo_folder(self.hub_id)
            self._start = _bytes_under(folder) if folder.exists() else 0
            self._thread = threading.Thread(target=self._watch, name="download-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        assert self.hub_id is not None
        folder = _repo_folder(self.hub_id)
        start = last = self._start
        started = time.monotonic()
        while not self._stop.wait(self.every):
            now = _bytes_under(folder) if folder.exists() else 0
            if now > last:
                seconds = time.monotonic() - started
                log.info(
                    "downloading %s: %.2f GB so far (%.0f MB/s)",
                    self.hub_id,
                    (now - start) / 1e9,
                    (now - start) / 1e6 / max(seconds, 1e-3),
                )
                self.reports.append(now - start)
                last = now
