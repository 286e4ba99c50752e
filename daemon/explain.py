"""What the rules would do, without doing it: ``i2vd rules check`` and ``rules explain``.

Both read the same rule files as the daemon, through the same loaders, and pick rules
with the same ``pick_rule``; nothing here queues, renders or moves a file. What a job
would produce (names, prompts, frame size and count, the original's fate) comes from
``plan.py``, the worker's own planning. Heavy engine packages (torch, diffusers) are
never imported: a model's family is read from its ``model_index.json``
(``model_info.py``), and whether its engine can run here from the installed packages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from jinja2 import TemplateAssertionError, TemplateSyntaxError, meta

from .companions import CompanionProblem, Companions, is_companion, read_companions
from .config import Settings
from .engines import EngineUnavailable, check_engine
from .images import BadImage, check_image, read_facts
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
from .problems import Problem
from .prompts import (
    ImageFacts,
    TemplateProblem,
    template_context,
    template_environment,
)
from .rules import (
    ImageOverrides,
    LoadedRule,
    Preset,
    Rule,
    RuleProblem,
    Variant,
    folder_matches,
    load_rules,
    pick_rule,
    preset_files,
    rule_files,
    rule_matches,
)
from .ruleset import rules_in_force
from .watch import is_candidate_name

NO_RULE = "no rule matches: the image would stay in the inbox"
# Template variables that only the image itself can tell.
IMAGE_FACTS = (*(f.name for f in dataclasses.fields(ImageFacts)), "orientation")

# --- rules check -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckReport:
    rules_dir: Path
    rule_files: int
    preset_files: int
    rules: list[LoadedRule]
    problems: list[RuleProblem]

    def _ok(self, files: list[Path]) -> int:
        bad = {p.file for p in self.problems}
        return sum(1 for path in files if path not in bad)

    def summary(self) -> str:
        parts = [_count(self._ok([r.file for r in self.rules]), "rule") + " ok"]
        if self.preset_files:
            parts.append(_count(self._ok(preset_files(self.rules_dir)), "preset") + " ok")
        if self.problems:
            files = len({p.file for p in self.problems})
            parts.append(f"{_count(len(self.problems), 'problem')} in {_count(files, 'file')}")
        else:
            parts.append("no problems")
        return ", ".join(parts)


def check_rules(rules_dir: Path) -> CheckReport:
    """Every problem of every rule and preset file in ``rules_dir``: what the daemon's
    loader reports, plus templates that could never render (syntax errors, unknown
    variables), which the loader accepts and every image would then fail on."""
    rules, problems = load_rules(rules_dir)
    for loaded in rules:
        problems.extend(template_problems(loaded))
    problems.sort(key=lambda p: (str(p.file), p.line, p.column))
    return CheckReport(
        rules_dir, len(rule_files(rules_dir)), len(preset_files(rules_dir)), rules, problems
    )


# The daemon's own template environment: what it rejects (its filters, its sandbox) is
# exactly what check reports.
_LINT = template_environment()


def template_variables() -> list[str]:
    """The variables every template may use (README: Templates)."""
    return sorted(template_context(PurePosixPath("a.jpg"), "rule", dt.datetime.now()))


def template_problems(loaded: LoadedRule) -> list[RuleProblem]:
    """Templates in a valid rule that fail for every image: a syntax error, an unknown
    filter or a variable that no image ever has."""
    rule = loaded.rule
    fields: list[tuple[tuple[str | int, ...], str]] = [
        (("prompt",), rule.prompt),
        (("negative_prompt",), rule.negative_prompt),
        (("output", "name"), rule.output.name),
    ]
    for index, variant in enumerate(rule.variants):
        for key in ("prompt", "negative_prompt"):
            value = getattr(variant, key)
            if value is not None:
                fields.append((("variants", index, key), value))
    known = set(template_variables()) | set(_LINT.globals)
    problems = []
    for loc, source in fields:
        message = _template_problem(source, known)
        if message:
            line, column = _position(loaded.file, loc)
            name = ".".join(str(part) for part in loc)
            problems.append(RuleProblem(loaded.file, line, column, name, message))
    return problems


def _template_problem(source: str, known: set[str]) -> str | None:
    try:
        unknown = sorted(meta.find_undeclared_variables(_LINT.parse(source)) - known)
        _LINT.from_string(source)  # unknown filters and tests are found when compiling
    except TemplateAssertionError as exc:  # a syntax error class, but no syntax error
        return f"template error: {exc.message}"
    except TemplateSyntaxError as exc:
        where = f" (line {exc.lineno} of the template)" if "\n" in source.strip() else ""
        return f"template syntax error{where}: {exc.message}"
    except Exception as exc:  # the compiler's other complaints, whatever their class
        return f"template error: {exc}"
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        return f"unknown template variable {names} (known: {', '.join(template_variables())})"
    return None


def _position(path: Path, loc: Sequence[str | int]) -> tuple[int, int]:
    """Line and column of a field's value in a rule file (1, 1 when not written there)."""
    try:
        node: yaml.Node | None = yaml.compose(path.read_text(encoding="utf-8"), yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError):
        return 1, 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
        if node is None:
            return 1, 1
    assert node is not None
    return node.start_mark.line + 1, node.start_mark.column + 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- rules explain: where a path is ------------------------------------------------


