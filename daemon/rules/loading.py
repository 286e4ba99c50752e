"""Reading rule, preset and override files: YAML to models, with file:line errors.

One loader per kind of file, used by everything that reads them: ``rules check``,
``rules explain`` and the daemon's live rule set (``daemon.ruleset``), which only adds a
cache and a last good version per file on top. What an empty file means is decided
here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .models import BUILTIN_PRESETS, PRESET_NAME, ImageOverrides, LoadedRule, Preset, Rule


class ProblemKind(StrEnum):
    """What went wrong with a file; ``rules check`` has one exit code per kind."""

    READ = "read"  # cannot be read, or empty
    YAML = "yaml"
    SCHEMA = "schema"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class RuleProblem:
    file: Path
    line: int
    column: int
    field: str
    message: str
    kind: ProblemKind = ProblemKind.SCHEMA

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"


class RuleFileError(Exception):
    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# Valid YAML for a rule of all defaults, but far more often a save caught half-way
# (truncated, not yet written): never read as a rule, by the daemon or by `rules check`.
EMPTY_RULE_FILE = "the file is empty; write the rule's fields or remove it"


def read_file(path: Path) -> bytes:
    """A rule, preset or override file's bytes, or RuleFileError saying why not."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuleFileError([_read_problem(path, exc)]) from None


def parse_rule(
    path: Path, data: bytes, presets: Mapping[str, Preset] = BUILTIN_PRESETS
) -> LoadedRule:
    """One rule file's bytes as a rule, its presets looked up in ``presets``; raise
    RuleFileError naming file, line and field."""
    if not data.strip():
        raise RuleFileError([RuleProblem(path, 1, 1, "(file)", EMPTY_RULE_FILE, ProblemKind.READ)])

    def validate(node: yaml.Node | None, mapping: dict[str, Any]) -> LoadedRule:
        if "preset_values" in mapping:
            # Filled in by the loader from the named preset; never taken from a file.
            message = "unknown field; use 'preset' and 'params'"
            raise RuleFileError([RuleProblem(path, 1, 1, "preset_values", message)])
        mapping.setdefault("name", path.stem)
        return LoadedRule(_validate(Rule, mapping, path, node, {"presets": presets}), path)

    return _guarded(path, data, "a rule file", validate)


def parse_preset(path: Path, data: bytes) -> Preset:
    """One user preset's bytes: every Preset field."""
    return _guarded(path, data, "a preset file", lambda n, m: _validate(Preset, m, path, n))


