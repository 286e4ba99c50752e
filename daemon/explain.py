"""What the rules would do with one path, without doing it: ``i2vd rules explain``.

It reads the same rule files as the daemon (its view of broken files included) and
picks rules with the same ``pick_rule``; nothing here queues, renders or moves a file.
What a job would produce (names, prompts, frame size and count, the original's fate)
comes from ``plan.py``, the worker's own planning. Heavy engine packages (torch,
diffusers) are never imported: a model's family is read from its ``model_index.json``
(``model_info.py``), and whether its engine can run here from the installed packages.
Where a path is lives in ``locate.py``, the text form in ``explain_format.py`` and
``rules check`` in ``rules_check.py``; their names are exported here too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .companions import CompanionProblem, Companions, read_companions
from .config import Settings
from .engines import EngineUnavailable, check_engine
from .explain_format import format_report
from .images import BadImage, check_image, read_facts
from .locate import PathProblem, Place, ignored_because, locate
from .model_info import MEMORY_BY_RESOLUTION, memory_class, model_family
from .plan import (
    SourceAction,
    context_for,
    family_rounding,
    negative_prompt_of,
    original_fate,
    output_files,
    output_stem,
    plan_frames,
    prompt_of,
)
from .prompts import ImageFacts, TemplateProblem
from .rules import (
    ImageOverrides,
    LoadedRule,
    Preset,
    Rule,
    RuleProblem,
    Variant,
    folder_matches,
    pick_rule,
    rule_matches,
)
from .rules_check import CheckReport, check_rules, template_problems
from .ruleset import rules_in_force

NO_RULE = "no rule matches: the image would stay in the inbox"
# Template variables that only the image itself can tell.
IMAGE_FACTS = (*(f.name for f in dataclasses.fields(ImageFacts)), "orientation")


@dataclass
class Explainer:
    """Explains paths against one settings and one load of the rules folder."""

    settings: Settings
    cwd: Path = field(default_factory=Path.cwd)
    now: dt.datetime = field(default_factory=dt.datetime.now)
    rules: list[LoadedRule] = field(init=False)
    skipped: list[RuleProblem] = field(init=False)

    def __post_init__(self) -> None:
        # The daemon's view: a broken file's last good version stays in force.
        self.rules, self.skipped = rules_in_force(self.settings)

    def explain(self, arg: str) -> dict[str, Any]:
        report: dict[str, Any] = {
            "path": arg,
            "inbox": None,
            "relative": None,
            "exists": False,
            "ok": False,
            "verdict": "",
            "errors": [],
            "image": None,
            "companions": None,
            "skipped_rule_files": [str(p) for p in self.skipped],
            "rules": [],
            "winner": None,
        }
        try:
            place = locate(arg, self.settings.inbox, self.cwd)
        except PathProblem as exc:
            report["errors"].append(str(exc))
            report["verdict"] = str(exc)
            return report
        path = place.path
        report.update(inbox=str(place.inbox), relative=str(place.relative), exists=path.is_file())
        ignored = ignored_because(place, self.settings.status_files)
        if ignored is not None:
            report["verdict"] = f"never taken: {ignored}"
            report["errors"].append(report["verdict"])
            return report

        facts = self._facts(path, report)
        companions = self._companions(path, report)
        winner = pick_rule(self.rules, place.relative)
        report["rules"] = [self._verdict(r, place.relative, winner) for r in self._ordered()]
        if winner is None:
            report["verdict"] = NO_RULE
            return report
        report["verdict"] = f"rule {winner.rule.name} wins"
        report["winner"] = self._winner(winner, place, facts, companions, report)
        report["ok"] = not report["errors"]
        return report

    def _ordered(self) -> list[LoadedRule]:
        return sorted(self.rules, key=lambda r: (-r.rule.priority, r.rule.name))

    @staticmethod
    def _facts(path: Path, report: dict[str, Any]) -> ImageFacts | None:
        if not path.is_file():
            return None
        try:
            check_image(path)  # intake's own test: decodes to the last byte
            facts = read_facts(path)
        except BadImage as exc:
            report["errors"].append(f"{exc}: the job would fail ({exc.hint})")
            return None
        except Exception as exc:  # read_facts opens with Pillow, which raises many classes
            report["errors"].append(f"the image cannot be read ({exc}): the job would fail")
            return None
        report["image"] = {
            "width": facts.width,
            "height": facts.height,
            "orientation": facts.orientation,
            "description": facts.description,
            "comment": facts.comment,
        }
        return facts

    @staticmethod
    def _companions(path: Path, report: dict[str, Any]) -> Companions:
        try:
            companions = read_companions(path)
        except CompanionProblem as exc:
            report["errors"].append(f"{exc} (the job would fail; {exc.hint})")
            report["companions"] = {"files": [], "text": "", "overrides": None, "error": str(exc)}
            return Companions()
        report["companions"] = {
            "files": [str(p) for p in companions.files],
            "text": companions.text,
            "overrides": (
                companions.overrides.model_dump(mode="json", exclude_defaults=True)
                if companions.overrides is not None
                else None
            ),
            "error": None,
        }
        return companions

    def _verdict(
        self, loaded: LoadedRule, relative: PurePosixPath, winner: LoadedRule | None
    ) -> dict[str, Any]:
        rule = loaded.rule
        matches = rule_matches(rule, relative)
        if loaded is winner:
            matching = [r.rule for r in self.rules if rule_matches(r.rule, relative)]
            tied = sum(1 for r in matching if r.priority == rule.priority) > 1
            if len(matching) == 1:
                why = "the only matching rule"
            else:
                why = f"the highest priority among {len(matching)} matching rules"
                if tied:
                    why += f" (its name sorts first among those with priority {rule.priority})"
        elif not matches:
            why = _mismatch(rule, relative)
        else:
            assert winner is not None
            if rule.priority < winner.rule.priority:
                why = (
                    f"matches, but priority {rule.priority} is lower than "
                    f"{winner.rule.name}'s {winner.rule.priority}"
                )
            else:
                why = (
                    f"matches with the same priority {rule.priority}, but lost the tie on "
                    f"name: {winner.rule.name!r} sorts first"
                )
        return {
            "name": rule.name,
            "file": str(loaded.file),
            "priority": rule.priority,
            "matches": matches,
            "wins": loaded is winner,
            "why": why,
        }

    def _winner(
        self,
        loaded: LoadedRule,
        place: Place,
        facts: ImageFacts | None,
        companions: Companions,
        report: dict[str, Any],
    ) -> dict[str, Any]:
        rule = loaded.rule
        folder = self.settings.outbox / place.relative.parent
        # The drop's fate, as its last job applies it (variants leave it until then).
        fate = original_fate(rule, "", folder, place.relative.name, Path.exists)
        path = {SourceAction.MOVE: fate.dest, SourceAction.KEEP: place.path}.get(fate.action)
        original = {
            "action": str(fate.action),
            "path": str(path) if path is not None else None,
            "text": _FATE_TEXT[fate.action],
        }
        try:
            check_engine(rule.engine)
        except EngineUnavailable as exc:
            # The daemon's own start-up check: every image of this rule would fail.
            detail = f" [{exc.detail}]" if exc.detail else ""
            report["errors"].append(
                f"{exc}: every image of this rule would fail ({exc.hint}){detail}"
            )
        outputs = []
        for index, (variant, variant_rule) in enumerate(companions.apply(rule)):
            output = self._output(variant, variant_rule, place, folder, facts, companions)
            layer = rule.variants[index] if rule.variants else None
            output["param_sources"] = _sources(rule, companions.overrides, layer, variant)
            if report["exists"]:
                # With the image there, what fails here fails the job; for a path not
                # there yet it may only be the unknown size or EXIF.
                report["errors"].extend(output["errors"])
            outputs.append(output)
        return {
            "name": rule.name,
            "file": str(loaded.file),
            "priority": rule.priority,
            "engine": rule.engine,
            "model": rule.model,
            "preset": rule.preset,
            "source": rule.source,
            "original": original,
            "model_family": self._family(rule),
            "outputs": outputs,
        }

    def _output(
        self,
        variant: str,
        rule: Rule,
        place: Place,
        folder: Path,
        facts: ImageFacts | None,
        companions: Companions,
    ) -> dict[str, Any]:
        context = context_for(rule, place.relative, self.now, facts, companions.text, variant)
        if facts is None:
            # Unknown, not empty: a template that needs them fails here, naming them,
            # instead of showing "None" where the image's size would be.
            for key in IMAGE_FACTS:
                context.pop(key, None)
        errors: list[str] = []

        def attempt(step: Callable[[Rule, dict[str, Any]], str], what: str) -> str | None:
            try:
                return step(rule, context)
            except TemplateProblem as exc:
                errors.append(str(exc))
            except Exception as exc:  # e.g. arithmetic on a width that is unknown (None)
                template = getattr(rule, what) if what != "output.name" else rule.output.name
                errors.append(f"{what} template {template!r}: {type(exc).__name__}: {exc}")
            return None

        prompt = attempt(prompt_of, "prompt")
        negative = attempt(negative_prompt_of, "negative_prompt")
        video = sidecar = None
        taken = False
        stem = attempt(output_stem, "output.name")
        if stem is not None:
            video_path, sidecar_path = output_files(folder, stem, Path.exists)
            taken = video_path.stem != stem
            video, sidecar = str(video_path), str(sidecar_path)
        return {
            "variant": variant,
            "prompt": prompt,
            "negative_prompt": negative,
            "params": rule.resolved().model_dump(),
            "param_sources": {},
            "aspect": rule.aspect,
            "frame": self._frame(rule, facts),
            "memory": memory_class(rule),
            "video": video,
            "sidecar": sidecar,
            "name_taken": taken,
            "errors": errors,
        }

    def _frame(self, rule: Rule, facts: ImageFacts | None) -> dict[str, Any]:
        family = self._family(rule)
        rounding = family_rounding(family["pipeline"]) if family is not None else None
        width = facts.width if facts else None
        height = facts.height if facts else None
        frame = plan_frames(rule, width, height, rounding)
        return {
            "width": frame.width,
            "height": frame.height,
            "frames": frame.frames,
            "fps": frame.fps,
            "notes": list(frame.notes),
        }

    def _family(self, rule: Rule) -> dict[str, Any] | None:
        if rule.engine != "diffusion" or not rule.model:
            return None
        return model_family(rule.model, self.settings.base_dir)


_FATE_TEXT = {
    SourceAction.MOVE: "moves beside its video",
    SourceAction.KEEP: "stays in the inbox",
    SourceAction.DELETE: "is deleted once its video is published",
}


def _mismatch(rule: Rule, relative: PurePosixPath) -> str:
    folder = "" if str(relative.parent) == "." else relative.parent.as_posix()
    shown = f"folder {folder!r}" if folder else "the inbox root"
    if not any(folder_matches(g, folder) for g in rule.match.folders):
        return f"{shown} matches none of its folder globs: {', '.join(rule.match.folders)}"
    return (
        f"file name {relative.name!r} matches none of its patterns: "
        f"{', '.join(rule.match.patterns)}"
    )


def _sources(
    rule: Rule, overrides: ImageOverrides | None, variant: Variant | None, variant_name: str
) -> dict[str, str]:
    """Where each parameter's value comes from: preset < rule < image's .yaml < variant."""
    sources = {key: f"preset {rule.preset}" for key in Preset.model_fields}
    sources["seed"] = "not set"
    for key in rule.params.model_dump(exclude_none=True):
        sources[key] = "rule params"
    if overrides is not None:
        for key in overrides.params.model_dump(exclude_none=True):
            sources[key] = "image .yaml"
    if variant is not None:
        for key in variant.params.model_dump(exclude_none=True):
            sources[key] = f"variant {variant_name}"
        if variant.seed is not None:
            sources["seed"] = f"variant {variant_name}"
    return sources


__all__ = [
    "MEMORY_BY_RESOLUTION",
    "NO_RULE",
    "CheckReport",
    "Explainer",
    "PathProblem",
    "Place",
    "check_rules",
    "format_report",
    "locate",
    "model_family",
    "template_problems",
]
