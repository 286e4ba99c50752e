"""Engine lookup. Heavy engines are imported only when a job asks for them."""

from __future__ import annotations

import importlib.util

from ..problems import Problem
from .base import Clip, Engine, EngineOptions, JobInterrupted, RenderRequest

__all__ = [
    "Clip",
    "Engine",
    "EngineOptions",
    "EngineUnavailable",
    "JobInterrupted",
    "RenderRequest",
    "get_engine",
]


class EngineUnavailable(Problem):
    """The rule names an engine this installation cannot run. ``hint`` says how to fix it.
    Permanent until the installation changes."""


_DIFFUSION_PACKAGES = ("torch", "diffusers", "transformers", "accelerate")


def check_engine(name: str) -> None:
    """Raise EngineUnavailable when this host cannot run the engine ``name``, without
    importing its heavy packages: the daemon's start-up warning, its jobs and
    ``rules explain`` all ask this."""
    if name == "motion":
        return
    if name != "diffusion":
        raise EngineUnavailable(
            f"this rule asks for an engine i2vd does not have ({name!r})",
            "ask whoever looks after i2vd to set the rule's engine to motion or diffusion",
        )
    missing = [p for p in _DIFFUSION_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise EngineUnavailable(
            "this computer cannot make AI (diffusion) videos: their software is not installed",
            "drop the image into a folder served by a 'motion' rule, or ask whoever looks "
            "after i2vd to install it: pip install 'i2vd[diffusion]' (GPU hosts: the CUDA "
            "build of torch first), restart i2vd, then move the image back into the inbox",
            detail=f"engine 'diffusion' needs {', '.join(missing)}, which this host does not have",
        )


def get_engine(name: str, cache: dict[str, Engine], options: EngineOptions) -> Engine:
    """The engine called ``name``, created once per daemon and kept warm in ``cache``."""
    if name in cache:
        return cache[name]
    if name == "motion":
        from .motion import MotionEngine

        engine: Engine = MotionEngine()
    else:
        check_engine(name)
        # The package imports no torch: that happens in the first render.
        from .diffusion import DiffusionEngine

        engine = DiffusionEngine(options)
    cache[name] = engine
    return engine
