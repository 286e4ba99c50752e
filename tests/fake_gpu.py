"""Fake GPU engines for the worker's tests: there is no GPU here to break or load on.

``FakeFaultyGPU`` raises what torch raises when a device fails (torch's own exception
type, CUDA's real message); ``FakeHealthyGPU`` stands in for a working GPU by rendering
with the real motion engine; ``FakeLoadingGPU`` does too, after telling of a model
load first, as the diffusion engine does; ``FakePoisonedGPU`` works, except that one
kind of picture (any taller than wide) makes it fault, as a driver bug that an input
triggers would. All answer to the engine name ``diffusion``.
"""

from __future__ import annotations

import torch

from daemon.engines import Clip, RenderRequest
from daemon.engines.motion import MotionEngine

ILLEGAL_ADDRESS = (
    "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
    "asynchronously reported at some other API call, so the stacktrace below might be "
    "incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1"
)


class FakeFaultyGPU:
    name = "diffusion"

    def __init__(self) -> None:
        self.calls = 0

    def render(self, request: RenderRequest) -> Clip:
        self.calls += 1
        request.checkpoint(0.1)
        raise torch.AcceleratorError(ILLEGAL_ADDRESS)

    def release_idle(self, now: float) -> None:
        pass


class FakeHealthyGPU:
    name = "diffusion"

    def __init__(self) -> None:
        self.engine = MotionEngine()

    def render(self, request: RenderRequest) -> Clip:
        return self.engine.render(request)

    def release_idle(self, now: float) -> None:
        pass


class FakeLoadingGPU(FakeHealthyGPU):
    """Each job begins with a model load: told first, then counted as begun."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def render(self, request: RenderRequest) -> Clip:
        request.loading("fake/gpu-model")
        self.loads += 1  # the load would begin here, and take minutes
        return super().render(request)


class FakePoisonedGPU(FakeHealthyGPU):
    """A working GPU whose (fake) driver faults on every picture taller than wide."""

    def __init__(self) -> None:
        super().__init__()
        self.faults = 0

    def render(self, request: RenderRequest) -> Clip:
        if request.image.height > request.image.width:
            self.faults += 1
            request.checkpoint(0.1)
            raise torch.AcceleratorError(ILLEGAL_ADDRESS)
        return super().render(request)
