"""``rules explain``'s report as plain text: one block per path (``--json`` prints the
report itself)."""

from __future__ import annotations

import json
import os
from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """One plain-text block per path."""
    lines = [report["path"]]

    def row(label: str, value: object, indent: int = 2) -> None:
        lines.append(f"{' ' * indent}{label + ':' if label else '':<17}{value}")

    if report["inbox"] is not None:
        state = "exists" if report["exists"] else "not there yet: its size and EXIF are unknown"
        row("inbox", report["inbox"])
        row("relative path", f"{report['relative']} ({state})")
    image = report["image"]
    if image is not None:
        text = f"{image['width']}x{image['height']} {image['orientation']}"
        if image["description"]:
            text += f"; EXIF description {image['description']!r}"
        if image["comment"]:
            text += f"; EXIF comment {image['comment']!r}"
        row("image", text)
    companions = report["companions"]
    if companions is not None and companions["files"]:
        row("beside it", ", ".join(os.path.basename(f) for f in companions["files"]))
        if companions["text"]:
            row("text", repr(companions["text"]), 4)
        if companions["overrides"]:
            row("overrides", json.dumps(companions["overrides"], ensure_ascii=False), 4)
    row("verdict", report["verdict"])
    for rule in report["rules"]:
        mark = "*" if rule["wins"] else "-"
        lines.append(f"    {mark} {rule['name']} (priority {rule['priority']}): {rule['why']}")
    if report["skipped_rule_files"]:
        lines.append(
            "  invalid rule files (skipped; a running daemon keeps their last good version):"
        )
        lines.extend(f"    {problem}" for problem in report["skipped_rule_files"])
    winner = report["winner"]
    if winner is not None:
        row("rule file", winner["file"])
        row("engine", winner["engine"] + (f" ({winner['model']})" if winner["model"] else ""))
        family = winner["model_family"]
        if family is not None and family["pipeline"]:
            named = f" ({family['family']})" if family["family"] else ""
            row("pipeline", family["pipeline"] + named)
        original = winner["original"]
        row("original", original["text"] + (f": {original['path']}" if original["path"] else ""))
        for output in winner["outputs"]:
            _format_output(output, lines, report["exists"])
    for error in report["errors"]:
        if error != report["verdict"]:
            row("problem", error)
    return "\n".join(lines)


def _format_output(output: dict[str, Any], lines: list[str], exists: bool) -> None:
    lines.append(f"  variant {output['variant']}:" if output["variant"] else "  output:")

    def row(label: str, value: object) -> None:
        lines.append(f"    {label + ':' if label else '':<17}{value}")

    for key, label in (("prompt", "prompt"), ("negative_prompt", "negative prompt")):
        if output[key] is not None:
            row(label, repr(output[key]))
    params, sources = output["params"], output["param_sources"]
    shown = {**params, "seed": "not set" if params["seed"] is None else params["seed"]}
    row("params", ", ".join(f"{key} {value}" for key, value in shown.items()))
    origins: dict[str, list[str]] = {}
    for key, origin in sources.items():
        if params[key] is not None:
            origins.setdefault(origin, []).append(key)
    row("", "from " + "; ".join(f"{o}: {', '.join(keys)}" for o, keys in origins.items()))
    frame = output["frame"]
    size = f"{frame['width']}x{frame['height']}" if frame["width"] else "size depends on the image"
    clip = f"{frame['frames']} frames at {frame['fps']} fps"
    row("video frames", f"{size}, {clip} (aspect {output['aspect']})")
    for note in frame["notes"]:
        row("", note)
    row("memory", output["memory"])
    if output["video"] is not None:
        suffix = " (the name is taken: a number is added)" if output["name_taken"] else ""
        row("video", output["video"] + suffix)
        row("sidecar", output["sidecar"])
    for error in output["errors"]:
        row("problem" if exists else "unknown yet", error)


__all__ = ["format_report"]
