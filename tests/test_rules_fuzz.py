"""Whatever text lands in a rule, preset or image .yaml file, loading it either works or
raises RuleFileError whose problems read `file:line:column: field: message` on one line:
never another exception, never a message that breaks the one-problem-per-line output of
`i2vd rules check`."""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from daemon.cli import main
from daemon.explain import check_rules
from daemon.rules import (
    Rule,
    RuleFileError,
    RuleProblem,
    load_overrides,
    load_preset_file,
    load_rule_file,
)

# No example database: the suite leaves no .hypothesis folder in the checkout.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SHIPPED = [p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.yaml"))]
SEEDS = [
    *SHIPPED,
    # The README's kinds of file: a full rule, a preset, an image's overrides.
    "name: wave\nmatch:\n  folders: ['people/**']\n  patterns: ['*.jpg']\npriority: 10\n"
    "engine: motion\npreset: standard\nprompt: '{{ stem }} waving'\n"
    "params: {resolution: 512, frames: 16, fps: 8, steps: 50, guidance: 9.0, seed: 42}\n"
    "aspect: square\noutput: {name: '{{ stem }}.{{ rule }}', format: mp4}\n"
    "variants:\n  - {seed: 1}\n  - {name: calm, seed: 2, prompt: 'a calm sea'}\n"
    "motion: {effect: pan_right, zoom: 1.3, easing: ease_in_out, fade_in: 0.5}\n",
    "resolution: 256\nframes: 12\nfps: 12\nsteps: 25\nguidance: 7.5\n",
    "prompt: '{{ text }}, golden hour'\nnegative_prompt: blurry\n"
    "params: {frames: 24, seed: 7}\naspect: source\n",
]

# Text without surrogates (which cannot be written as UTF-8).
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
yamlish = st.lists(
    st.sampled_from(
        [
            ":",
            ": ",
            " ",
            "  ",
            "\n",
            "\t",
            "- ",
            "-",
            "{",
            "}",
            "[",
            "]",
            ",",
            "'",
            '"',
            "#",
            "&a ",
            "*a",
            "!!str ",
            "!!int ",
            "!!timestamp ",
            "!!binary ",
            "!!python/object ",
            "!!set ",
            "? ",
            "|",
            ">",
            "---",
            "...",
            "%YAML 1.1",
            "\\",
            "\x00",
            "\ufeff",
            "name",
            "match",
            "folders",
            "patterns",
            "priority",
            "engine",
            "model",
            "preset",
            "prompt",
            "params",
            "frames",
            "seed",
            "resolution",
            "variants",
            "motion",
            "zoom",
            "effect",
            "pan_left",
            "output",
            "source",
            "keep",
            "diffusion",
            "ladder",
            "preset_values",
            "10",
            "-1",
            "1e999",
            "0x1F",
            ".nan",
            "2024-13-01",
            "null",
            "~",
            "yes",
            "on",
            "512",
            "9.0",
            "{{ stem }}",
            "**",
            "é",
            "\u2028",
            "\x85",
        ]
    ),
    max_size=60,
).map("".join)

