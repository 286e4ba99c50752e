"""``i2vd`` with a fake engine that reports one step and then hangs, as a wedged GPU
call does (a CUDA fault cannot be had on CPU). The watchdog tests run the daemon
through this file: ``python tests/fake_hanging_engine.py run --config FILE``.
"""

from __future__ import annotations

import sys
import threading

from daemon.cli import main
from daemon.engines import Clip, RenderRequest, motion


class FakeHangingEngine(motion.MotionEngine):
    def render(self, request: RenderRequest) -> Clip:
        request.checkpoint(0.1)
        print("fake engine: reported a step, now hanging", flush=True)
        threading.Event().wait()  # never set: only a kill ends this
        raise AssertionError("unreachable")

    # The worker streams frames from engines that can; this one cannot.
    stream = render


# get_engine imports MotionEngine from the module when a job first asks for it.
motion.MotionEngine = FakeHangingEngine  # type: ignore[misc]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
