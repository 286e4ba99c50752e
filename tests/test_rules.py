"""Rule files: loading, presets, file:line errors, matching, templates and output names."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from daemon.rules import (
    BUILTIN_PRESETS,
    DEFAULT_PATTERNS,
    LoadedRule,
    Rule,
    RuleFileError,
    RuleProblem,
    folder_matches,
    load_rule_file,
    load_rules,
    pick_rule,
    rule_matches,
)

REPO = Path(__file__).resolve().parent.parent

WAVE = """\
name: wave
match:
  folders: ["people/**"]
  patterns: ["*.jpg", "*.png"]
priority: 10
engine: motion
preset: high
prompt: "{{ stem }} smiling"
negative_prompt: "blurry"
params: {frames: 12, seed: 42}
aspect: source
output: {name: "{{ stem }}.{{ rule }}", format: mp4}
motion: {effect: pan_left, zoom: 1.5, easing: linear, fade_in: 0.5}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[RuleProblem]:
    with pytest.raises(RuleFileError) as err:
        load_rule_file(path)
    assert str(err.value) == "\n".join(str(p) for p in err.value.problems)
    return err.value.problems


def one_problem(path: Path) -> RuleProblem:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].file == path
    return problems[0]


def loaded(
    name: str,
    priority: int = 0,
    folders: tuple[str, ...] = ("**",),
    patterns: tuple[str, ...] = DEFAULT_PATTERNS,
) -> LoadedRule:
    rule = Rule(
        name=name, priority=priority, match={"folders": list(folders), "patterns": list(patterns)}
    )
    return LoadedRule(rule, Path(f"/rules/{name}.yaml"))


# --- loading -----------------------------------------------------------------


def test_load_full_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "wave.yaml", WAVE)
    result = load_rule_file(path)
    rule = result.rule
    assert result.file == path
    assert rule.name == "wave"
    assert rule.match.folders == ["people/**"]
    assert rule.match.patterns == ["*.jpg", "*.png"]
    assert rule.priority == 10
    assert rule.engine == "motion"
    assert rule.prompt == "{{ stem }} smiling"
    assert rule.aspect == "source"
    assert rule.motion.effect == "pan_left"
    assert rule.motion.zoom == 1.5
    assert rule.motion.fade_in == 0.5
    resolved = rule.resolved()
    # high = 768p, 24 frames, 80 steps, 8 fps, guidance 9.0; params override frames and seed.
    assert resolved.model_dump() == {
        "resolution": 768,
        "frames": 12,
        "fps": 8,
        "steps": 80,
        "guidance": 9.0,
        "seed": 42,
    }


def test_name_defaults_to_file_stem_and_defaults_apply(tmp_path: Path) -> None:
    rule = load_rule_file(write(tmp_path, "slow-zoom.yaml", "engine: motion\n")).rule
    assert rule.name == "slow-zoom"
    assert rule.match.folders == ["**"]
    assert tuple(rule.match.patterns) == DEFAULT_PATTERNS
    assert rule.preset == "standard"
    assert rule.aspect == "square"
    assert rule.output.name == "{{ stem }}.{{ rule }}"
    assert rule.motion.effect == "zoom_in"


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_file_is_a_problem_not_a_rule_of_defaults(tmp_path: Path, text: str) -> None:
    """Far more often a save caught half-way than a wish for every default."""
    path = write(tmp_path, "empty.yaml", text)
    with pytest.raises(RuleFileError) as raised:
        load_rule_file(path)
    assert [str(p) for p in raised.value.problems] == [
        f"{path}:1:1: (file): the file is empty; write the rule's fields or remove it"
    ]
    assert raised.value.problems[0].kind == "read"


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("quick", (512, 8, 8, 30, 9.0)),
        ("standard", (512, 16, 8, 50, 9.0)),
        ("high", (768, 24, 8, 80, 9.0)),
    ],
)
def test_builtin_presets(preset: str, expected: tuple) -> None:
    p = BUILTIN_PRESETS[preset]
    assert (p.resolution, p.frames, p.fps, p.steps, p.guidance) == expected
    resolved = Rule(name="r", preset=preset).resolved()
    assert (
        resolved.resolution,
        resolved.frames,
        resolved.fps,
        resolved.steps,
        resolved.guidance,
        resolved.seed,
    ) == (*expected, None)


def test_params_override_preset() -> None:
    rule = Rule(
        name="r",
        preset="quick",
        params={"resolution": 256, "steps": 12, "fps": 24, "guidance": 3.5},
    )
    assert rule.resolved().model_dump() == {
        "resolution": 256,
        "frames": 8,
        "fps": 24,
        "steps": 12,
        "guidance": 3.5,
        "seed": None,
    }


def test_bad_param_reports_line_and_field(tmp_path: Path) -> None:
    text = "name: x\nengine: motion\nparams:\n  fps: 8\n  frames: 99\n"
    problem = one_problem(write(tmp_path, "x.yaml", text))
    assert problem.line == 5
    assert problem.field == "params.frames"
    assert "less than or equal to 32" in problem.message
    assert "(got 99)" in problem.message
    assert str(problem).startswith(f"{tmp_path / 'x.yaml'}:5:")


