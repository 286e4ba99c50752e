"""Test-only start-up hook for daemon subprocesses: with I2VD_FAKE_GPU set to
``faulty``, ``healthy`` or ``poisoned``, the ``diffusion`` engine is one of the fake GPU
engines in tests/fake_gpu.py (there is no GPU here to break). Put this folder first on the
daemon's PYTHONPATH; nothing else changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_KIND = os.environ.get("I2VD_FAKE_GPU")
if _KIND:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import daemon.engines as engines
    from fake_gpu import FakeFaultyGPU, FakeHealthyGPU, FakePoisonedGPU

    _FAKES = {"faulty": FakeFaultyGPU, "healthy": FakeHealthyGPU, "poisoned": FakePoisonedGPU}

    _real_get_engine = engines.get_engine

    def _get_engine(name, cache, options):  # type: ignore[no-untyped-def]
        if name == "diffusion":
            fake = _FAKES[_KIND]()
            return cache.setdefault(name, fake)
        return _real_get_engine(name, cache, options)

    engines.get_engine = _get_engine
