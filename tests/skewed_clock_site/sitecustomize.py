"""Test-only start-up hook for daemon subprocesses: I2VD_TEST_CLOCK_SKEW seconds are
added to this process's clock (``time.time``), as on a host whose clock is off. The
database's clock is untouched. Put this folder first on the daemon's PYTHONPATH."""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ.get("I2VD_TEST_CLOCK_SKEW") or 0)
if _SKEW:
    _real_time = time.time

    def _skewed_time() -> float:
        return _real_time() + _SKEW

    time.time = _skewed_time
