"""Prompt and output-name templates, and the image facts they can use."""

from __future__ import annotations

import datetime as dt
from pathlib import PurePosixPath

import pytest

from daemon.prompts import (
    ImageFacts,
    TemplateProblem,
    render,
    safe_output_name,
    template_context,
)

# --- templates -----------------------------------------------------------------

NOW = dt.datetime(2024, 3, 9, 7, 5, 1)


def test_template_context() -> None:
    ctx = template_context(PurePosixPath("people/kids/Anna.Beach.JPG"), "wave", NOW)
    assert ctx == {
        "stem": "Anna.Beach",
        "name": "Anna.Beach.JPG",
        "ext": "JPG",
        "folder": "people/kids",
        "folders": ["people", "kids"],
        "rule": "wave",
        "date": "2024-03-09",
        "time": "07-05-01",
        "width": None,
        "height": None,
        "orientation": "",
        "description": "",
        "comment": "",
        "text": "",
        "variant": "",
    }
    root = template_context(PurePosixPath("a.png"), "r", NOW)
    assert (root["folder"], root["folders"]) == ("", [])


def test_render_all_variables() -> None:
    ctx = template_context(PurePosixPath("people/anna_beach.jpg"), "wave", NOW)
    text = render("{{ stem }}|{{ name }}|{{ folder }}|{{ rule }}|{{ date }}", ctx, "prompt")
    assert text == "anna_beach|anna_beach.jpg|people|wave|2024-03-09"
    assert render("  {{ stem | replace('_', ' ') }} waving  ", ctx, "prompt") == "anna beach waving"


def test_render_unknown_variable_names_it() -> None:
    ctx = template_context(PurePosixPath("a.jpg"), "r", NOW)
    with pytest.raises(TemplateProblem) as err:
        render("{{ stem }} {{ colour }}", ctx, "prompt")
    assert "'colour' is undefined" in str(err.value)
    assert str(err.value).startswith("prompt template")


def test_render_syntax_error_and_sandbox() -> None:
    ctx = template_context(PurePosixPath("a.jpg"), "r", NOW)
    with pytest.raises(TemplateProblem, match="output name template"):
        render("{{ stem ", ctx, "output name")
    with pytest.raises(TemplateProblem):
        render("{{ stem.__class__.__mro__[1].__subclasses__() }}", ctx, "prompt")


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "a/b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "tab\there",
        "\x7fdel",
        ".hidden",
        "..",
        "",
        "x" * 201,
        "é" * 101,
    ],
)
def test_safe_output_name_rejects(bad: str) -> None:
    with pytest.raises(TemplateProblem):
        safe_output_name(bad)


def test_safe_output_name_length_message() -> None:
    with pytest.raises(TemplateProblem, match="202 bytes; the limit is 200"):
        safe_output_name("é" * 101)


@pytest.mark.parametrize("good", ["café 照片", "a.motion", "x" * 200, "é" * 100, "a..b", "-x"])
def test_safe_output_name_accepts(good: str) -> None:
    assert safe_output_name(good) == good


@pytest.mark.parametrize(
    ("size", "orientation"),
    [((640, 480), "landscape"), ((480, 640), "portrait"), ((500, 500), "square")],
)
def test_image_facts_in_context(size: tuple[int, int], orientation: str) -> None:
    facts = ImageFacts(*size, description="A beach", comment="sunset")
    ctx = template_context(PurePosixPath("a.jpg"), "r", NOW, facts, text="waves", variant="v2")
    assert (ctx["width"], ctx["height"], ctx["orientation"]) == (*size, orientation)
    assert (ctx["description"], ctx["comment"], ctx["text"], ctx["variant"]) == (
        "A beach",
        "sunset",
        "waves",
        "v2",
    )


def test_prompt_from_every_source() -> None:
    facts = ImageFacts(1920, 1080, description="Anna on the pier", comment="golden hour")
    ctx = template_context(PurePosixPath("people/anna.jpg"), "wave", NOW, facts, text="she waves")
    template = (
        "{{ text or description }}, {{ comment }}, {{ orientation }} {{ width }}x{{ height }}"
        "{% if 'people' in folders %}, a portrait{% endif %}"
    )
    assert render(template, ctx, "prompt") == (
        "she waves, golden hour, landscape 1920x1080, a portrait"
    )


@pytest.mark.parametrize(
    "hostile",
    ["../../etc/x", "/etc/passwd", "a\x00b", "..", "sub/dir", "C:\\x", "\x1b[31m"],
)
def test_hostile_output_templates_are_contained(hostile: str) -> None:
    ctx = template_context(PurePosixPath("a.jpg"), "r", NOW)
    with pytest.raises(TemplateProblem):
        safe_output_name(render(hostile, ctx, "output.name"))


@pytest.mark.parametrize("template", ["{{ 1 / 0 }}", "{{ stem + 1 }}", "{{ folders[9] }}"])
def test_template_runtime_errors_are_template_problems(template: str) -> None:
    ctx = template_context(PurePosixPath("a.jpg"), "r", NOW)
    with pytest.raises(TemplateProblem, match="prompt template"):
        render(template, ctx, "prompt")
