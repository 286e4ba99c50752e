"""`rules explain` and the worker plan through one function (daemon/plan.py): what
explain says is what the worker publishes, and explain refuses an engine this host
cannot run, as the daemon does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, Layout, make_image
from daemon.cli import main
from worker_bench import Bench

# Rules that exercise every planned value: templates reading the image's size, its
# .txt and the variant; per-variant frame counts; square and source aspects; an output
# name template; the original moved (a third output) or kept.
SCENES = """\
match: {folders: ["scenes/**"]}
priority: 10
engine: motion
preset: quick
params: {resolution: 256, frames: 10, fps: 12}
aspect: source
source: move
prompt: "{{ text or stem }} at {{ width }}x{{ height }} ({{ variant }})"
negative_prompt: "not {{ folder }}"
output: {name: "{{ stem }}-{{ variant }}"}
variants:
  - {name: slow, params: {frames: 9}}
  - {name: wide, params: {frames: 13, resolution: 512}}
"""
SQUARES = """\
match: {folders: ["squares/**"]}
priority: 10
engine: motion
preset: quick
params: {resolution: 256, frames: 8, fps: 10}
aspect: square
source: keep
prompt: "square {{ stem }} {{ orientation }}"
"""


def explain(capsys: pytest.CaptureFixture[str], layout: Layout, *paths: Path) -> Any:
    config = str(layout.config_file)
    code = main(["rules", "explain", "--json", "--config", config, *map(str, paths)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    return json.loads(captured.out)


def test_explain_and_the_published_sidecars_agree(
    layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    layout.rule("scenes", SCENES)
    layout.rule("squares", SQUARES)
    images = [
        make_image(layout.inbox / "scenes" / "beach.jpg", 320, 240, seed=1),
        make_image(layout.inbox / "scenes" / "tall.png", 180, 400, seed=2),
        make_image(layout.inbox / "squares" / "pano.jpg", 600, 150, seed=3),
        make_image(layout.inbox / "plain.jpg", 200, 200, seed=4),  # the layout's own rule
    ]
    (layout.inbox / "scenes" / "beach.txt").write_text("waves at dusk\n", encoding="utf-8")
    predicted = {}
    for report in explain(capsys, layout, *images):
        assert report["ok"] and not report["skipped_rule_files"], report
        for output in report["winner"]["outputs"]:
            predicted[output["video"]] = (report, output)
    assert len(predicted) == 6  # two variants each in scenes/, one output elsewhere

    bench = Bench(layout)
    try:
        for image in images:
            bench.queue(image)
        ended = bench.drain()
    finally:
        bench.store.close()
    assert [job.state for job in ended] == ["done"] * 6
    published = {job.video_path: job for job in ended}
    assert set(published) == set(predicted)
    for video, (report, output) in predicted.items():
        sidecar = json.loads(Path(output["sidecar"]).read_text(encoding="utf-8"))
        frame, effective = output["frame"], sidecar["effective"]
        assert (sidecar["variant"] or "") == output["variant"]
        assert (sidecar["prompt"], sidecar["negative_prompt"]) == (
            output["prompt"],
            output["negative_prompt"],
        )
        assert (effective["width"], effective["height"]) == (frame["width"], frame["height"])
        assert (effective["frames"], effective["fps"]) == (frame["frames"], frame["fps"])
        assert sidecar["outputs"][:2] == [Path(video).name, Path(output["sidecar"]).name]
        original = report["winner"]["original"]
        if original["action"] == "move":
            # Variants leave the original to the drop's last job, which moves it here.
            assert Path(original["path"]).is_file()
        else:
            assert Path(original["path"]).is_file() and original["action"] == "keep"


def test_explain_a_diffusion_rule_on_a_host_without_the_diffusion_extra(
    layout: Layout, tmp_path: Path
) -> None:
    """The daemon fails such an image at once; explain says so and exits non-zero.
    A host without the extra is simulated by blocking the imports (``sys.modules`` set
    to None makes ``import torch`` fail and ``find_spec('torch')`` find nothing)."""
    layout.rule("ai", "engine: diffusion\nmodel: models/m\npriority: 1\n")
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['diffusers'] = None\n"
        "from daemon.cli import main\n"
        f"config = {str(layout.config_file)!r}\n"
        "sys.exit(main(['rules', 'explain', '--json', '--config', config, 'a.jpg']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [report] = json.loads(result.stdout)
    assert report["verdict"] == "rule ai wins" and not report["ok"]
    [error] = report["errors"]
    assert "engine 'diffusion' needs torch, diffusers, which this host does not have" in error
    assert "every image of this rule would fail" in error
    assert "pip install 'i2vd[diffusion]'" in error