FIELDS = [
    "name",
    "match",
    "folders",
    "patterns",
    "priority",
    "engine",
    "model",
    "preset",
    "prompt",
    "negative_prompt",
    "params",
    "resolution",
    "frames",
    "fps",
    "steps",
    "guidance",
    "seed",
    "aspect",
    "output",
    "format",
    "source",
    "variants",
    "motion",
    "effect",
    "zoom",
    "easing",
    "fade_in",
    "fade_out",
    "interpolate_fps",
    "diffusion",
    "dtype",
    "variant",
    "ladder",
    "decode_chunk_size",
    "motion_bucket_id",
    "noise_aug_strength",
    "min_frames",
    "min_resolution",
    "preset_values",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from(
        [
            "motion",
            "diffusion",
            "square",
            "source",
            "zoom_in",
            "pan_up",
            "keep",
            "quick",
            "standard",
            "{{ stem }}",
            "{{ width // 2 }}",
            "**",
            "*.jpg",
            "",
        ]
    ),
    any_text,
)
keys = st.one_of(st.sampled_from(FIELDS), any_text, st.integers(), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=20,
)
near_rule = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["a", "b-1", "x y", ""]), any_text),
        "match": st.fixed_dictionaries(
            {},
            optional={
                "folders": st.lists(any_text, max_size=3),
                "patterns": st.lists(st.sampled_from(["*.jpg", "*", ""]), max_size=3),
            },
        ),
        "priority": st.one_of(st.integers(), st.text(max_size=5)),
        "engine": st.sampled_from(["motion", "diffusion", "gpu"]),
        "model": st.one_of(st.none(), st.sampled_from(["m", "./models/x"])),
        "preset": st.sampled_from(["quick", "standard", "high", "mine", 3]),
        "prompt": st.sampled_from(["{{ stem }}", "{{ stem ", "{{ nope }}", "{{ 1 / 0 }}"]),
        "params": st.dictionaries(
            st.sampled_from(["resolution", "frames", "fps", "steps", "guidance", "seed", "x"]),
            st.one_of(st.integers(-10, 2**33), st.floats(), st.none()),
            max_size=4,
        ),
        "aspect": st.sampled_from(["square", "source", "wide"]),
        "source": st.sampled_from(["move", "keep", "delete", "copy"]),
        "variants": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["v", "v", "calm", "-bad", None]),
                    "seed": st.integers(-1, 2**33),
                    "params": st.dictionaries(
                        st.sampled_from(["frames", "fps"]), st.integers(0, 64), max_size=2
                    ),
                },
            ),
            max_size=20,
        ),
        "motion": st.fixed_dictionaries(
            {},
            optional={
                "effect": st.sampled_from(["zoom_in", "pan_left", "spin"]),
                "zoom": st.floats(0, 5),
                "interpolate_fps": st.integers(0, 100),
            },
        ),
        "diffusion": st.fixed_dictionaries(
            {},
            optional={
                "ladder": st.lists(
                    st.sampled_from(["vae_slicing", "fewer_frames", "oops"]), max_size=25
                ),
                "min_resolution": st.sampled_from([256, 300]),
            },
        ),
        "preset_values": st.just({"resolution": 256}),
    },
)
structured = st.one_of(values, near_rule).map(
    lambda data: yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A real file with a few characters or lines deleted, duplicated or replaced."""
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "insert", "line", "swap"]))
        if how == "delete":
            text = text[:at] + text[at + 1 :]
        elif how == "duplicate":
            text = text[:at] + text[at] + text[at:]
        elif how == "insert":
            char = draw(
                st.sampled_from(
                    [
                        ":",
                        " ",
                        "\t",
                        "-",
                        "{",
                        "[",
                        "'",
                        '"',
                        "\n",
                        "&",
                        "*",
                        "!",
                        "%",
                        "@",
                        "`",
                        "|",
                        "x",
                        "0",
                    ]
                )
            )
            text = text[:at] + char + text[at:]
        elif how == "line":
            lines = text.splitlines(keepends=True)
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index]) if draw(st.booleans()) else lines.pop(index)
            text = "".join(lines)
        else:
            j = draw(st.integers(0, len(text) - 1))
            chars = list(text)
            chars[at], chars[j] = chars[j], chars[at]
            text = "".join(chars)
    return text


any_yaml = st.one_of(any_text, yamlish, structured, mutated())
PROBLEM = re.compile(r"(?P<file>.+):(?P<line>[0-9]+):(?P<column>[0-9]+): (?P<rest>.+)", re.S)


def assert_well_formed(problem: RuleProblem, path: Path, text: str) -> None:
    line = str(problem)
    assert len(line.splitlines()) == 1, f"a problem spans several lines: {line!r}"
    assert problem.file == path
    assert problem.kind in ("read", "yaml", "schema", "conflict")
    assert problem.field and problem.message
    # YAML 1.1 counts NEL, LS and PS as line breaks too.
    breaks = len(re.findall("\r\n|[\n\r\x85\u2028\u2029]", text))
    assert 1 <= problem.line <= breaks + 2 and problem.column >= 1
    assert line == f"{path}:{problem.line}:{problem.column}: {problem.field}: {problem.message}"
    assert PROBLEM.fullmatch(line)


def load_or_problems(load: Callable[[Path], Any], text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load(path)
        except RuleFileError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert_well_formed(problem, path, text)


@FUZZ
@given(any_yaml)
def test_any_rule_file_loads_or_reports(text: str) -> None:
    load_or_problems(load_rule_file, text)


@FUZZ
@given(any_yaml)
def test_any_preset_file_loads_or_reports(text: str) -> None:
    load_or_problems(load_preset_file, text)


@FUZZ
@given(any_yaml)
def test_any_image_overrides_load_or_report(text: str) -> None:
    load_or_problems(load_overrides, text)


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_load_or_report(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_bytes(data)
        for load in (load_rule_file, load_preset_file, load_overrides):
            try:
                load(path)
            except RuleFileError as exc:
                for problem in exc.problems:
                    assert_well_formed(problem, path, data.decode("utf-8", "replace"))


@FUZZ
@given(near_rule)
def test_valid_rules_survive_a_round_trip(data: dict[str, Any]) -> None:
    """A rule that loads, dumped and loaded again, is the same rule."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            rule = load_rule_file(path).rule
        except RuleFileError:
            return
        dumped = rule.model_dump(mode="json", exclude={"preset_values"})
        path.write_text(yaml.safe_dump(dumped), encoding="utf-8")
        assert load_rule_file(path).rule == rule
        assert Rule.model_validate(rule.model_dump()) == rule


EXIT = {"read": 4, "yaml": 4, "schema": 5, "conflict": 6}


@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.lists(any_yaml, min_size=1, max_size=3),
    st.lists(any_yaml, max_size=2),
)
def test_rules_check_on_a_fuzzed_folder(rules: list[str], presets: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for index, text in enumerate(rules):
            (root / f"r{index}.yaml").write_text(text, encoding="utf-8")
        (root / "dup.yaml").write_text(rules[0], encoding="utf-8")  # same name: a conflict
        (root / "presets").mkdir()
        for index, text in enumerate(presets):
            (root / "presets" / f"p{index}.yaml").write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["rules", "check", str(root)])
        problems = check_rules(root).problems
        assert out.getvalue() == "".join(f"{p}\n" for p in problems)
        assert code == min((EXIT[p.kind] for p in problems), default=0)
        for problem in problems:
            assert PROBLEM.fullmatch(str(problem))
            assert len(str(problem).splitlines()) == 1
        summary = err.getvalue().splitlines()[0]
        assert re.fullmatch(
            r"\d+ rules? ok(, \d+ presets? ok)?, (no problems|\d+ problems? "
            r"in \d+ files?)",
            summary,
        )


