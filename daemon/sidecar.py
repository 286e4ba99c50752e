"""The JSON sidecar: every parameter that made a video, requested and effective."""

from __future__ import annotations

import datetime as dt
import functools
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import __version__
from .engines import Clip
from .names import readable
from .rules import ResolvedParams, Rule
from .store import Job


@functools.cache  # installed versions do not change under a running daemon
def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"i2vd": __version__, "python": platform.python_version()}
    for name in ("imageio-ffmpeg", "Pillow", *extra):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def params_block(params: ResolvedParams, width: int, height: int, **changes: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "resolution": params.resolution,
        "width": width,
        "height": height,
        "frames": params.frames,
        "fps": params.fps,
        "steps": params.steps,
        "guidance": params.guidance,
        "seed": params.seed,
    }
    block.update(changes)
    return block


def build_sidecar(
    job: Job,
    rule: Rule,
    prompt: str,
    negative_prompt: str,
    requested: dict[str, Any],
    clip: Clip,
    timings: dict[str, float],
    outputs: list[str],
) -> dict[str, Any]:
    effective = params_block(
        rule.resolved(),
        clip.width,
        clip.height,
        frames=len(clip.frames),
        fps=clip.fps,
        steps=clip.steps,
        guidance=clip.guidance,
        seed=clip.seed,
        **clip.effective_extra,
    )
    document: dict[str, Any] = {
        "source": readable(job.relative),  # undecodable bytes as \xNN
        "sha256": job.sha256,
        "rule": rule.name,
        "rule_file": job.rule_file,
        "variant": job.variant or None,
        "engine": rule.engine,
        "model": clip.model,
        "family": clip.family,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "aspect": rule.aspect,
        "text": job.text,
        "companions": [Path(name).name for name in job.companions],
        "source_handling": rule.source,
        "requested": requested,
        "effective": effective,
        "backoff": clip.backoff,
        "notes": clip.notes,
        "timings": {key: round(value, 4) for key, value in timings.items()},
        "device": clip.device,
        "versions": dict(package_versions(tuple(clip.extra.get("packages", ())))),
        "outputs": [readable(name) for name in outputs],
        "duplicate_of": None,
        "job": job.id,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if rule.engine == "motion":
        document["motion"] = rule.motion.model_dump()
    return document
