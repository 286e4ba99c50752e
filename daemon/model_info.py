"""What is known about a rule's model without loading it: the diffusion pipeline class
(from a local folder's or the Hugging Face cache's ``model_index.json``, else from the
hub id of a family's reference model) and the GPU memory class of a resolution.

``rules explain`` reports these; nothing here imports torch or diffusers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .plan import family_rounding, pipeline_of_hub_id
from .rules import Rule

# GPU memory the reference I2VGen-XL tool needs per resolution (its own table); other
# diffusion families differ, so explain names where the figures come from.
MEMORY_BY_RESOLUTION = {
    256: "< 8 GB",
    512: "12–14 GB",  # noqa: RUF001 - the reference tool's en dash
    768: "16–18 GB",  # noqa: RUF001
    1024: "> 20 GB",
}
MEMORY_SOURCE = "I2VGen-XL figures from the reference tool"


def memory_class(rule: Rule) -> str:
    """The GPU memory a rule's resolution needs, in words."""
    if rule.engine == "motion":
        return "CPU only, no GPU memory"
    resolution = rule.resolved().resolution
    return f"{MEMORY_BY_RESOLUTION[resolution]} of GPU memory at {resolution} ({MEMORY_SOURCE})"


def model_family(model: str, base_dir: Path) -> dict[str, Any]:
    """What is known about a diffusion model without loading it: its pipeline class (from
    a local folder's or the Hugging Face cache's ``model_index.json``, else from the hub
    id of a family's reference model) and, where the engine's torch-free families table
    can say so without the loaded model, the family's size multiple and frame form."""
    info: dict[str, Any] = {
        "local": False,
        "pipeline": None,
        "family": None,
        "size_multiple": None,
        "frame_step": None,
        "frame_form": None,
        "known_from": None,
    }
    folder = Path(model).expanduser()
    if not folder.is_absolute():
        folder = base_dir / folder
    info["local"] = folder.is_dir()
    candidates = [folder] if info["local"] else _hub_snapshots(model)
    for candidate in candidates:
        pipeline = _pipeline_class(candidate / "model_index.json")
        if pipeline is not None:
            info["pipeline"], info["known_from"] = pipeline, str(candidate / "model_index.json")
            break
    if info["pipeline"] is None:
        reference = pipeline_of_hub_id(model)
        if reference is not None:
            info["pipeline"], info["known_from"] = reference, "hub id"
    rounding = family_rounding(info["pipeline"])
    info.update(
        family=rounding.label,
        size_multiple=rounding.size_multiple,
        frame_step=rounding.frame_step,
        frame_form=rounding.frame_form,
    )
    return info


def _pipeline_class(index: Path) -> str | None:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _hub_snapshots(model: str) -> list[Path]:
    """Downloaded snapshots of a hub id in the Hugging Face cache, newest first."""
    if model.count("/") != 1:
        return []
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    snapshots = cache / f"models--{model.replace('/', '--')}" / "snapshots"
    try:
        found = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
