"""Prompt and output-name templates, and the per-image facts they may use.

Templates render in Jinja2's sandbox with StrictUndefined, so a typo in a variable
name is an error naming it, never an empty string in a prompt. Everything a template
can see is built by ``template_context``; the README's variable table is tested
against it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .names import safe_stem
from .problems import Problem

_TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def template_environment() -> SandboxedEnvironment:
    """The environment every template renders in (``rules check`` parses with it)."""
    return _TEMPLATES


# Longest text taken from a `<stem>.txt` or an EXIF field: a prompt, not a document.
MAX_TEXT_CHARS = 2000


class TemplateProblem(Problem):
    """A prompt or output-name template could not be rendered for this image."""

    default_hint = (
        "fix the template in the rule file (README: Templates), then drop the image again"
    )


@dataclass(frozen=True)
class ImageFacts:
    """What the image itself tells a template. Unknown (a hypothetical path in
    ``rules explain``) is None for the size and empty for the texts."""

    width: int | None = None
    height: int | None = None
    description: str = ""  # EXIF ImageDescription
    comment: str = ""  # EXIF UserComment

    @property
    def orientation(self) -> str:
        if self.width is None or self.height is None:
            return ""
        if self.width == self.height:
            return "square"
        return "landscape" if self.width > self.height else "portrait"


def template_context(
    relative: PurePosixPath,
    rule_name: str,
    now: dt.datetime,
    facts: ImageFacts | None = None,
    text: str = "",
    variant: str = "",
) -> dict[str, Any]:
    """Every variable a template may use (README: Templates)."""
    facts = facts or ImageFacts()
    folder = "" if str(relative.parent) == "." else relative.parent.as_posix()
    return {
        # Any file name makes a usable output name: control characters replaced, a
        # long name shortened with a hash of the whole (README: Names).
        "stem": safe_stem(relative.stem, CONTEXT_NAME_BYTES),
        "name": safe_stem(relative.name, CONTEXT_NAME_BYTES),
        "ext": relative.suffix.lstrip("."),
        "folder": folder,
        "folders": list(relative.parent.parts) if folder else [],
        "rule": rule_name,
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H-%M-%S"),
        "width": facts.width,
        "height": facts.height,
        "orientation": facts.orientation,
        "description": facts.description,
        "comment": facts.comment,
        "text": text,
        "variant": variant,
    }


def render(template: str, context: Mapping[str, Any], what: str) -> str:
    try:
        return _TEMPLATES.from_string(template).render(**context).strip()
    except TemplateError as exc:
        # Jinja's own sentence names what is wrong ("'nope' is undefined") in words a
        # rule writer reads; the template itself goes to the detail.
        sentence = exc.message or type(exc).__name__
        raise TemplateProblem(
            f"{what} template of this image's rule could not be filled in: {sentence}",
            detail=f"template {template!r}: {type(exc).__name__}: {exc}",
        ) from None
    except Exception as exc:  # {{ 1 / 0 }}, {{ stem + 1 }}: still the template's fault
        raise TemplateProblem(
            f"{what} template of this image's rule could not be filled in",
            detail=f"template {template!r}: {type(exc).__name__}: {exc}",
        ) from None


def clean_text(raw: str) -> str:
    """Text from a file or EXIF as one prompt-safe line: control characters become
    spaces, runs of whitespace collapse, and it is cut at ``MAX_TEXT_CHARS``."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", raw)
    return re.sub(r"\s+", " ", text).strip()[:MAX_TEXT_CHARS]


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
NAME_LIMIT_BYTES = 200
# A file's stem or name in templates: leaves room in NAME_LIMIT_BYTES for the rest of
# an output name template (".{{ rule }}", a variant).
CONTEXT_NAME_BYTES = 150


def safe_output_name(rendered: str) -> str:
    """An output stem that cannot leave its folder or hide itself."""
    if not rendered or _UNSAFE_NAME.search(rendered) or rendered.startswith("."):
        raise TemplateProblem(
            "the rule's output name for this image is not a plain file name (it would hold "
            "a '/', a '\\' or a control character, or start with '.')",
            detail=f"output name {rendered!r}",
        )
    size = len(os.fsencode(rendered))  # bytes that are not UTF-8 count as one each
    if size > NAME_LIMIT_BYTES:
        raise TemplateProblem(
            f"the video's file name would be too long ({size} bytes; the limit is "
            f"{NAME_LIMIT_BYTES})",
            detail=f"output name {rendered!r}",
        )
    return rendered
