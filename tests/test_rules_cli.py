"""`i2vd rules check` and `i2vd rules explain` on real rule files, images and folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import REPO, Layout, make_image
from daemon.cli import main

Run = tuple[int, str, str]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- rules check ------------------------------------------------------------------


def test_check_all_good_uses_the_settings_rules_dir(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        layout.rules / "presets" / "tiny.yaml",
        "{resolution: 256, frames: 8, fps: 8, steps: 10, guidance: 5}\n",
    )
    layout.rule("wave", "preset: tiny\nprompt: '{{ text or description or stem }}'\n")
    code, out, err = cli(capsys, "rules", "check", "--config", str(layout.config_file))
    assert (code, out, err) == (0, "", "2 rules ok, 1 preset ok, no problems\n")


def test_check_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "a.yaml", "priority: 10\n  engine: motion\n")
    write(tmp_path / "b.yaml", "engine: motion\n")
    code, out, err = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 4
    assert out == f"{bad}:2:9: (yaml): mapping values are not allowed here\n"
    assert err == "1 rule ok, 1 problem in 1 file\n"


def test_check_unreadable_file_counts_as_syntax(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"prompt: caf\xe9\n")
    code, out, _ = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 4
    assert out.startswith(f"{bad}:1:1: (file): cannot read: 'utf-8' codec can't decode")


def test_check_schema_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "b.yaml", "name: b\npriority: high\nmotion: {effect: spin}\n")
    code, out, err = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 5
    assert out.splitlines() == [
        f"{bad}:2:11: priority: Input should be a valid integer, unable to parse string as "
        "an integer (got 'high')",
        f"{bad}:3:18: motion.effect: Input should be 'zoom_in', 'zoom_out', 'pan_left', "
        "'pan_right', 'pan_up' or 'pan_down' (got 'spin')",
    ]
    assert err == "0 rules ok, 2 problems in 1 file\n"


def test_check_templates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The loader accepts any text as a template; check finds the ones that could never
    render, where the daemon would fail every image."""
    bad = write(
        tmp_path / "t.yaml",
        "prompt: '{{ colour }} {{ stem }}'\n"
        "output:\n  name: '{{ stem '\n"
        "variants:\n  - {prompt: '{{ stem | shout }}'}\n  - {prompt: '{% set x = 1 %}{{ x }}'}\n",
    )
    code, out, _ = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 5
    assert out.splitlines() == [
        f"{bad}:1:9: prompt: unknown template variable 'colour' (known: comment, date, "
        "description, ext, folder, folders, height, name, orientation, rule, stem, text, "
        "time, variant, width)",
        f"{bad}:3:9: output.name: template syntax error: unexpected end of template, "
        "expected 'end of print statement'.",
        f"{bad}:5:14: variants.0.prompt: template error: No filter named 'shout'.",
    ]


def test_check_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path / "c.yaml", "name: same\n")
    second = write(tmp_path / "d.yaml", "name: same\npriority: 3\n")
    shadow = write(
        tmp_path / "presets" / "quick.yaml",
        "{resolution: 256, frames: 8, fps: 8, steps: 10, guidance: 5}\n",
    )
    code, out, err = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 6
    assert out.splitlines() == [
        f"{second}:1:1: name: rule name 'same' is already used by {first}",
        f"{shadow}:1:1: (file): preset 'quick' is built in; rename the file",
    ]
    assert err == "1 rule ok, 0 presets ok, 2 problems in 2 files\n"


def test_check_preset_schema_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = write(tmp_path / "presets" / "odd.yaml", "resolution: 300\nframes: 12\n")
    rule = write(tmp_path / "r.yaml", "preset: odd\n")
    code, out, err = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 5
    assert out.splitlines() == [
        f"{odd}:1:1: fps: Field required",
        f"{odd}:1:1: steps: Field required",
        f"{odd}:1:1: guidance: Field required",
        f"{odd}:1:13: resolution: Input should be 256, 512, 768 or 1024 (got 300)",
        f"{rule}:1:1: (rule): preset 'odd' is not one of quick, standard, high or a file in "
        "the rules folder's presets/",
    ]
    assert err == "0 rules ok, 0 presets ok, 5 problems in 2 files\n"


def test_check_several_kinds_lowest_code_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a.yaml", "name: same\n")
    write(tmp_path / "b.yaml", "name: same\n")
    write(tmp_path / "c.yaml", "priority: high\n")
    assert cli(capsys, "rules", "check", str(tmp_path))[0] == 5
    write(tmp_path / "d.yaml", "[unclosed\n")
    code, out, err = cli(capsys, "rules", "check", str(tmp_path))
    assert code == 4
    assert len(out.splitlines()) == 3
    assert err == "1 rule ok, 3 problems in 3 files\n"