class PathProblem(Problem):
    """The path cannot be placed in any inbox."""


@dataclass(frozen=True)
class Place:
    inbox: Path
    relative: PurePosixPath

    @property
    def path(self) -> Path:
        return self.inbox / self.relative


def locate(arg: str, inboxes: Sequence[Path], cwd: Path) -> Place:
    """The inbox and inbox-relative path ``arg`` means: a path inside an inbox (absolute
    or from the working directory), else an inbox-relative path, looked up in the inbox
    that holds it or, for an image not there yet, the first inbox. A file that exists
    is preferred over a reading under which it would not."""
    given = Path(arg).expanduser()
    full = given if given.is_absolute() else cwd / given
    # Resolve the folder only: a symbolic link as the image is reported, not followed.
    full = full.parent.resolve() / full.name
    direct = next(
        (
            Place(inbox, PurePosixPath(full.relative_to(inbox).as_posix()))
            for inbox in inboxes
            if full.is_relative_to(inbox) and full != inbox
        ),
        None,
    )
    if given.is_absolute() or (direct is not None and os.path.lexists(full)):
        if direct is None:
            raise PathProblem(f"{arg} is outside every inbox ({_inbox_list(inboxes)})")
        return direct
    relative = PurePosixPath(given.as_posix())
    if ".." in relative.parts or str(relative) in ("", "."):
        if direct is not None:
            return direct
        raise PathProblem(f"{arg} is not a path inside an inbox ({_inbox_list(inboxes)})")
    for inbox in inboxes:
        if os.path.lexists(inbox / relative):
            return Place(inbox, relative)
    if direct is not None:
        return direct
    if full.exists():
        raise PathProblem(
            f"{arg} is outside every inbox ({_inbox_list(inboxes)}); to see what a drop "
            "would do, give the path it would have inside an inbox"
        )
    return Place(inboxes[0], relative)


def _inbox_list(inboxes: Sequence[Path]) -> str:
    return ", ".join(str(i) for i in inboxes)


def ignored_because(place: Place) -> str | None:
    """Why the watcher would never take this path, or None."""
    for part in place.relative.parts:
        if not is_candidate_name(part):
            return (
                f"{part!r} is a hidden, temporary or partial name: the watcher waits for it "
                "to be renamed"
            )
    if place.path.is_symlink():
        return "it is a symbolic link, which the watcher never follows"
    if is_companion(place.path):
        return "a .txt/.yaml file belongs to the image with its stem; it is never a job"
    return None


# --- rules explain: one path -------------------------------------------------------


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
        ignored = ignored_because(place)
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
            report["errors"].append(f"{exc}: every image of this rule would fail ({exc.hint})")
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


# --- rendering the report ----------------------------------------------------------


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