def test_refused_character_is_one_problem_line(tmp_path: Path) -> None:
    """A control character YAML refuses is reported on one line, where it is."""
    path = tmp_path / "r.yaml"
    path.write_text("name: a\nprompt: x\x1fy\n", encoding="utf-8")
    with pytest.raises(RuleFileError) as err:
        load_rule_file(path)
    [problem] = err.value.problems
    assert str(problem) == (
        f"{path}:2:10: (yaml): character U+001F is not allowed in YAML "
        "(special characters are not allowed)"
    )


@pytest.mark.parametrize("value", ["!!int", "!!float", "!!bool maybe", "!!timestamp"])
def test_tagged_scalar_is_a_yaml_problem(tmp_path: Path, value: str) -> None:
    """An explicitly tagged scalar PyYAML cannot build is a problem of that file, like
    `!!timestamp 2024-13-01` already is, not an exception out of the loader."""
    path = tmp_path / "r.yaml"
    path.write_text(f"name: a\npriority: {value}\n", encoding="utf-8")
    with pytest.raises(RuleFileError) as err:
        load_rule_file(path)
    [problem] = err.value.problems
    assert (problem.kind, problem.field) == ("yaml", "(yaml)")


def test_unknown_key_with_a_line_break_is_one_problem_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text('name: a\n"pri\\nority": 1\n', encoding="utf-8")
    with pytest.raises(RuleFileError) as err:
        load_rule_file(path)
    [problem] = err.value.problems
    assert len(str(problem).splitlines()) == 1
    assert problem.field.isprintable()
