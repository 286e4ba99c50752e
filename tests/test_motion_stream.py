"""Frames streamed into the encoder: colours, the new motion fields, interruption and
encoder failures, from the writer up to the worker and the shipped rule in a daemon."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, Layout, make_image, picture, wait_for
from daemon import video
from daemon.colour import i420_to_rgb, planes, rgb_to_i420
from daemon.config import Settings
from daemon.engines.base import JobInterrupted, RenderRequest
from daemon.engines.motion import MotionEngine
from daemon.problems import RetryableProblem
from daemon.rules import MotionSettings, ResolvedParams, RuleFileError, load_rule_file
from daemon.store import JobStore
from daemon.video import EncoderFailed, Mp4Writer, encode_mp4, ffmpeg_exe, probe, verify
from daemon.worker import Worker
from worker_bench import Bench


def decode_rgb(path: Path) -> list[np.ndarray]:
    """Every frame as RGB, converted by ffmpeg the way the stream's tags say."""
    info = probe(path)
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
         "pipe:1"], capture_output=True, check=True,
    ).stdout  # fmt: skip
    frames = np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)
    return list(frames)


def colour_chart(side: int) -> np.ndarray:
    """Eight flat patches: primaries, secondaries, a skin tone and a mid grey."""
    colours = [
        (200, 30, 30), (30, 170, 40), (40, 60, 210), (220, 200, 40),
        (40, 190, 200), (190, 50, 180), (224, 172, 140), (128, 128, 128),
    ]  # fmt: skip
    chart = np.zeros((side, side, 3), np.uint8)
    step = side // 4
    for index, colour in enumerate(colours):
        row, col = divmod(index, 4)
        chart[row * step : (row + 1) * step, col * step : (col + 1) * step] = colour
    chart[2 * step :] = (90, 120, 150)
    return chart


# --- colour --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [512, 1024])
def test_decoded_colours_match_the_source(tmp_path: Path, side: int) -> None:
    chart = colour_chart(side)
    out = tmp_path / "chart.mp4"
    encode_mp4([chart] * 4, out, fps=8)
    info = probe(out)
    assert info.colour.split(", ")[:2] == ["tv", "bt709"]
    decoded = decode_rgb(out)[-1].astype(int)
    step = side // 4
    for row in range(2):
        for col in range(4):
            # The middle of each patch, away from the chroma edges.
            rows = np.s_[row * step + 16 : (row + 1) * step - 16]
            inner = (rows, np.s_[col * step + 16 : (col + 1) * step - 16])
            got = decoded[inner].reshape(-1, 3).mean(axis=0)
            want = chart[inner].reshape(-1, 3).mean(axis=0)
            assert np.abs(got - want).max() <= 3, (side, row, col, got, want)


def test_rgb_to_i420_round_trip_is_close() -> None:
    rgb = picture(256, 192)
    back = i420_to_rgb(rgb_to_i420(rgb)).astype(int)
    assert np.abs(back - rgb).mean() < 3
    grey = np.full((4, 4, 3), (0, 128, 255)[1], np.uint8)
    y, u, v = planes(rgb_to_i420(grey), 4, 4)
    assert (int(y[0, 0]), int(u[0, 0]), int(v[0, 0])) == (126, 128, 128)  # 16 + 219 * 128/255


# --- motion fields ---------------------------------------------------------------------------


def stream(image: Image.Image, **motion: object) -> tuple[int, int, list[np.ndarray]]:
    params = ResolvedParams(resolution=256, frames=16, fps=8, steps=30, guidance=9.0)
    req = RenderRequest(
        image=image, params=params, aspect="square", prompt="", negative_prompt="",
        model=None, motion=MotionSettings(**motion),
    )  # fmt: skip
    clip = MotionEngine().stream(req)
    frames = list(clip.frames)
    assert len(frames) == len(clip.frames)
    return clip.fps, len(frames), frames


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, (16, 8)),  # the preset's: 16 frames at 8 fps
        ({"duration": 4.0, "fps": 24}, (96, 24)),
        ({"fps": 60}, (120, 60)),  # the preset's 2 s, at 60 fps
        ({"duration": 1.5}, (12, 8)),
        ({"interpolate_fps": 24}, (48, 24)),  # rendered natively, same length
        ({"interpolate_fps": 24, "fps": 30}, (60, 30)),
        ({"duration": 0.25, "fps": 4}, (2, 4)),  # at least two frames
    ],
)
def test_duration_and_fps_set_the_clip(
    fields: dict[str, object], expected: tuple[int, int]
) -> None:
    assert MotionSettings(**fields).timing(16, 8) == expected  # type: ignore[arg-type]
    fps, count, frames = stream(Image.fromarray(picture(320, 240)), **fields)
    assert (count, fps) == expected
    assert all(f.shape == (384, 256) and f.dtype == np.uint8 for f in frames)