def test_several_bad_fields_are_all_reported(tmp_path: Path) -> None:
    text = "priority: 1\nparams:\n  resolution: 300\n  frames: 99\naspect: wide\n"
    problems = problems_of(write(tmp_path, "x.yaml", text))
    found = {(p.field, p.line) for p in problems}
    assert found == {("params.resolution", 3), ("params.frames", 4), ("aspect", 5)}


def test_flow_mapping_reports_the_column(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, "x.yaml", "name: x\nparams: {fps: 2}\n"))
    assert (problem.line, problem.column) == (2, 15)
    assert problem.field == "params.fps"


def test_unknown_key(tmp_path: Path) -> None:
    text = "name: x\nengine: motion\nprompot: hello\n"
    problem = one_problem(write(tmp_path, "x.yaml", text))
    assert problem.line == 3
    assert problem.field == "prompot"
    assert "unknown field" in problem.message


def test_unknown_nested_key(tmp_path: Path) -> None:
    text = "name: x\nmatch:\n  folders: [a]\n  pattern: ['*.jpg']\n"
    problem = one_problem(write(tmp_path, "x.yaml", text))
    assert problem.line == 4
    assert problem.field == "match.pattern"
    assert "unknown field" in problem.message


def test_unknown_key_with_block_value_points_at_the_key(tmp_path: Path) -> None:
    text = "name: x\nextras:\n  a: 1\n"
    problem = one_problem(write(tmp_path, "x.yaml", text))
    assert problem.field == "extras"
    assert problem.line == 2


def test_bad_engine(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, "x.yaml", "name: x\n\nengine: gpu\n"))
    assert (problem.line, problem.field) == (3, "engine")
    assert "'diffusion' or 'motion'" in problem.message
    assert "(got 'gpu')" in problem.message


def test_diffusion_without_model_is_a_rule_level_problem(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, "x.yaml", "# comment\nengine: diffusion\n"))
    assert problem.field == "(rule)"
    assert "needs 'model'" in problem.message


def test_unknown_preset(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, "x.yaml", "preset: ultra\n"))
    assert "preset 'ultra' is not one of quick, standard, high" in problem.message


def test_pan_without_zoom_room(tmp_path: Path) -> None:
    text = "name: x\nmotion:\n  effect: pan_left\n  zoom: 1.0\n"
    problem = one_problem(write(tmp_path, "x.yaml", text))
    assert problem.field == "motion"
    assert "needs zoom > 1.0" in problem.message


def test_bad_name_pattern(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, "x.yaml", "engine: motion\nname: ../evil\n"))
    assert (problem.field, problem.line) == ("name", 2)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = "name: x\nprompt: a: b\n"
    problem = one_problem(write(tmp_path, "x.yaml", text))
    assert problem.field == "(yaml)"
    assert (problem.line, problem.column) == (2, 10)
    assert "mapping values are not allowed" in problem.message


def test_not_a_mapping(tmp_path: Path) -> None:
    problem = one_problem(write(tmp_path, "x.yaml", "- a\n- b\n"))
    assert problem.field == "(file)"
    assert problem.message == "a rule file holds a mapping (key: value lines)"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    problem = one_problem(path)
    assert problem.field == "(file)"
    assert "cannot read" in problem.message


def test_load_rules_skips_bad_files_and_reports_duplicates(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "priority: 1\n")
    write(tmp_path, "b.yml", "engine: gpu\n")
    write(tmp_path, "c.yaml", "name: a\n")
    write(tmp_path, "d.yaml", WAVE)
    write(tmp_path, "notes.txt", "engine: gpu\n")
    rules, problems = load_rules(tmp_path)
    assert [(r.rule.name, r.file.name) for r in rules] == [("a", "a.yaml"), ("wave", "d.yaml")]
    assert [(p.file.name, p.field) for p in problems] == [("b.yml", "engine"), ("c.yaml", "name")]
    assert "already used by" in problems[1].message
    assert str(tmp_path / "a.yaml") in problems[1].message


def test_shipped_rules_load_cleanly() -> None:
    rules, problems = load_rules(REPO / "rules")
    assert problems == []
    shipped = sorted(p.stem for p in (REPO / "rules").glob("*.y*ml"))
    assert len(rules) == len(shipped) >= 1
    for item in rules:
        item.rule.resolved()  # every preset/params combination is valid


# --- content hash ---------------------------------------------------------------