def load_rule_file(path: Path, presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> LoadedRule:
    """Read, parse and validate one rule file; raise RuleFileError naming file, line and
    field."""
    return parse_rule(path, read_file(path), presets)


def load_preset_file(path: Path) -> Preset:
    """One user preset: ``<rules_dir>/presets/<name>.yaml`` holding every Preset field."""
    return parse_preset(path, read_file(path))


def load_overrides(path: Path) -> ImageOverrides:
    """An image's ``<stem>.yaml``: raise RuleFileError naming file, line and field. An
    empty one changes nothing."""
    return _guarded(
        path,
        read_file(path),
        "an image's .yaml",
        lambda node, mapping: _validate(ImageOverrides, mapping, path, node),
    )


def preset_name_problem(path: Path, taken: Mapping[str, Preset]) -> RuleProblem | None:
    """A preset is named by its file's stem: it must be a valid name and a new one."""
    name = path.stem
    if not re.match(PRESET_NAME, name):
        return RuleProblem(path, 1, 1, "(file)", "preset names use letters, digits, _ . -")
    if name in taken:
        owner = "built in" if name in BUILTIN_PRESETS else "defined twice (.yaml and .yml)"
        message = f"preset {name!r} is {owner}; rename the file"
        return RuleProblem(path, 1, 1, "(file)", message, ProblemKind.CONFLICT)
    return None


_T = TypeVar("_T")
_Model = TypeVar("_Model", bound=BaseModel)


def _guarded(
    path: Path, data: bytes, what: str, validate: Callable[[yaml.Node | None, dict[str, Any]], _T]
) -> _T:
    """``validate`` on the file's YAML, with any exception the YAML library lets out
    (PyYAML's constructors raise LookupError for some tagged scalars such as ``!!int``)
    turned into a problem of that file: one bad save must not stop a reload of the
    others, nor ``rules check``."""
    try:
        node, mapping = _parse_yaml(path, data, what)
        return validate(node, mapping)
    except RuleFileError:
        raise
    except Exception as exc:
        message = f"cannot be read as YAML ({type(exc).__name__}: {exc})"
        raise RuleFileError(
            [RuleProblem(path, 1, 1, "(yaml)", message, ProblemKind.YAML)]
        ) from None


def _read_problem(path: Path, exc: OSError | UnicodeDecodeError) -> RuleProblem:
    return RuleProblem(path, 1, 1, "(file)", f"cannot read: {exc}", ProblemKind.READ)


def _parse_yaml(path: Path, data: bytes, what: str) -> tuple[yaml.Node | None, dict[str, Any]]:
    """The file's YAML node tree (for line numbers) and its mapping."""
    try:
        # Universal newlines, as text-mode reading would: positions count "\n" only.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise RuleFileError([_read_problem(path, exc)]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        mapping = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:
        # A character YAML forbids: no mark, only a position in the text.
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"character U+{code:04X} is not allowed in YAML ({exc.reason})"
        raise RuleFileError([_yaml_problem(path, line, col, message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = getattr(exc, "problem", None) or str(exc)
        raise RuleFileError([_yaml_problem(path, line, col, reason)]) from None
    except (ValueError, LookupError, AttributeError, TypeError, RecursionError) as exc:
        # PyYAML builds tagged values with Python's constructors: "2024-13-01" raises
        # ValueError, "!!int" with no value IndexError, deep nesting RecursionError.
        message = f"unreadable value: {exc!r}"
        raise RuleFileError([_yaml_problem(path, 1, 1, message)]) from None
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        message = f"{what} holds a mapping (key: value lines)"
        raise RuleFileError([RuleProblem(path, 1, 1, "(file)", message)])
    return node, mapping


def _yaml_problem(path: Path, line: int, column: int, message: str) -> RuleProblem:
    return RuleProblem(path, line, column, "(yaml)", message, ProblemKind.YAML)


def _validate(
    model: type[_Model],
    data: dict[str, Any],
    path: Path,
    node: yaml.Node | None,
    context: dict[str, Any] | None = None,
) -> _Model:
    """``model`` from a file's mapping, or RuleFileError naming file, line and field."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise RuleFileError(_problems(path, node, exc)) from None


# --- a rules folder ------------------------------------------------------------------


def is_rule_file_name(name: str) -> bool:
    """Rule and preset files: ``*.yaml``/``*.yml``, not hidden. Hidden names are editors'
    temporaries and locks (``.#x.yaml``) and macOS metadata on shares (``._x.yaml``)."""
    return name.lower().endswith((".yaml", ".yml")) and not name.startswith(".")


def _yaml_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if is_rule_file_name(p.name) and p.is_file())
    except OSError:
        return []


def preset_files(rules_dir: Path) -> list[Path]:
    return _yaml_files(rules_dir / "presets")


def rule_files(rules_dir: Path) -> list[Path]:
    return _yaml_files(rules_dir)


def load_presets(rules_dir: Path) -> tuple[dict[str, Preset], list[RuleProblem]]:
    """The built-in presets plus the user's, each named by its file's stem."""
    presets = dict(BUILTIN_PRESETS)
    problems: list[RuleProblem] = []
    for path in preset_files(rules_dir):
        blocked = preset_name_problem(path, presets)
        if blocked is not None:
            problems.append(blocked)
            continue
        try:
            presets[path.stem] = load_preset_file(path)
        except RuleFileError as exc:
            problems.extend(exc.problems)
    return presets, problems


def load_rules(rules_dir: Path) -> tuple[list[LoadedRule], list[RuleProblem]]:
    """Every valid rule in ``rules_dir``; invalid files are returned as problems, not raised."""
    presets, problems = load_presets(rules_dir)
    loaded = []
    for path in rule_files(rules_dir):
        try:
            loaded.append(load_rule_file(path, presets))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    rules, conflicts = drop_conflicts(loaded)
    return rules, problems + conflicts


def drop_conflicts(loaded: Iterable[LoadedRule]) -> tuple[list[LoadedRule], list[RuleProblem]]:
    """Rules in file order, each name once: a later file reusing a name is a problem."""
    rules: list[LoadedRule] = []
    problems: list[RuleProblem] = []
    seen: dict[str, Path] = {}
    for item in sorted(loaded, key=lambda r: r.file):
        name = item.rule.name
        if name in seen:
            message = f"rule name {name!r} is already used by {seen[name]}"
            problems.append(RuleProblem(item.file, 1, 1, "name", message, ProblemKind.CONFLICT))
            continue
        seen[name] = item.file
        rules.append(item)
    return rules, problems


def _problems(path: Path, root: yaml.Node | None, exc: ValidationError) -> list[RuleProblem]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Model-level validators report at the mapping they validate.
        # Keys come from the user's file: one that is not plain text is shown quoted,
        # so a problem stays one line and no control character reaches a terminal.
        field = ".".join(str(p) if str(p).isprintable() else repr(p) for p in loc) or "(rule)"
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