@pytest.mark.parametrize(
    ("line", "field"),
    [("fps: 61", "motion.fps"), ("fps: 3", "motion.fps"), ("duration: 0", "motion.duration"),
     ("duration: 61", "motion.duration"), ("crf: 52", "motion.crf")],
)  # fmt: skip
def test_out_of_range_motion_fields_name_the_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(f"engine: motion\nmotion:\n  {line}\n", encoding="utf-8")
    with pytest.raises(RuleFileError) as err:
        load_rule_file(path)
    assert [p.field for p in err.value.problems] == [field]
    assert err.value.problems[0].line == 3


def test_fades_in_the_stream_are_plane_affine() -> None:
    image = Image.fromarray(60 + picture(320, 240) // 2)
    _, _, plain = stream(image)
    _, _, faded = stream(image, fade_in=0.5, fade_out=0.25)
    # fade_in 0.5 s at 8 fps: gains 0, 1/4, 1/2, 3/4; the last frame's gain is 0.
    for index, gain in [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75), (15, 0.0)]:
        y, u, _ = planes(faded[index], 256, 256)
        y0, u0, _ = planes(plain[index], 256, 256)
        assert np.abs(y - (16 + (y0.astype(float) - 16) * gain)).max() <= 1, index
        assert np.abs(u - (128 + (u0.astype(float) - 128) * gain)).max() <= 1, index
    assert all(np.array_equal(a, b) for a, b in zip(faded[4:14], plain[4:14], strict=True))


# --- interruption and encoder failures -------------------------------------------------------


def frames_then(count: int, error: BaseException) -> Iterator[np.ndarray]:
    for index in range(count):
        yield rgb_to_i420(np.full((64, 64, 3), index * 8, np.uint8))
    raise error


def test_interrupting_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with pytest.raises(JobInterrupted):
        encode_mp4(frames_then(10, JobInterrupted()), out, fps=8)
    assert not out.exists()


def test_an_aborted_writer_stops_its_encoder(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with pytest.raises(JobInterrupted), Mp4Writer(out, 64, 64, 8) as writer:
        for frame in frames_then(5, JobInterrupted()):
            writer.write(frame)
    assert writer._proc.returncode is not None  # killed and reaped, not left running
    assert not out.exists()


def fake_ffmpeg(folder: Path, script: str) -> Path:
    """A fake encoder for the failure paths the real one cannot be made to take on cue."""
    path = folder / "fake-ffmpeg"
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("echo 'fake encoder: cannot start' >&2\nexit 1\n", "cannot start"),  # broken pipe at once
        (  # takes a few frames, then dies: the pipe breaks mid-stream
            "head -c 20000 >/dev/null\necho 'fake encoder: No space left' >&2\nexit 1\n",
            "No space left",
        ),
        ("cat >/dev/null\necho 'fake encoder: muxer failed' >&2\nexit 1\n", "muxer failed"),
    ],
)
def test_an_encoder_that_exits_early_is_a_retryable_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, said: str
) -> None:
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake_ffmpeg(tmp_path, script)))
    out = tmp_path / "clip.mp4"
    frames = [rgb_to_i420(np.full((64, 64, 3), 100, np.uint8))] * 40
    with pytest.raises(EncoderFailed) as err:
        encode_mp4(frames, out, fps=8)
    problem = err.value
    assert isinstance(problem, RetryableProblem) and problem.retryable
    assert "encoder" in problem.message and said not in problem.message
    assert said in (problem.detail or "")  # ffmpeg's own words, for admins
    assert problem.hint
    assert not out.exists()


def test_a_job_whose_encoder_dies_is_retried_and_publishes_nothing(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = Bench(layout)
    try:
        bench.queue(make_image(layout.inbox / "a.jpg"))
        fake = fake_ffmpeg(layout.root, "head -c 50000 >/dev/null\nexit 1\n")
        monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake))
        job = bench.run()
        assert job.state == "retrying"
        assert job.error is not None and "encoder" in job.error
        assert layout.files(layout.outbox) == []
        assert layout.files(layout.inbox) == ["a.jpg"]
        bench.assert_clean()
        monkeypatch.undo()  # the real encoder is back: the retry succeeds
        job = bench.run()
        assert job.state == "done"
    finally:
        bench.store.close()


