"""Rule files: pydantic models, YAML loading with file:line errors, matching, templates.

Pure: nothing here touches the queue, and the only files read are rule files.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.tif", "*.tiff")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preset(_Strict):
    resolution: Literal[256, 512, 768, 1024]
    frames: int = Field(ge=8, le=32)
    fps: int = Field(ge=4, le=24)
    steps: int = Field(ge=10, le=100)
    guidance: float = Field(ge=1.0, le=20.0)


# The reference I2VGen-XL tool's presets.
BUILTIN_PRESETS: dict[str, Preset] = {
    "quick": Preset(resolution=512, frames=8, fps=8, steps=30, guidance=9.0),
    "standard": Preset(resolution=512, frames=16, fps=8, steps=50, guidance=9.0),
    "high": Preset(resolution=768, frames=24, fps=8, steps=80, guidance=9.0),
}


class ParamOverrides(_Strict):
    resolution: Literal[256, 512, 768, 1024] | None = None
    frames: int | None = Field(None, ge=8, le=32)
    fps: int | None = Field(None, ge=4, le=24)
    steps: int | None = Field(None, ge=10, le=100)
    guidance: float | None = Field(None, ge=1.0, le=20.0)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)


class Match(_Strict):
    folders: list[str] = Field(default_factory=lambda: ["**"], min_length=1)
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS), min_length=1)


Effect = Literal["zoom_in", "zoom_out", "pan_left", "pan_right", "pan_up", "pan_down"]
Easing = Literal["linear", "ease_in", "ease_out", "ease_in_out"]


class MotionSettings(_Strict):
    """How the CPU motion engine moves the camera over the still."""

    effect: Effect = "zoom_in"
    zoom: float = Field(1.25, ge=1.0, le=4.0)
    easing: Easing = "ease_in_out"
    fade_in: float = Field(0.0, ge=0.0, le=10.0, description="seconds")
    fade_out: float = Field(0.0, ge=0.0, le=10.0, description="seconds")
    interpolate_fps: int | None = Field(
        None, ge=8, le=60, description="re-time through ffmpeg minterpolate to this rate"
    )

    @model_validator(mode="after")
    def _pan_needs_room(self) -> MotionSettings:
        if self.effect.startswith("pan_") and self.zoom <= 1.0:
            raise ValueError("a pan needs zoom > 1.0 so the window has room to move")
        return self


class OutputSettings(_Strict):
    name: str = "{{ stem }}.{{ rule }}"
    format: Literal["mp4"] = "mp4"


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    match: Match = Field(default_factory=Match)
    priority: int = 0
    engine: Literal["diffusion", "motion"] = "motion"
    model: str | None = None
    preset: str = "standard"
    prompt: str = ""
    negative_prompt: str = ""
    params: ParamOverrides = Field(default_factory=ParamOverrides)
    aspect: Literal["square", "source"] = "square"
    output: OutputSettings = Field(default_factory=OutputSettings)
    motion: MotionSettings = Field(default_factory=MotionSettings)

    @model_validator(mode="after")
    def _engine_needs(self) -> Rule:
        if self.engine == "diffusion" and not self.model:
            raise ValueError("engine 'diffusion' needs 'model' (a local folder or hub id)")
        if self.preset not in BUILTIN_PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {', '.join(BUILTIN_PRESETS)}")
        return self

    def resolved(self) -> ResolvedParams:
        """The preset with this rule's ``params`` laid over it."""
        base = BUILTIN_PRESETS[self.preset].model_dump()
        base.update(self.params.model_dump(exclude_none=True))
        return ResolvedParams(**base)

    def content_hash(self) -> str:
        """Changes whenever anything that shapes the output changes: part of job identity."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ResolvedParams(_Strict):
    resolution: int
    frames: int
    fps: int
    steps: int
    guidance: float
    seed: int | None = None


@dataclass(frozen=True)
class LoadedRule:
    rule: Rule
    file: Path


@dataclass(frozen=True)
class RuleProblem:
    file: Path
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"


class RuleFileError(Exception):
    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# --- loading -----------------------------------------------------------------


def load_rule_file(path: Path) -> LoadedRule:
    """Parse and validate one rule file; raise RuleFileError naming file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([RuleProblem(path, 1, 1, "(file)", f"cannot read: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = getattr(exc, "problem", None) or str(exc)
        raise RuleFileError([RuleProblem(path, line, col, "(yaml)", reason)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RuleFileError([RuleProblem(path, 1, 1, "(file)", "a rule file holds a mapping")])
    data.setdefault("name", path.stem)
    try:
        return LoadedRule(Rule.model_validate(data), path)
    except ValidationError as exc:
        raise RuleFileError(_problems(path, node, exc)) from None


def load_rules(rules_dir: Path) -> tuple[list[LoadedRule], list[RuleProblem]]:
    """Every valid rule in ``rules_dir``; invalid files are returned as problems, not raised."""
    rules: list[LoadedRule] = []
    problems: list[RuleProblem] = []
    seen: dict[str, Path] = {}
    files = sorted([*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")])
    for path in files:
        try:
            loaded = load_rule_file(path)
        except RuleFileError as exc:
            problems.extend(exc.problems)
            continue
        if loaded.rule.name in seen:
            problems.append(
                RuleProblem(
                    path,
                    1,
                    1,
                    "name",
                    f"rule name {loaded.rule.name!r} is already used by {seen[loaded.rule.name]}",
                )
            )
            continue
        seen[loaded.rule.name] = path
        rules.append(loaded)
    return rules, problems


def _problems(path: Path, root: yaml.Node | None, exc: ValidationError) -> list[RuleProblem]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Model-level validators report at the mapping they validate.
        field = ".".join(str(p) for p in loc) or "(rule)"
        node = _node_at(root, loc)
        line, col = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (1, 1)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the README's rule schema)"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        out.append(RuleProblem(path, line, col, field, message))
    return out


def _node_at(node: yaml.Node | None, loc: Sequence[int | str]) -> yaml.Node | None:
    """The YAML node a pydantic error location points at, or the deepest ancestor that
    exists when the location is missing from the file."""
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    # A scalar is pointed at itself; a block value at its key, since
                    # the block may only begin on a later line.
                    node = value if not last or isinstance(value, yaml.ScalarNode) else key
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


# --- matching ----------------------------------------------------------------


def folder_matches(glob: str, folder: str) -> bool:
    """Match an inbox-relative folder against a glob where ``**`` spans any number of
    folders, none included (so ``people/**`` matches ``people`` and all below it)."""
    return _segments_match(
        [p.lower() for p in glob.split("/") if p], [p.lower() for p in folder.split("/") if p]
    )


def _segments_match(globs: list[str], parts: list[str]) -> bool:
    if not globs:
        return not parts
    head, rest = globs[0], globs[1:]
    if head == "**":
        return any(_segments_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _segments_match(rest, parts[1:])


def rule_matches(rule: Rule, relative: PurePosixPath) -> bool:
    folder = "" if str(relative.parent) == "." else relative.parent.as_posix()
    name = relative.name.lower()
    return any(folder_matches(g, folder) for g in rule.match.folders) and any(
        fnmatch.fnmatchcase(name, p.lower()) for p in rule.match.patterns
    )


def pick_rule(rules: Iterable[LoadedRule], relative: PurePosixPath) -> LoadedRule | None:
    """The matching rule with the highest priority; ties go to the name that sorts first."""
    matching = [r for r in rules if rule_matches(r.rule, relative)]
    if not matching:
        return None
    return min(matching, key=lambda r: (-r.rule.priority, r.rule.name))


# --- templates ---------------------------------------------------------------

_TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class TemplateProblem(Exception):
    """A prompt or output-name template could not be rendered for this image."""

    hint = "fix the template in the rule file (README: Templates), then drop the image again"


def template_context(relative: PurePosixPath, rule_name: str, now: dt.datetime) -> dict[str, Any]:
    folder = "" if str(relative.parent) == "." else relative.parent.as_posix()
    return {
        "stem": relative.stem,
        "name": relative.name,
        "ext": relative.suffix.lstrip("."),
        "folder": folder,
        "folders": list(relative.parent.parts) if folder else [],
        "rule": rule_name,
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H-%M-%S"),
    }


def render(template: str, context: Mapping[str, Any], what: str) -> str:
    try:
        return _TEMPLATES.from_string(template).render(**context).strip()
    except TemplateError as exc:
        raise TemplateProblem(f"{what} template {template!r}: {exc}") from None


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_output_name(rendered: str) -> str:
    """An output stem that cannot leave its folder or hide itself."""
    if not rendered or _UNSAFE_NAME.search(rendered) or rendered.startswith("."):
        raise TemplateProblem(
            f"output name {rendered!r} is not a plain file name "
            "(no '/', '\\', control characters, or leading '.')"
        )
    if len(rendered.encode()) > 200:
        raise TemplateProblem(f"output name is {len(rendered.encode())} bytes; the limit is 200")
    return rendered
