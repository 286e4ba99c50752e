"""The GPU circuit breaker: a broken device is the host's fault, not the image's.

Errors that mean the GPU itself is unhealthy (lost or not found, an illegal memory
access, an uncorrectable ECC error, a launch failure, a CUDA context that fails every
call) would otherwise fail every image this daemon takes, thousands in minutes. Instead
the job goes back to the queue without using an attempt, and this daemon stops taking
GPU jobs for a while (other daemons take them); after ``limit`` such faults in a row it
exits non-zero, so systemd restarts it with a fresh CUDA context. Out of memory is not
a fault: the engine's ladder deals with it.

Errors are recognised by their words (torch raises ``RuntimeError`` subclasses such as
``torch.AcceleratorError`` whose message carries the CUDA error), so this module never
imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The engines that run on the GPU: the ones a faulted daemon stops taking.
GPU_ENGINES = frozenset({"diffusion"})
# `i2vd run` exits with this after `gpu_fault_limit` device faults in a row.
EXIT_DEVICE_FAULT = 7


class DeviceFault(Exception):
    """The GPU failed while rendering a job: the job is not to blame."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# CUDA runtime/driver errors (and the libraries' equivalents) that mean the device or
# its context is broken, whatever the input was.
_DEVICE_FAULTS = re.compile(
    "|".join(
        (
            r"illegal memory access",
            r"illegal address",
            r"unspecified launch failure",
            r"launch failed",
            r"launch timed out",
            r"uncorrectable ECC error",
            r"ECC_UNCORRECTABLE",
            r"no CUDA-capable device is detected",
            r"CUDA_ERROR_NO_DEVICE",
            r"CUDA-capable device\(s\) is/are busy or unavailable",
            r"CUDA driver initialization failed",
            r"GPU is lost",
            r"fallen off the bus",
            r"\bXid\b",
            r"CUDA error: unknown error",
            r"CUDA error: device-side assert triggered",
            r"CUBLAS_STATUS_EXECUTION_FAILED",
            r"CUBLAS_STATUS_NOT_INITIALIZED",
            r"CUDNN_STATUS_EXECUTION_FAILED",
            r"NVML_SUCCESS == r INTERNAL ASSERT FAILED",
        )
    ),
    re.IGNORECASE,
)
_OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemory", re.IGNORECASE)


def device_fault(exc: BaseException) -> str | None:
    """The first line of ``exc`` (or of an exception it was raised from) when it says
    the device is unhealthy; None for anything else, out of memory included."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if not _OUT_OF_MEMORY.search(text) and _DEVICE_FAULTS.search(text):
            return text.strip().splitlines()[0]
        current = current.__cause__ or current.__context__
    return None


@dataclass
class DeviceBreaker:
    """Counts device faults in a row. Open (no GPU jobs) for ``cooldown`` seconds after
    each; then one GPU job may try again, and a success closes it."""

    limit: int = 3
    cooldown: float = 60.0
    in_a_row: int = 0
    reason: str = ""
    _open_until: float = field(default=0.0, repr=False)

    def fault(self, reason: str, now: float) -> None:
        self.in_a_row += 1
        self.reason = reason
        self._open_until = now + self.cooldown

    def success(self) -> None:
        self.in_a_row = 0
        self.reason = ""
        self._open_until = 0.0

    def allows_gpu(self, now: float) -> bool:
        return now >= self._open_until

    @property
    def faulted(self) -> bool:
        """Since the last fault, no GPU job has succeeded."""
        return self.in_a_row > 0

    @property
    def exhausted(self) -> bool:
        """Time to exit and let systemd restart the daemon with a fresh context."""
        return self.in_a_row >= self.limit