def test_a_job_stopped_mid_stream_goes_back_to_the_queue(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = Bench(layout)
    calls: list[float] = []
    original = Worker._checkpoint

    def checkpoint(self: Worker, job: object, done: float) -> None:
        calls.append(done)
        if len(calls) == 5:
            self.stop.set()  # as SIGTERM does, while frames are being encoded
        original(self, job, done)  # type: ignore[arg-type]

    monkeypatch.setattr(Worker, "_checkpoint", checkpoint)
    try:
        bench.queue(make_image(layout.inbox / "a.jpg"))
        job = bench.run()
        assert job.state == "queued" and len(calls) == 5
        assert layout.files(layout.outbox) == []
        bench.assert_clean()
    finally:
        bench.store.close()


# --- the shipped rule, through a daemon --------------------------------------------------


@pytest.mark.slow
def test_the_shipped_rule_makes_4_seconds_at_24_fps_starting_on_the_picture(
    layout: Layout, daemon
) -> None:
    shutil.copy(REPO / "rules" / "motion.yaml", layout.rules / "motion.yaml")
    source = picture(640, 480, seed=3)
    Image.fromarray(source).save(layout.inbox / "photo.png")
    proc = daemon()
    proc.wait_started()
    wait_for(lambda: (layout.outbox / "photo.motion.json").exists(), timeout=60)
    assert proc.stop() == 0
    video_path = layout.outbox / "photo.motion.mp4"
    info = verify(video_path, 512, 512, 24, 96)
    assert info.frames / info.fps == 4.0
    first = decode_rgb(video_path)[0].astype(float)
    crop = Image.fromarray(source).resize(
        (512, 512), Image.Resampling.LANCZOS, box=(80, 0, 560, 480)
    )
    assert first.mean() > 60  # a picture, not black
    assert np.abs(first - np.asarray(crop)).mean() < 6  # the photo itself (after H.264)


def test_frames_rendered_on_several_threads_are_the_same_frames_in_order() -> None:
    params = ResolvedParams(resolution=256, frames=16, fps=8, steps=30, guidance=9.0)
    seen: list[float] = []
    req = RenderRequest(
        image=Image.fromarray(picture(320, 240)), params=params, aspect="square", prompt="",
        negative_prompt="", model=None, motion=MotionSettings(fps=24, fade_out=0.5),
        checkpoint=seen.append,
    )  # fmt: skip
    alone = list(MotionEngine(threads=1).stream(req).frames)
    seen.clear()
    pooled = list(MotionEngine(threads=3).stream(req).frames)
    assert len(alone) == len(pooled) == 48
    assert all(np.array_equal(a, b) for a, b in zip(alone, pooled, strict=True))
    assert seen == [i / 48 for i in range(48)]


def test_stopping_a_pooled_render_stops_starting_frames() -> None:
    params = ResolvedParams(resolution=256, frames=16, fps=8, steps=30, guidance=9.0)
    seen: list[float] = []

    def checkpoint(done: float) -> None:
        seen.append(done)
        if len(seen) == 10:
            raise JobInterrupted()

    req = RenderRequest(
        image=Image.fromarray(picture(320, 240)), params=params, aspect="square", prompt="",
        negative_prompt="", model=None, motion=MotionSettings(), checkpoint=checkpoint,
    )  # fmt: skip
    with pytest.raises(JobInterrupted):
        list(MotionEngine(threads=3).stream(req).frames)
    assert len(seen) == 10


# --- several motion jobs at once ------------------------------------------------------------

SLOW_MOTION = """\
name: motion
engine: motion
preset: quick
params: {resolution: 256}
motion: {duration: 30, fps: 60}
"""


def running_jobs(layout: Layout) -> int:
    store = JobStore(layout.load().database_url)
    try:
        return store.count_by_state().get("running", 0)
    finally:
        store.close()


@pytest.mark.slow
def test_motion_jobs_run_side_by_side_up_to_the_setting(layout: Layout, daemon) -> None:
    layout.rule("motion", SLOW_MOTION)  # 1,800 frames each: seconds of work
    layout.write_config(motion_jobs=2)
    for index in range(3):
        make_image(layout.inbox / f"p{index}.jpg", seed=index)
    proc = daemon()
    proc.wait_started()
    wait_for(lambda: running_jobs(layout) == 2, timeout=60, interval=0.02)
    most = 0

    def all_done() -> bool:
        nonlocal most
        most = max(most, running_jobs(layout))
        return all((layout.outbox / f"p{i}.motion.json").exists() for i in range(3))

    wait_for(all_done, timeout=180, interval=0.05)
    assert proc.stop() == 0
    assert most <= 2  # never more than the setting
    for index in range(3):
        assert probe(layout.outbox / f"p{index}.motion.mp4").frames == 1800


def test_motion_job_slots_default_to_one_per_eight_cores() -> None:
    assert Settings(motion_jobs=3).motion_job_slots() == 3
    cores = len(os.sched_getaffinity(0))
    assert Settings().motion_job_slots() == max(1, cores // 8)
