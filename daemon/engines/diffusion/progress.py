"""Step-level progress for every pipeline family, through the pipeline's progress bar.

Not every family offers a step callback (I2VGen-XL has none), but every diffusers
pipeline opens ``self.progress_bar(total=steps)`` and calls ``update()`` once per step.
For one call, the pipeline instance gets a progress bar of ours whose ``update()`` calls
the job's checkpoint, and its VAE's ``decode`` reports the decode phase the same way.
A checkpoint that raises (``JobInterrupted`` at shutdown) stops the pipeline there; both
stand-ins are removed again however the call ends, so the warm pipeline stays usable.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# Denoising is most of the work; decoding the latents is the rest.
DENOISE_SHARE = 0.9
LOG_EVERY_SECONDS = 10.0


class _Bar:
    """What ``pipe.progress_bar(...)`` returns: a context manager with ``update()``, also
    iterable for pipelines that wrap their timesteps in it."""

    def __init__(self, reporter: StepReporter, iterable: Iterable[Any] | None, total: int) -> None:
        self._reporter = reporter
        self._iterable = iterable
        reporter.begin(total)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self._reporter.step(n)

    def close(self) -> None:
        return None

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable or ():
            yield item
            self._reporter.step(1)


class StepReporter:
    """Turns steps and decode calls into checkpoint fractions and occasional log lines."""

    def __init__(
        self,
        checkpoint: Callable[[float], None],
        describe: str,
        decode_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checkpoint = checkpoint
        self._describe = describe
        self._decode_calls = max(1, decode_calls)
        self._clock = clock
        self._last_log = clock()
        self.total = 0
        self.steps = 0
        self.decodes = 0
        self.fractions: list[float] = []

    def _report(self, fraction: float) -> None:
        self.fractions.append(fraction)
        self._checkpoint(fraction)

    def _log(self, text: str) -> None:
        now = self._clock()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            log.info("%s: %s", self._describe, text)

    def begin(self, total: int) -> None:
        self.total, self.steps = max(0, total), 0
        self._report(0.0)

    def step(self, n: int = 1) -> None:
        self.steps += n
        total = max(self.total, self.steps, 1)
        self._log(f"denoising step {self.steps}/{total}")
        self._report(DENOISE_SHARE * self.steps / total)

    def decode_started(self) -> None:
        done = min(self.decodes, self._decode_calls - 1) / self._decode_calls
        self.decodes += 1
        self._log(f"decoding frames (part {self.decodes}/{max(self.decodes, self._decode_calls)})")
        self._report(DENOISE_SHARE + (1 - DENOISE_SHARE) * done)

    def progress_bar(self, iterable: Iterable[Any] | None = None, total: int | None = None) -> _Bar:
        if total is None:
            total = len(iterable) if hasattr(iterable, "__len__") else 0  # type: ignore[arg-type]
        return _Bar(self, iterable, total)

    @contextmanager
    def installed(self, pipe: Any) -> Iterator[None]:
        """Route ``pipe``'s progress bar and VAE decoding through this reporter."""
        had_bar = "progress_bar" in vars(pipe)
        original_bar = vars(pipe).get("progress_bar")
        vae: Any = getattr(pipe, "vae", None)
        original_decode = getattr(vae, "decode", None)
        had_decode = "decode" in vars(vae) if vae is not None else False

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.decode_started()
            assert original_decode is not None
            return original_decode(*args, **kwargs)

        pipe.progress_bar = self.progress_bar
        if original_decode is not None:
            vae.decode = decode
        try:
            yield
        finally:
            if had_bar:
                pipe.progress_bar = original_bar
            else:
                del pipe.progress_bar
            if had_decode:
                vae.decode = original_decode
            elif original_decode is not None and "decode" in vars(vae):
                del vae.decode


def decode_calls(frames: int, chunk: int | None) -> int:
    """How many times the pipeline will call the VAE's ``decode``."""
    return 1 if not chunk else math.ceil(frames / chunk)
