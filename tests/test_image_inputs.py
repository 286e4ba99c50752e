"""Prompt sources beside and inside the image, user presets, variants and source handling,
through the real intake, worker, queue (SQLite), motion engine and ffmpeg."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import Layout, make_image
from daemon.companions import CompanionProblem, is_companion, read_companions
from daemon.images import read_facts
from daemon.intake import Intake
from daemon.rules import RuleFileError, load_presets, load_rules
from test_worker import Bench

SMALL = "engine: motion\npreset: quick\nparams: {resolution: 256, frames: 8, fps: 8}\n"


def exif_image(
    path: Path,
    width: int = 320,
    height: int = 240,
    description: str | None = None,
    comment: bytes | None = None,
    orientation: int | None = None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if description is not None:
        exif[0x010E] = description
    if orientation is not None:
        exif[0x0112] = orientation
    if comment is not None:
        exif.get_ifd(0x8769)[0x9286] = comment
    Image.new("RGB", (width, height), (90, 120, 200)).save(path, exif=exif)
    return path


def sidecar(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


# --- image facts -------------------------------------------------------------------


def test_facts_from_exif(tmp_path: Path) -> None:
    path = exif_image(
        tmp_path / "a.jpg", description="Anna on the pier", comment=b"ASCII\x00\x00\x00golden hour"
    )
    facts = read_facts(path)
    assert (facts.width, facts.height, facts.orientation) == (320, 240, "landscape")
    assert (facts.description, facts.comment) == ("Anna on the pier", "golden hour")
    assert read_facts(path.read_bytes()) == facts


def test_facts_unicode_comment_and_rotation(tmp_path: Path) -> None:
    comment = b"UNICODE\x00" + "straße 東京".encode("utf-16-le")
    path = exif_image(tmp_path / "r.jpg", comment=comment, orientation=6)
    facts = read_facts(path)
    # Orientation 6 is a camera held upright: shown as portrait.
    assert (facts.width, facts.height, facts.orientation) == (240, 320, "portrait")
    assert facts.comment == "straße 東京"


def test_facts_without_exif(tmp_path: Path) -> None:
    facts = read_facts(make_image(tmp_path / "p.png", 200, 200))
    assert (facts.orientation, facts.description, facts.comment) == ("square", "", "")


# --- companions ----------------------------------------------------------------------


def test_companions_are_read_and_cleaned(tmp_path: Path) -> None:
    image = make_image(tmp_path / "beach.jpg")
    (tmp_path / "beach.txt").write_text("\ufeffwaves   rolling\n\tin\x07", encoding="utf-8")
    (tmp_path / "beach.yaml").write_text("prompt: '{{ text }} slowly'\nparams: {seed: 3}\n")
    (tmp_path / "beachy.txt").write_text("not mine")
    companions = read_companions(image)
    assert companions.text == "waves rolling in"
    assert companions.overrides is not None and companions.overrides.params.seed == 3
    assert [p.name for p in companions.files] == ["beach.txt", "beach.yaml"]
    assert is_companion(tmp_path / "x.TXT") and not is_companion(image)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params: {frames: 999}\n", ":1:18: params.frames: Input should be less than or equal"),
        ("prompt: [unclosed\n", ":2:1: (yaml):"),
        ("colour: red\n", ":1:9: colour: unknown field"),
    ],
)
def test_bad_overrides_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    image = make_image(tmp_path / "a.jpg")
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(CompanionProblem) as err:
        read_companions(image)
    assert f"{tmp_path / 'a.yaml'}{expected}" in str(err.value)
    assert ".yaml" in err.value.hint


def test_two_override_files_are_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.jpg")
    (tmp_path / "a.yaml").write_text("{}")
    (tmp_path / "a.yml").write_text("{}")
    with pytest.raises(CompanionProblem, match=r"both a\.yaml and a\.yml"):
        read_companions(image)


def test_huge_or_binary_text_is_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CompanionProblem, match="not UTF-8"):
        read_companions(image)
    (tmp_path / "a.txt").write_text("x" * 70_000)
    with pytest.raises(CompanionProblem, match="larger than 64 KiB"):
        read_companions(image)


# --- user presets ----------------------------------------------------------------------


def test_user_preset_is_used_and_snapshotted(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    preset = tmp_path / "presets" / "tiny.yaml"
    preset.write_text("resolution: 256\nframes: 8\nfps: 6\nsteps: 10\nguidance: 3.5\n")
    (tmp_path / "r.yaml").write_text("preset: tiny\nparams: {fps: 12}\n")
    rules, problems = load_rules(tmp_path)
    assert problems == []
    resolved = rules[0].rule.resolved()
    assert (resolved.resolution, resolved.fps, resolved.guidance) == (256, 12, 3.5)
    before = rules[0].rule.content_hash()
    preset.write_text("resolution: 512\nframes: 8\nfps: 6\nsteps: 10\nguidance: 3.5\n")
    # Editing the preset changes the rule's identity: new work, not a stale duplicate.
    assert load_rules(tmp_path)[0][0].rule.content_hash() != before


def test_preset_problems(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "quick.yaml").write_text(
        "resolution: 256\nframes: 8\nfps: 6\nsteps: 10\nguidance: 3.5\n"
    )
    (tmp_path / "presets" / "bad.yaml").write_text("resolution: 300\nframes: 8\n")
    (tmp_path / "r.yaml").write_text("preset: bad\n")
    presets, problems = load_presets(tmp_path)
    assert set(presets) == {"quick", "standard", "high"}
    kinds = sorted((p.kind, p.field) for p in problems)
    assert kinds == [
        ("conflict", "(file)"),
        ("schema", "fps"),
        ("schema", "guidance"),
        ("schema", "resolution"),
        ("schema", "steps"),
    ]
    rules, rule_problems = load_rules(tmp_path)
    assert rules == []
    assert any("preset 'bad' is not one of" in p.message for p in rule_problems)


def test_preset_values_cannot_be_smuggled_in(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("preset_values: {resolution: 256}\n")
    _, problems = load_rules(tmp_path)
    assert [p.field for p in problems] == ["preset_values"]
    assert isinstance(RuleFileError(problems), Exception)


# --- through the worker ----------------------------------------------------------------


def run_all(bench: Bench) -> list[Any]:
    jobs = []
    while (job := bench.worker.run_once(time.time())) is not None:
        jobs.append(job)
    return jobs


def test_prompt_from_txt_exif_and_yaml(layout: Layout) -> None:
    layout.rule(
        "motion",
        SMALL + 'prompt: "{{ text }} | {{ description }} | {{ comment }} | {{ orientation }} '
        '{{ width }}x{{ height }}"\n',
    )
    bench = Bench(layout)
    image = exif_image(layout.inbox / "a.jpg", 480, 320, "a pier", b"ASCII\x00\x00\x00dusk")
    (layout.inbox / "a.txt").write_text("waves roll in")
    bench.queue(image)
    (job,) = run_all(bench)
    assert job.state == "done", job.error
    doc = sidecar(layout.outbox / "a.motion.json")
    assert doc["prompt"] == "waves roll in | a pier | dusk | landscape 480x320"
    assert (doc["text"], doc["companions"]) == ("waves roll in", ["a.txt"])
    # The text file travelled with its image.
    assert layout.files(layout.outbox) == ["a.jpg", "a.motion.json", "a.motion.mp4", "a.txt"]
    assert layout.files(layout.inbox) == []

    (layout.inbox / "b.yaml").write_text(
        "prompt: 'override for {{ stem }}'\nparams: {fps: 12, seed: 99}\naspect: source\n"
    )
    bench.queue(make_image(layout.inbox / "b.png", 400, 200))
    (job,) = run_all(bench)
    doc = sidecar(layout.outbox / "b.motion.json")
    assert doc["prompt"] == "override for b"
    # The motion engine draws no random numbers: the seed is requested, not used.
    assert (doc["effective"]["fps"], doc["requested"]["seed"]) == (12, 99)
    assert doc["effective"]["width"] > doc["effective"]["height"]  # source aspect
    assert "b.yaml" in layout.files(layout.outbox)


def test_bad_overrides_fail_that_image_only(layout: Layout) -> None:
    layout.rule("motion", SMALL)
    bench = Bench(layout)
    bad = make_image(layout.inbox / "bad.jpg")
    (layout.inbox / "bad.yaml").write_text("params:\n  frames: 999\n")
    rules, _ = load_rules(bench.settings.rules_dir)
    intake = Intake(bench.store, lambda: rules, bench.settings.failed_dir, 3)
    result = intake.take(bench.settings.inbox[0], bad)
    assert result.outcome == "rejected"
    assert layout.files(layout.failed) == ["bad.jpg", "bad.jpg.error.json", "bad.yaml"]
    report = sidecar(layout.failed / "bad.jpg.error.json")
    assert "bad.yaml:2:11: params.frames:" in report["error"]
    # The companion file is never a job of its own, and a good image still goes through.
    assert intake.take(bench.settings.inbox[0], layout.inbox / "bad.yaml").outcome in (
        "companion",
        "vanished",
    )
    bench.queue(make_image(layout.inbox / "good.jpg"))
    assert [j.state for j in run_all(bench)] == ["done"]


def test_variants_make_one_job_each_and_move_the_original_once(layout: Layout) -> None:
    layout.rule(
        "motion",
        SMALL
        + 'prompt: "base"\nvariants:\n  - {seed: 1}\n  - {name: calm, seed: 2, prompt: "calm"}\n'
        "  - {params: {fps: 12}}\n",
    )
    bench = Bench(layout)
    (layout.inbox / "a.txt").write_text("t")
    rules, _ = load_rules(bench.settings.rules_dir)
    intake = Intake(bench.store, lambda: rules, bench.settings.failed_dir, 3)
    result = intake.take(bench.settings.inbox[0], make_image(layout.inbox / "a.jpg"))
    assert [j.variant for j in result.jobs] == ["v1", "calm", "v3"]
    assert len({j.drop for j in result.jobs}) == 1
    # The same file seen again while its variants wait is known, not queued again.
    intake.retain(set())
    assert intake.take(bench.settings.inbox[0], layout.inbox / "a.jpg").outcome == "known"

    first = bench.worker.run_once(time.time())
    assert first is not None and first.state == "done"
    assert (layout.inbox / "a.jpg").exists(), "the other variants still need the original"
    run_all(bench)
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.outbox) == [
        "a.jpg",
        "a.motion.calm.json",
        "a.motion.calm.mp4",
        "a.motion.v1.json",
        "a.motion.v1.mp4",
        "a.motion.v3.json",
        "a.motion.v3.mp4",
        "a.txt",
    ]
    calm = sidecar(layout.outbox / "a.motion.calm.json")
    assert (calm["variant"], calm["prompt"], calm["requested"]["seed"]) == ("calm", "calm", 2)
    assert sidecar(layout.outbox / "a.motion.v3.json")["effective"]["fps"] == 12


def test_source_keep_is_remembered_and_not_redone(layout: Layout) -> None:
    layout.rule("motion", SMALL + "source: keep\n")
    bench = Bench(layout)
    image = make_image(layout.inbox / "k.jpg")
    (layout.inbox / "k.txt").write_text("kept")
    bench.queue(image)
    assert [j.state for j in run_all(bench)] == ["done"]
    assert layout.files(layout.inbox) == ["k.jpg", "k.txt"]
    assert layout.files(layout.outbox) == ["k.motion.json", "k.motion.mp4"]
    rules, _ = load_rules(bench.settings.rules_dir)
    fresh = Intake(bench.store, lambda: rules, bench.settings.failed_dir, 3)  # as after a restart
    assert fresh.take(bench.settings.inbox[0], image).outcome == "known"
    # New content at the same path is a new drop.
    make_image(image, seed=5)
    assert fresh.take(bench.settings.inbox[0], image).outcome == "queued"


def test_source_delete_removes_the_original_and_its_text(layout: Layout) -> None:
    layout.rule("motion", SMALL + "source: delete\n")
    bench = Bench(layout)
    (layout.inbox / "d.txt").write_text("gone")
    bench.queue(make_image(layout.inbox / "d.jpg"))
    assert [j.state for j in run_all(bench)] == ["done"]
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.outbox) == ["d.motion.json", "d.motion.mp4"]
    doc = sidecar(layout.outbox / "d.motion.json")
    assert (doc["source_handling"], doc["text"]) == ("delete", "gone")


@pytest.mark.parametrize("template", ["../../etc/x", "/etc/passwd", "a\x00b", "{{ '../' * 3 }}x"])
def test_hostile_output_name_is_contained(layout: Layout, template: str) -> None:
    layout.rule("motion", SMALL + f"output: {{name: {json.dumps(template)}}}\n")
    bench = Bench(layout)
    bench.queue(make_image(layout.inbox / "h.jpg"))
    (job,) = run_all(bench)
    assert job.state == "failed"
    assert "is not a plain file name" in job.error
    assert layout.files(layout.outbox) == []
    assert layout.files(layout.failed) == ["h.jpg", "h.jpg.error.json"]
    assert not any(p.name == "x.mp4" for p in layout.root.parent.rglob("x.mp4"))


def test_existing_output_name_gets_a_suffix(layout: Layout) -> None:
    layout.rule("motion", SMALL + "output: {name: fixed}\n")
    bench = Bench(layout)
    layout.outbox.mkdir(exist_ok=True)
    (layout.outbox / "fixed.mp4").write_bytes(b"someone else's")
    bench.queue(make_image(layout.inbox / "a.jpg"))
    run_all(bench)
    assert (layout.outbox / "fixed.mp4").read_bytes() == b"someone else's"
    names = layout.files(layout.outbox)
    assert len([n for n in names if n.endswith(".mp4")]) == 2


# --- review findings, each pinned ------------------------------------------------------


def test_variants_differing_only_by_name_are_each_generated(layout: Layout) -> None:
    layout.rule("motion", SMALL + "variants: [{name: take1}, {name: take2}]\n")
    bench = Bench(layout)
    bench.queue(make_image(layout.inbox / "a.jpg"))
    jobs = run_all(bench)
    assert [(j.variant, j.state, j.duplicate_of) for j in jobs] == [
        ("take1", "done", None),
        ("take2", "done", None),
    ]
    take2 = sidecar(layout.outbox / "a.motion.take2.json")
    assert (take2["variant"], take2["duplicate_of"]) == ("take2", None)
    one, two = layout.outbox / "a.motion.take1.mp4", layout.outbox / "a.motion.take2.mp4"
    assert one.stat().st_ino != two.stat().st_ino


def test_only_one_job_of_a_drop_settles_the_original(layout: Layout) -> None:
    """Two daemons finishing a drop's last two variants at once: the store lets exactly
    one of them take care of the original, whatever the order of their commits."""
    layout.rule("motion", SMALL + "variants: [{seed: 1}, {seed: 2}]\n")
    bench = Bench(layout)
    rules, _ = load_rules(bench.settings.rules_dir)
    intake = Intake(bench.store, lambda: rules, bench.settings.failed_dir, 3)
    first, second = intake.take(bench.settings.inbox[0], make_image(layout.inbox / "a.jpg")).jobs
    assert first.id is not None and second.id is not None
    assert not bench.store.claim_drop_end(first.drop), "both jobs are still queued"
    bench.store.finish(first.id, time.time(), {})
    assert not bench.store.claim_drop_end(first.drop), "the second is still queued"
    bench.store.fail(second.id, time.time(), "x", "y", retry_at=None)
    assert [bench.store.claim_drop_end(first.drop) for _ in range(3)] == [True, False, False]


def test_a_new_picture_under_a_variant_name_is_never_moved_or_deleted(layout: Layout) -> None:
    layout.rule("motion", SMALL + "source: delete\nvariants: [{seed: 1}, {seed: 2}]\n")
    bench = Bench(layout)
    image = make_image(layout.inbox / "a.jpg")
    bench.queue(image)
    assert bench.run().state == "done"
    make_image(image, seed=9)  # the user drops another picture under the same name
    (job,) = run_all(bench)
    assert job.state == "cancelled"  # it was replaced under the job: never published
    assert layout.files(layout.inbox) == ["a.jpg"]
    assert image.read_bytes() == make_image(layout.root / "copy.jpg", seed=9).read_bytes()


def test_a_kept_image_is_new_work_once_its_text_changes(layout: Layout) -> None:
    layout.rule("motion", SMALL + 'source: keep\nprompt: "{{ text }}"\n')
    bench = Bench(layout)
    image = make_image(layout.inbox / "k.jpg")
    text = layout.inbox / "k.txt"
    text.write_text("first")
    bench.queue(image)
    assert [j.state for j in run_all(bench)] == ["done"]
    rules, _ = load_rules(bench.settings.rules_dir)
    fresh = Intake(bench.store, lambda: rules, bench.settings.failed_dir, 3)
    assert fresh.take(bench.settings.inbox[0], image).outcome == "known"
    text.write_text("second")
    again = Intake(bench.store, lambda: rules, bench.settings.failed_dir, 3)
    assert again.take(bench.settings.inbox[0], image).outcome == "queued"
    (job,) = run_all(bench)
    assert sidecar(Path(job.sidecar_path))["prompt"] == "second"


def test_relative_model_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from daemon.worker import model_location

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert model_location("models/tiny", tmp_path) == str(tmp_path / "models" / "tiny")
    assert model_location("./x", tmp_path) == str(tmp_path / "x")
    assert model_location("a/b/c", tmp_path) == str(tmp_path / "a" / "b" / "c")
    assert model_location("ali-vilab/i2vgen-xl", tmp_path) == "ali-vilab/i2vgen-xl"
    assert model_location("/abs/model", tmp_path) == "/abs/model"


def test_when_every_variant_fails_the_original_goes_to_failed(layout: Layout) -> None:
    layout.rule(
        "motion", SMALL + 'output: {name: "../{{ variant }}"}\nvariants: [{seed: 1}, {seed: 2}]\n'
    )
    bench = Bench(layout)
    (layout.inbox / "a.txt").write_text("words")
    bench.queue(make_image(layout.inbox / "a.jpg"))
    assert [j.state for j in run_all(bench)] == ["failed", "failed"]
    assert layout.files(layout.inbox) == []
    assert layout.files(layout.failed) == [
        "a.jpg",
        "a.jpg.error.json",
        "a.jpg.v1.error.json",
        "a.jpg.v2.error.json",
        "a.txt",
    ]
    report = sidecar(layout.failed / "a.jpg.error.json")
    assert set(report["variants"]) == {"v1", "v2"}
    assert "not a plain file name" in report["error"]


def test_one_failed_variant_still_publishes_the_rest_and_moves_the_original(
    layout: Layout,
) -> None:
    layout.rule(
        "motion",
        SMALL + "variants:\n  - {name: good}\n  - {name: bad, prompt: '{{ nope }}'}\n",
    )
    bench = Bench(layout)
    bench.queue(make_image(layout.inbox / "a.jpg"))
    assert [j.state for j in run_all(bench)] == ["done", "failed"]
    assert layout.files(layout.outbox) == ["a.jpg", "a.motion.good.json", "a.motion.good.mp4"]
    assert layout.files(layout.failed) == ["a.jpg.bad.error.json"]
    assert "'nope' is undefined" in sidecar(layout.failed / "a.jpg.bad.error.json")["error"]
