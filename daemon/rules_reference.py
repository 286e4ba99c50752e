"""The README's rule reference, generated from the pydantic models themselves.

Every field of a rule file, a preset file and an image's ``<stem>.yaml`` is listed
with its type, the values it allows, its default and its ``description``, so the
reference cannot drift from what the loader accepts. ``python -m daemon.rules_reference``
prints it; ``--write README.md`` replaces the text between the README's markers.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .rules import BUILTIN_PRESETS, DEFAULT_PATTERNS, ImageOverrides, Preset, Rule

START = "<!-- rules-reference:start -->"
END = "<!-- rules-reference:end -->"
DASH = "\N{EN DASH}"

# Fields that are no part of any file: filled in by the loader.
HIDDEN: set[tuple[type[BaseModel], str]] = {(Rule, "preset_values")}
# Defaults the loader supplies where the model itself has none.
LOADER_DEFAULTS: dict[tuple[type[BaseModel], str], str] = {(Rule, "name"): "the file's stem"}

# (heading, model, what the file is): the three kinds of YAML file a user writes.
_FILES: list[tuple[str, type[BaseModel], str]] = [
    (
        "Rule files: `rules/<name>.yaml`",
        Rule,
        "One rule per file. A field not listed here is an error, reported with file, "
        "line and column (`i2vd rules check`).",
    ),
    (
        "Preset files: `rules/presets/<name>.yaml`",
        Preset,
        "Defines the preset `<name>` (letters, digits, `_ . -`) for rules' `preset`; "
        "the built-in names ("
        + ", ".join(f"`{name}`" for name in BUILTIN_PRESETS)
        + ") cannot be redefined.",
    ),
    ("Per-image overrides: `<stem>.yaml` beside the image", ImageOverrides, ""),
]


def rules_reference_markdown() -> str:
    """The rule reference as Markdown: one table per file kind and per nested block."""
    out = [
        "<!-- generated from daemon/rules/models.py by `python -m daemon.rules_reference`; "
        "edit the models, not this text -->",
    ]
    documented: dict[type[BaseModel], str] = {}
    for heading, model, about in _FILES:
        out.extend(_sections(heading, model, "", documented, about))
    return "\n".join(out).rstrip() + "\n"


def _sections(
    heading: str,
    model: type[BaseModel],
    prefix: str,
    documented: dict[type[BaseModel], str],
    about: str = "",
) -> list[str]:
    """The table of ``model``'s fields, then one section per nested block not yet shown."""
    documented.setdefault(model, prefix)
    lines = ["", f"#### {heading}", ""]
    intro = " ".join(part for part in (about, _doc(model)) if part)
    required = [
        n for n, f in _fields(model) if f.is_required() and (model, n) not in LOADER_DEFAULTS
    ]
    if intro:
        lines += [intro, ""]
    if required and len(required) == len(_fields(model)):
        lines += ["Every field is required.", ""]
    lines += [
        "| field | type | allowed | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    nested: list[tuple[str, type[BaseModel], str]] = []
    for name, info in _fields(model):
        dotted = f"{prefix}{name}"
        sub, many = _nested_model(info.annotation)
        if sub is not None:
            key = f"{dotted}[]" if many else dotted
            if sub in documented:
                shown = documented[sub].rstrip(".")
                kind = "list of mappings" if many else "mapping"
                row = [f"`{dotted}`", f"{kind}: as `{shown}`", "", f"as `{shown}`"]
            else:
                documented[sub] = f"{key}."
                nested.append((f"`{key}`", sub, f"{key}."))
                kind = "list of mappings" if many else "mapping"
                default = "none" if many else "below"
                row = [f"`{dotted}`", f"{kind} (below)", _allowed(info), default]
        else:
            row = [
                f"`{dotted}`",
                _type(info.annotation),
                _allowed(info),
                _default(model, name, info),
            ]
        row.append(_text(info.description or ""))
        lines.append("| " + " | ".join(row) + " |")
    for sub_heading, sub, sub_prefix in nested:
        lines.extend(_sections(sub_heading, sub, sub_prefix, documented))
    return lines


def _fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    return [(n, f) for n, f in model.model_fields.items() if (model, n) not in HIDDEN]


def _doc(model: type[BaseModel]) -> str:
    # Read from the class itself: pydantic's own docstring is not the model's.
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.split()).replace("``", "`")


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (and whether it holds a list of them)."""
    for arg in _non_null(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if get_origin(arg) is list:
            inner = get_args(arg)[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner, True
    return None, False


def _non_null(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _nullable(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


_TYPE_NAMES: dict[Any, str] = {str: "text", int: "integer", float: "number", bool: "true/false"}


def _type(annotation: Any) -> str:
    parts = [_type_of(a) for a in _non_null(annotation)]
    text = " or ".join(parts)
    return text + (" or null" if _nullable(annotation) else "")


def _type_of(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return _TYPE_NAMES.get(type(values[0]), "value")
    if get_origin(annotation) is list:
        return f"list of {_type_of(get_args(annotation)[0])}"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _allowed(info: FieldInfo) -> str:
    parts = []
    for arg in _non_null(info.annotation):
        literal = arg if get_origin(arg) is Literal else None
        if get_origin(arg) is list and get_origin(get_args(arg)[0]) is Literal:
            literal = get_args(arg)[0]
        if literal is not None:
            parts.append(", ".join(f"`{v}`" for v in get_args(literal)))
    parts.extend(_constraints(info))
    return _cell("; ".join(parts))


def _constraints(info: FieldInfo) -> list[str]:
    low = high = None
    min_len = max_len = None
    pattern = None
    for item in info.metadata:
        if isinstance(item, at.Ge):
            low = f"{item.ge}"
        elif isinstance(item, at.Gt):
            low = f"> {item.gt}"
        elif isinstance(item, at.Le):
            high = f"{item.le}"
        elif isinstance(item, at.Lt):
            high = f"< {item.lt}"
        elif isinstance(item, at.MinLen):
            min_len = item.min_length
        elif isinstance(item, at.MaxLen):
            max_len = item.max_length
        elif getattr(item, "pattern", None):
            pattern = item.pattern
    out = []
    if low is not None and high is not None and not low.startswith(">") and "<" not in high:
        out.append(f"{low}{DASH}{high}")
    else:
        if low is not None:
            out.append(low if low.startswith(">") else f">= {low}")
        if high is not None:
            out.append(high if high.startswith("<") else f"<= {high}")
    is_list = any(get_origin(a) is list for a in _non_null(info.annotation))
    unit = "items" if is_list else "characters"
    if min_len is not None and max_len is not None:
        out.append(f"{min_len}{DASH}{max_len} {unit}")
    elif min_len is not None:
        out.append(f"at least {min_len} {unit[:-1] if min_len == 1 else unit}")
    elif max_len is not None:
        out.append(f"at most {max_len} {unit}")
    if pattern:
        out.append(f"matching `{pattern}`")
    return out


def _default(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    if (model, name) in LOADER_DEFAULTS:
        return _text(LOADER_DEFAULTS[(model, name)])
    if info.is_required():
        return "required"
    factory: Callable[[], Any] | None = info.default_factory  # type: ignore[assignment]
    value = factory() if factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    return _cell(_yaml(value))


def _yaml(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        if not value:
            return "none"
        if tuple(value) == DEFAULT_PATTERNS:
            return " ".join(f"`{v}`" for v in value)
        return "`[" + ", ".join(_scalar(v) for v in value) + "]`"
    return f"`{_scalar(value)}`"


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        if value == "" or value.startswith(("*", "{", "[")) or ":" in value:
            return '"' + value + '"'
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _text(text: str) -> str:
    """Prose for a table cell: what Markdown would take for HTML or emphasis is escaped."""
    return _cell(text).replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")


def replace_between_markers(document: str, reference: str) -> str:
    """``document`` with the text between the markers replaced by ``reference``."""
    if START not in document or END not in document:
        raise ValueError(f"the markers {START} and {END} are missing")
    head, rest = document.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.rules_reference",
        description="Print the rule reference generated from the rule models.",
    )
    parser.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help=f"replace the text between {START} and {END} in FILE instead of printing",
    )
    args = parser.parse_args(argv)
    reference = rules_reference_markdown()
    if args.write is None:
        sys.stdout.write(reference)
        return 0
    try:
        text = args.write.read_text(encoding="utf-8")
        args.write.write_text(replace_between_markers(text, reference), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"rules_reference: {args.write}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
