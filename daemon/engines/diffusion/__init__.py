"""The GPU engine: image-to-video diffusion pipelines through Hugging Face diffusers.

Importing this package and constructing the engine import no torch, diffusers or
transformers; the first render does. Its expected failures are problems
(``daemon.problems.Problem``), so the worker handles them without knowing this engine:

- ``ModelUnavailable`` (retryable): the model folder or hub id cannot be had right now.
- ``OutOfMemory`` (permanent): every rung of the out-of-memory ladder failed too.
- ``daemon.engines.EngineUnavailable`` (permanent): unsupported family, missing package.
"""

from __future__ import annotations

from .engine import DiffusionEngine
from .ladder import OutOfMemory
from .loading import ModelUnavailable

__all__ = ["DiffusionEngine", "ModelUnavailable", "OutOfMemory"]
