"""``i2vd rules check``: every problem of every rule and preset file, without running.

What the daemon's loader reports, plus templates that could never render, which the
loader accepts and every image would then fail on. Checked with the daemon's own
template environment, so what it rejects is what the daemon rejects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml
from jinja2 import TemplateAssertionError, TemplateSyntaxError, meta

from .prompts import template_context, template_environment
from .rules import LoadedRule, RuleProblem, load_rules, preset_files, rule_files


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


__all__ = ["CheckReport", "check_rules", "template_problems", "template_variables"]