def test_content_hash_is_stable(tmp_path: Path) -> None:
    a = load_rule_file(write(tmp_path, "wave.yaml", WAVE)).rule
    b = load_rule_file(write(tmp_path / "again", "wave.yaml", WAVE)).rule
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 16
    # Formatting and key order do not matter, only content.
    reordered = "priority: 10\n" + WAVE.replace("priority: 10\n", "") + "# trailing comment\n"
    c = load_rule_file(write(tmp_path / "c", "wave.yaml", reordered)).rule
    assert c.content_hash() == a.content_hash()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("priority: 10", "priority: 11"),
        ('"people/**"', '"people/x/**"'),
        ('"*.png"]', '"*.gif"]'),
        ("preset: high", "preset: quick"),
        ('prompt: "{{ stem }} smiling"', 'prompt: "{{ stem }} smiling!"'),
        ('negative_prompt: "blurry"', 'negative_prompt: ""'),
        ("seed: 42", "seed: 43"),
        ("aspect: source", "aspect: square"),
        ('{{ stem }}.{{ rule }}"', '{{ stem }}-{{ rule }}"'),
        ("zoom: 1.5", "zoom: 1.6"),
        ("easing: linear", "easing: ease_in"),
        ("fade_in: 0.5", "fade_in: 0.25"),
        ("name: wave", "name: wave2"),
    ],
)
def test_content_hash_changes_with_every_field(tmp_path: Path, old: str, new: str) -> None:
    assert old in WAVE
    base = load_rule_file(write(tmp_path, "wave.yaml", WAVE)).rule
    changed = load_rule_file(write(tmp_path / "b", "wave.yaml", WAVE.replace(old, new))).rule
    assert changed != base
    assert changed.content_hash() != base.content_hash()


def test_content_hash_changes_with_engine_and_model() -> None:
    motion = Rule(name="r")
    diffusion = Rule(name="r", engine="diffusion", model="a/b")
    other_model = Rule(name="r", engine="diffusion", model="a/c")
    assert len({motion.content_hash(), diffusion.content_hash(), other_model.content_hash()}) == 3


# --- matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "folder", "expected"),
    [
        ("**", "", True),
        ("**", "a", True),
        ("**", "a/b/c", True),
        ("people/**", "people", True),
        ("people/**", "people/a", True),
        ("people/**", "people/a/b", True),
        ("people/**", "peoplex", False),
        ("people/**", "peoplex/a", False),
        ("people/**", "", False),
        ("people/**", "x/people", False),
        ("people", "people", True),
        ("people", "people/a", False),
        ("People/**", "people/A", True),
        ("a/*/c", "a/b/c", True),
        ("a/*/c", "a/xyz/c", True),
        ("a/*/c", "a/c", False),
        ("a/*/c", "a/b/d/c", False),
        ("a/**/c", "a/c", True),
        ("a/**/c", "a/b/d/c", True),
        ("a/**/c", "a/b/d/e", False),
        ("**/raw", "x/y/raw", True),
        ("**/raw", "raw", True),
        ("**/raw", "x/raw/y", False),
        ("p?ople", "people", True),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_folder_matches(glob: str, folder: str, expected: bool) -> None:
    assert folder_matches(glob, folder) is expected


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("X.JPG", True),
        ("people/pic.Jpg", True),
        ("people/a/b/c.png", True),
        ("people/c.webp", False),
        ("c.gif", False),
        ("notes.txt", False),
        ("jpg", False),
    ],
)
def test_rule_matches_patterns_case_insensitively(relative: str, expected: bool) -> None:
    rule = Rule(name="r", match={"folders": ["**"], "patterns": ["*.jpg", "*.png"]})
    assert rule_matches(rule, PurePosixPath(relative)) is expected


def test_default_patterns_cover_common_types() -> None:
    rule = Rule(name="r")
    for name in ("a.jpg", "a.JPEG", "a.png", "a.webp", "a.bmp", "a.tif", "a.TIFF"):
        assert rule_matches(rule, PurePosixPath(name)), name
    assert not rule_matches(rule, PurePosixPath("a.heic"))


def test_root_files_need_a_root_folder_glob() -> None:
    people = Rule(name="p", match={"folders": ["people/**"]})
    assert not rule_matches(people, PurePosixPath("a.jpg"))
    assert rule_matches(people, PurePosixPath("people/a.jpg"))


def test_pick_rule_highest_priority_wins() -> None:
    rules = [loaded("low", 0), loaded("high", 5), loaded("mid", 3)]
    picked = pick_rule(rules, PurePosixPath("a.jpg"))
    assert picked is not None and picked.rule.name == "high"


def test_pick_rule_tie_goes_to_first_name() -> None:
    rules = [loaded("zeta", 1), loaded("beta", 1), loaded("alpha", 0), loaded("gamma", 1)]
    picked = pick_rule(rules, PurePosixPath("x/a.png"))
    assert picked is not None and picked.rule.name == "beta"


def test_pick_rule_only_among_matching() -> None:
    rules = [loaded("people", 10, folders=("people/**",)), loaded("all", 0)]
    picked = pick_rule(rules, PurePosixPath("people/kid/a.jpg"))
    assert picked is not None and picked.rule.name == "people"
    picked = pick_rule(rules, PurePosixPath("peoplex/a.jpg"))
    assert picked is not None and picked.rule.name == "all"


def test_pick_rule_no_match() -> None:
    rules = [loaded("people", 10, folders=("people/**",)), loaded("pngs", patterns=("*.png",))]
    assert pick_rule(rules, PurePosixPath("other/a.jpg")) is None
    assert pick_rule([], PurePosixPath("a.jpg")) is None