def test_check_missing_and_empty_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "rules", "check", str(tmp_path / "nope"))
    assert (code, out) == (2, "")
    assert err == f"i2vd: rules folder {tmp_path / 'nope'} does not exist (set rules_dir)\n"
    code, out, err = cli(capsys, "rules", "check", str(tmp_path))
    assert (code, out) == (0, "")
    assert err.splitlines() == [
        "0 rules ok, no problems",
        f"i2vd: warning: no rule files (*.yaml, *.yml) in {tmp_path}: every image would stay "
        "in the inbox",
    ]


def test_check_bad_settings_is_a_config_error(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    config = layout.write_config(colour="blue")
    code, out, err = cli(capsys, "rules", "check", "--config", str(config))
    assert (code, out) == (2, "")
    assert "colour: unknown setting" in err


def test_check_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["rules", "check", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for line in (
        "0  every rule and preset is valid",
        "4  a file is not valid YAML",
        "5  a rule or preset does not validate",
        "6  a conflict",
    ):
        assert line in text
    with pytest.raises(SystemExit):
        main(["rules", "explain", "--help"])
    assert "1  some path has no winning rule" in capsys.readouterr().out


# --- rules explain ------------------------------------------------------------------

WAVE = """\
match: {folders: ["people/**"]}
priority: 10
prompt: "{{ text or description or stem }} waving, {{ orientation }} {{ width }}x{{ height }}"
negative_prompt: blurry
aspect: source
source: keep
variants:
  - {seed: 1}
  - {name: calm, seed: 2, prompt: "calm {{ stem }}"}
"""


@pytest.fixture
def rules(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """The layout's `motion` rule (priority 0, everywhere) and rules that win, tie and miss;
    the working directory is the layout's root, outside the inbox."""
    monkeypatch.chdir(layout.root)
    layout.rule("wave", WAVE)
    layout.rule("pngs", 'match: {folders: ["people/**"], patterns: ["*.png"]}\npriority: 20\n')
    layout.rule("alpha", 'match: {folders: ["pets/**"]}\npriority: 5\n')
    layout.rule("beta", 'match: {folders: ["pets/**"]}\npriority: 5\n')
    layout.rule("broken", "priority: high\n")
    return layout


def anna(layout: Layout) -> Path:
    """inbox/people/anna.jpg, 320x240 with an EXIF description, a .txt and a .yaml."""
    exif = Image.Exif()
    exif[0x010E] = "A girl on a beach"
    image = make_image(layout.inbox / "people" / "anna.jpg", 320, 240, exif=exif.tobytes())
    write(image.with_suffix(".txt"), "Anna at the sea\n")
    write(image.with_suffix(".yaml"), "params: {frames: 24}\nnegative_prompt: dark\n")
    return image


def explain_json(capsys: pytest.CaptureFixture[str], layout: Layout, *paths: str) -> Any:
    code, out, err = cli(
        capsys, "rules", "explain", "--json", "--config", str(layout.config_file), *paths
    )
    assert err == ""
    return code, json.loads(out)


def test_explain_existing_image_with_companions_and_variants(
    rules: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    image = anna(rules)
    write(rules.outbox / "people" / "anna.wave.calm.json", "{}")  # taken: calm gets -2
    code, [report] = explain_json(capsys, rules, str(image))
    assert code == 0
    assert list(report) == [
        "path",
        "inbox",
        "relative",
        "exists",
        "ok",
        "verdict",
        "errors",
        "image",
        "companions",
        "skipped_rule_files",
        "rules",
        "winner",
    ]
    assert report["relative"] == "people/anna.jpg" and report["exists"] and report["ok"]
    assert report["verdict"] == "rule wave wins"
    assert report["image"] == {
        "width": 320,
        "height": 240,
        "orientation": "landscape",
        "description": "A girl on a beach",
        "comment": "",
    }
    assert report["companions"]["text"] == "Anna at the sea"
    assert report["companions"]["overrides"] == {
        "negative_prompt": "dark",
        "params": {"frames": 24},
    }
    assert report["skipped_rule_files"] == [
        f"{rules.rules / 'broken.yaml'}:1:11: priority: Input should be a valid integer, "
        "unable to parse string as an integer (got 'high')"
    ]
    assert [(r["name"], r["matches"], r["wins"], r["why"]) for r in report["rules"]] == [
        ("pngs", False, False, "file name 'anna.jpg' matches none of its patterns: *.png"),
        ("wave", True, True, "the highest priority among 2 matching rules"),
        ("alpha", False, False, "folder 'people' matches none of its folder globs: pets/**"),
        ("beta", False, False, "folder 'people' matches none of its folder globs: pets/**"),
        ("motion", True, False, "matches, but priority 0 is lower than wave's 10"),
    ]
    winner = report["winner"]
    assert (winner["name"], winner["engine"], winner["source"]) == ("wave", "motion", "keep")
    assert winner["original"] == {
        "action": "keep",
        "path": str(image),
        "text": "stays in the inbox",
    }
    v1, calm = winner["outputs"]
    assert (v1["variant"], calm["variant"]) == ("v1", "calm")
    assert v1["prompt"] == "Anna at the sea waving, landscape 320x240"
    assert calm["prompt"] == "calm anna"
    assert v1["negative_prompt"] == calm["negative_prompt"] == "dark"
    assert v1["params"] == {
        "resolution": 512,
        "frames": 24,
        "fps": 8,
        "steps": 50,
        "guidance": 9.0,
        "seed": 1,
    }
    assert v1["param_sources"] == {
        "resolution": "preset standard",
        "frames": "image .yaml",
        "fps": "preset standard",
        "steps": "preset standard",
        "guidance": "preset standard",
        "seed": "variant v1",
    }
    assert calm["params"]["seed"] == 2
    assert (v1["frame"]["width"], v1["frame"]["height"], v1["frame"]["frames"]) == (592, 444, 24)
    assert v1["memory"] == "CPU only, no GPU memory"
    folder = rules.outbox / "people"
    assert (v1["video"], v1["sidecar"], v1["name_taken"]) == (
        str(folder / "anna.wave.v1.mp4"),
        str(folder / "anna.wave.v1.json"),
        False,
    )
    assert (calm["video"], calm["sidecar"], calm["name_taken"]) == (
        str(folder / "anna.wave.calm-2.mp4"),
        str(folder / "anna.wave.calm-2.json"),
        True,
    )


def test_explain_human_output(rules: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    image = anna(rules)
    code, out, err = cli(capsys, "rules", "explain", "--config", str(rules.config_file), str(image))
    assert (code, err) == (0, "")
    folder = rules.outbox / "people"
    assert out.splitlines() == [
        str(image),
        f"  inbox:           {rules.inbox}",
        "  relative path:   people/anna.jpg (exists)",
        "  image:           320x240 landscape; EXIF description 'A girl on a beach'",
        "  beside it:       anna.txt, anna.yaml",
        "    text:            'Anna at the sea'",
        '    overrides:       {"negative_prompt": "dark", "params": {"frames": 24}}',
        "  verdict:         rule wave wins",
        "    - pngs (priority 20): file name 'anna.jpg' matches none of its patterns: *.png",
        "    * wave (priority 10): the highest priority among 2 matching rules",
        "    - alpha (priority 5): folder 'people' matches none of its folder globs: pets/**",
        "    - beta (priority 5): folder 'people' matches none of its folder globs: pets/**",
        "    - motion (priority 0): matches, but priority 0 is lower than wave's 10",
        "  invalid rule files (skipped; a running daemon keeps their last good version):",
        f"    {rules.rules / 'broken.yaml'}:1:11: priority: Input should be a valid integer, "
        "unable to parse string as an integer (got 'high')",
        f"  rule file:       {rules.rules / 'wave.yaml'}",
        "  engine:          motion",
        f"  original:        stays in the inbox: {image}",
        "  variant v1:",
        "    prompt:          'Anna at the sea waving, landscape 320x240'",
        "    negative prompt: 'dark'",
        "    params:          resolution 512, frames 24, fps 8, steps 50, guidance 9.0, seed 1",
        "                     from preset standard: resolution, fps, steps, guidance; "
        "image .yaml: frames; variant v1: seed",
        "    video frames:    592x444, 24 frames at 8 fps (aspect source)",
        "                     motion: zoom_in, zoom 1.25 (steps, guidance and seed are for "
        "diffusion only)",
        "    memory:          CPU only, no GPU memory",
        f"    video:           {folder / 'anna.wave.v1.mp4'}",
        f"    sidecar:         {folder / 'anna.wave.v1.json'}",
        "  variant calm:",
        "    prompt:          'calm anna'",
        "    negative prompt: 'dark'",
        "    params:          resolution 512, frames 24, fps 8, steps 50, guidance 9.0, seed 2",
        "                     from preset standard: resolution, fps, steps, guidance; "
        "image .yaml: frames; variant calm: seed",
        "    video frames:    592x444, 24 frames at 8 fps (aspect source)",
        "                     motion: zoom_in, zoom 1.25 (steps, guidance and seed are for "
        "diffusion only)",
        "    memory:          CPU only, no GPU memory",
        f"    video:           {folder / 'anna.wave.calm.mp4'}",
        f"    sidecar:         {folder / 'anna.wave.calm.json'}",
    ]


def test_explain_hypothetical_path(rules: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    """An inbox-relative path not there yet: the size and EXIF are unknown, so a template
    needing them says so; it is not counted as a failure."""
    code, [report] = explain_json(capsys, rules, "people/bob.jpg")
    assert code == 0 and report["ok"]
    assert (report["inbox"], report["relative"], report["exists"]) == (
        str(rules.inbox),
        "people/bob.jpg",
        False,
    )
    assert report["image"] is None and report["errors"] == []
    v1, calm = report["winner"]["outputs"]
    assert v1["prompt"] is None
    assert v1["errors"] == [
        "prompt template of this image's rule could not be filled in: 'description' is undefined"
    ]
    assert calm["prompt"] == "calm bob" and calm["errors"] == []
    assert v1["frame"]["width"] is None
    assert v1["frame"]["notes"][0].startswith("aspect: source: the size depends on the image")
    assert v1["video"] == str(rules.outbox / "people" / "bob.wave.v1.mp4")


def test_explain_tie_and_no_match(rules: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    code, (rex, gif) = explain_json(capsys, rules, "pets/rex.jpg", "x.gif")
    assert code == 1
    assert rex["ok"] and rex["verdict"] == "rule alpha wins"
    whys = {r["name"]: r["why"] for r in rex["rules"]}
    assert whys["alpha"] == (
        "the highest priority among 3 matching rules (its name sorts first among those "
        "with priority 5)"
    )
    assert whys["beta"] == (
        "matches with the same priority 5, but lost the tie on name: 'alpha' sorts first"
    )
    assert rex["winner"]["original"] == {
        "action": "move",
        "path": str(rules.outbox / "pets" / "rex.jpg"),
        "text": "moves beside its video",
    }
    assert not gif["ok"] and gif["winner"] is None
    assert gif["verdict"] == "no rule matches: the image would stay in the inbox"
    assert {r["name"]: r["why"] for r in gif["rules"]}["motion"] == (
        "file name 'x.gif' matches none of its patterns: *.jpg, *.jpeg, *.png, *.webp, "
        "*.bmp, *.tif, *.tiff"
    )
    assert {r["name"]: r["why"] for r in gif["rules"]}["wave"] == (
        "the inbox root matches none of its folder globs: people/**"
    )


def test_explain_paths_outside_or_ignored(
    rules: Layout, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    outside = make_image(tmp_path / "elsewhere" / "a.jpg")
    code, reports = explain_json(
        capsys, rules, str(outside), "../a.jpg", "people/.hidden.jpg", "people/anna.txt"
    )
    assert code == 1
    assert [r["ok"] for r in reports] == [False] * 4
    assert reports[0]["verdict"] == f"{outside} is outside every inbox ({rules.inbox})"
    assert reports[1]["verdict"] == f"../a.jpg is not a path inside an inbox ({rules.inbox})"
    assert reports[2]["verdict"].startswith("never taken: '.hidden.jpg' is a hidden")
    assert reports[3]["verdict"].startswith("never taken: a .txt/.yaml file belongs")


def test_explain_path_forms(
    rules: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the working directory, absolute, or inbox-relative: the same inbox path."""
    image = anna(rules)
    monkeypatch.chdir(rules.inbox / "people")
    _, reports = explain_json(capsys, rules, "anna.jpg", str(image), "people/anna.jpg")
    assert {(r["inbox"], r["relative"], r["exists"]) for r in reports} == {
        (str(rules.inbox), "people/anna.jpg", True)
    }


def test_explain_second_inbox_and_source_delete(
    rules: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    rules.write_config(inbox=["inbox", "scans"])
    make_image(rules.root / "scans" / "docs" / "page.png")
    rules.rule("scans", 'match: {folders: ["docs"]}\npriority: 50\nsource: delete\n')
    _, (page, other) = explain_json(capsys, rules, "docs/page.png", "docs/other.png")
    assert (page["inbox"], page["exists"]) == (str(rules.root / "scans"), True)
    assert (other["inbox"], other["exists"]) == (str(rules.inbox), False)
    assert page["winner"]["original"]["action"] == "delete"
    assert page["winner"]["original"]["path"] is None


def test_explain_failures_of_an_existing_image(
    rules: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    """What would fail the job fails explain: a broken .yaml beside it, a template that
    cannot render this image, a file that is not an image, a truncated image."""
    image = make_image(rules.inbox / "people" / "zoe.jpg")
    write(image.with_suffix(".yaml"), "params: {frames: 99}\n")
    rules.rule("bad_name", 'match: {folders: ["odd"]}\noutput: {name: "{{ folder }}/x"}\n')
    write(rules.inbox / "odd" / "x.jpg", "not an image")
    cut = make_image(rules.inbox / "people" / "cut.jpg", 640, 480)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    code, (zoe, odd, half) = explain_json(capsys, rules, str(image), "odd/x.jpg", str(cut))
    assert code == 1
    assert not half["ok"] and half["image"] is None
    assert half["errors"][0].startswith("the image data is damaged or cut short")
    assert not zoe["ok"] and zoe["errors"] == [
        "the settings file beside the image has a mistake: "
        f"{image.with_suffix('.yaml')}:1:18: params.frames: Input should be less than or "
        "equal to 32 (got 99) (the job would fail; fix the image's .yaml (README: Per-image "
        "overrides), then drop the image and its .yaml again)"
    ]
    assert not odd["ok"]
    assert odd["errors"][0] == (
        "this file is not an image i2vd can open: it may be another kind of file, or "
        "damaged: the job would fail (open it on your computer to check it, save it as "
        "JPEG, PNG, WebP, BMP or TIFF, and drop it again)"
    )
    assert odd["errors"][1] == (
        "the rule's output name for this image is not a plain file name (it would hold a "
        "'/', a '\\' or a control character, or start with '.')"
    )


def test_explain_diffusion_memory_and_model_folder(
    layout: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(layout.root / "hf"))  # no real downloads consulted
    write(
        layout.root / "models" / "i2vgen" / "model_index.json",
        '{"_class_name": "I2VGenXLPipeline", "_diffusers_version": "0.31.0"}',
    )
    for resolution, memory in (
        (256, "< 8 GB"),
        (512, "12–14 GB"),  # noqa: RUF001
        (768, "16–18 GB"),  # noqa: RUF001
        (1024, "> 20 GB"),
    ):
        layout.rule(
            "ai",
            f"match: {{folders: [ai]}}\npriority: 1\nengine: diffusion\n"
            f"model: models/i2vgen\nparams: {{resolution: {resolution}}}\n",
        )
        _, [report] = explain_json(capsys, layout, "ai/cat.jpg")
        winner = report["winner"]
        assert winner["model_family"] == {
            "local": True,
            "pipeline": "I2VGenXLPipeline",
            "family": "I2VGen-XL",
            "size_multiple": 8,
            "frame_step": 1,
            "frame_form": "any count",
            "known_from": str(layout.root / "models" / "i2vgen" / "model_index.json"),
        }
        [output] = winner["outputs"]
        assert output["memory"] == (
            f"{memory} of GPU memory at {resolution} (I2VGen-XL figures from the reference tool)"
        )
        assert output["frame"]["width"] == output["frame"]["height"] == resolution
        assert output["frame"]["notes"] == ["sides rounded to multiples of 8 for I2VGen-XL"]


def test_explain_diffusion_families(
    layout: Layout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The family comes from model_index.json, the Hugging Face cache, or the hub id of
    a family's reference model; its frame form and (where it needs no loaded model) its
    size multiple are applied; otherwise explain says they are applied at run time."""
    from daemon.engines.diffusion import families

    hf = layout.root / "hf"
    monkeypatch.setenv("HF_HOME", str(hf))
    write(
        hf / "hub" / "models--me--svd" / "snapshots" / "abc" / "model_index.json",
        '{"_class_name": "StableVideoDiffusionPipeline"}',
    )
    write(
        layout.root / "m" / "wan" / "model_index.json", '{"_class_name": "WanImageToVideoPipeline"}'
    )
    write(layout.root / "m" / "odd" / "model_index.json", '{"_class_name": "MysteryPipeline"}')
    for folder, model in (
        ("svd", "me/svd"),
        ("wan", "m/wan"),
        ("odd", "m/odd"),
        ("ref", "ali-vilab/i2vgen-xl"),
        ("hub", "someone/else"),
    ):
        layout.rule(
            folder,
            f"match: {{folders: [{folder}]}}\npriority: 1\nengine: diffusion\n"
            f"model: {model}\nparams: {{frames: 14}}\n",
        )
    _, reports = explain_json(
        capsys, layout, "svd/a.jpg", "wan/a.jpg", "odd/a.jpg", "ref/a.jpg", "hub/a.jpg"
    )
    info = {r["relative"].split("/")[0]: r["winner"]["model_family"] for r in reports}
    frames = {r["relative"].split("/")[0]: r["winner"]["outputs"][0]["frame"] for r in reports}
    assert (info["svd"]["pipeline"], info["svd"]["family"]) == (
        "StableVideoDiffusionPipeline",
        "Stable Video Diffusion",
    )
    assert info["svd"]["known_from"].endswith("models--me--svd/snapshots/abc/model_index.json")
    wan = families.BY_CLASS["WanImageToVideoPipeline"]
    assert info["wan"]["family"] == wan.label and info["wan"]["size_multiple"] is None
    step = info["wan"]["frame_step"]
    assert frames["wan"]["frames"] == families.round_frames(14, step) != 14
    assert f"{wan.label} rounds the sides once the model is loaded" in frames["wan"]["notes"]
    assert (info["odd"]["pipeline"], info["odd"]["family"]) == ("MysteryPipeline", None)
    assert frames["odd"]["notes"] == [
        "the model family (MysteryPipeline) is not known here: its rounding of size and frames "
        "is applied at run time"
    ]
    assert (info["ref"]["family"], info["ref"]["known_from"]) == ("I2VGen-XL", "hub id")
    assert info["hub"]["pipeline"] is None and frames["hub"]["frames"] == 14
    assert frames["hub"]["notes"] == [
        "the model family is not known here: its rounding of size and frames is applied at run time"
    ]


def test_explain_missing_rules_dir_and_bad_config(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    config = layout.write_config(rules_dir="nowhere")
    code, out, err = cli(capsys, "rules", "explain", "--config", str(config), "a.jpg")
    assert (code, out) == (2, "")
    assert "rules folder" in err and "does not exist" in err
    code, _, err = cli(capsys, "rules", "explain", "--config", str(layout.root / "no.yaml"), "a")
    assert code == 2 and "cannot read config file" in err


def test_explain_imports_no_torch(layout: Layout, tmp_path: Path) -> None:
    """Explaining a diffusion rule stays light: torch/diffusers are never imported."""
    fakes = tmp_path / "fakes"
    for name in ("torch", "diffusers", "transformers"):
        write(fakes / name / "__init__.py", "")
    write(layout.root / "models" / "m" / "model_index.json", '{"_class_name": "X"}')
    layout.rule("ai", "engine: diffusion\nmodel: models/m\npriority: 1\n")
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('torch') is not None\n"
        "from daemon.cli import main\n"
        f"config = {str(layout.config_file)!r}\n"
        "assert main(['rules', 'explain', '--config', config, 'a.jpg']) == 0\n"
        f"assert main(['rules', 'check', {str(layout.rules)!r}]) == 0\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fakes), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- as a real command ------------------------------------------------------------


def command() -> list[str]:
    console = Path(sys.executable).with_name("i2vd")
    return [str(console)] if console.exists() else [sys.executable, "-m", "daemon"]


def test_rules_commands_as_a_subprocess(rules: Layout) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    check = subprocess.run(
        [*command(), "rules", "check"],
        cwd=rules.root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 5
    assert check.stdout == (
        f"{rules.rules / 'broken.yaml'}:1:11: priority: Input should be a valid integer, "
        "unable to parse string as an integer (got 'high')\n"
    )
    assert check.stderr == "5 rules ok, 1 problem in 1 file\n"

    shipped = subprocess.run(
        [*command(), "rules", "check", str(REPO / "rules")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (shipped.returncode, shipped.stdout) == (0, ""), shipped.stderr

    explain = subprocess.run(
        [*command(), "rules", "explain", "--json", "pets/rex.jpg"],
        cwd=rules.root,
        env={**env, "I2VD_CONFIG": str(rules.config_file)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert explain.returncode == 0, explain.stderr
    assert json.loads(explain.stdout)[0]["winner"]["name"] == "alpha"
