"""The daemon's cost on a diffusion job, against the raw diffusers call plus the encode.

Run from the repository root:

    .venv/bin/python benchmarks/bench_diffusion.py                 # tiny I2VGen-XL on this machine
    .venv/bin/python benchmarks/bench_diffusion.py --full --device cuda --jobs 20   # on a GPU

Both sides use the same pipeline object on the same machine in the same run, in
alternating rounds (which side goes first alternates too), warm (one job each first,
not counted):

- **raw**: the I2VGen-XL call exactly as a script would make it (prompt embeddings
  computed beside it: transformers 5 breaks the pipeline's own clip-skip path), then
  ``encode_mp4`` of its frames;
- **daemon**: one queued job through ``Worker.run_once``: claim, read and hash the
  image, decode, render through the diffusion engine (progress hooks, out-of-memory
  guard, seed), encode, verify with ffprobe, write the sidecar, publish.

``--full`` builds the full-size I2VGen-XL architecture (its real configs, random
weights: speed does not depend on the weights' values) and runs the ``standard``
preset (512p, 16 frames, 50 steps). With CUDA it also reports peak GPU memory per
job (flat over ``--jobs`` jobs means no creep) and, with ``--oom-fraction F``, runs one
job under ``torch.cuda.set_per_process_memory_fraction(F)`` so the out-of-memory
ladder must recover for real.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import picture  # noqa: E402
from daemon.config import load_settings  # noqa: E402
from daemon.intake import Intake  # noqa: E402
from daemon.rules import load_rules  # noqa: E402
from daemon.store import JobStore  # noqa: E402
from daemon.video import encode_mp4  # noqa: E402
from daemon.worker import Worker  # noqa: E402
from tiny_pipelines import (  # noqa: E402
    build_full_i2vgenxl,
    build_i2vgenxl,
    i2vgenxl_prompt_embeds,
)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Daemon:
    """Intake and worker wired as the service wires them, on a temporary layout."""

    def __init__(self, root: Path, model: Path, params: dict[str, Any], device: str) -> None:
        self.root = root
        for name in ("inbox", "outbox", "failed", "rules", "state"):
            (root / name).mkdir(parents=True, exist_ok=True)
        rule = {
            "engine": "diffusion",
            "model": str(model),
            "preset": "standard",
            "params": params,
            "prompt": "{{ stem }} drifting slowly",
            "negative_prompt": "blurry",
        }
        (root / "rules" / "bench.yaml").write_text(yaml.safe_dump(rule), encoding="utf-8")
        config = root / "i2vd.yaml"
        config.write_text(
            yaml.safe_dump({"device": device, "settle_seconds": 0, "log_level": "WARNING"}),
            encoding="utf-8",
        )
        self.settings = load_settings(config)
        self.store = JobStore(self.settings.database_url)
        rules, problems = load_rules(self.settings.rules_dir)
        assert not problems, problems
        self.intake = Intake(self.store, lambda: rules, self.settings.failed_dir, 3)
        self.worker = Worker(self.settings, self.store, owner="bench:1")
        self.count = 0

    def job(self, size: int) -> tuple[float, dict[str, Any]]:
        self.count += 1
        path = self.settings.inbox[0] / f"img{self.count}.png"
        Image.fromarray(picture(size, size, seed=self.count)).save(path)
        result = self.intake.take(self.settings.inbox[0], path)
        assert result.outcome == "queued", result
        start = time.perf_counter()
        job = self.worker.run_once(time.time())
        elapsed = time.perf_counter() - start
        assert job is not None and job.state == "done", job and job.error
        assert job.sidecar_path
        sidecar: dict[str, Any] = json.loads(Path(job.sidecar_path).read_text())
        return elapsed, sidecar

    def pipeline(self) -> Any:
        engine = self.worker.engines["diffusion"]
        return engine.pipeline  # type: ignore[attr-defined]


def raw_job(pipe: Any, size: int, params: dict[str, Any], out: Path, seed: int) -> float:
    image = Image.fromarray(picture(size, size, seed=seed))
    start = time.perf_counter()
    prompt_embeds, negative_embeds = i2vgenxl_prompt_embeds(pipe, "img drifting slowly", "blurry")
    device = pipe._execution_device
    generator = torch.Generator(device=device).manual_seed(seed)
    frames = pipe(
        image=image,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        height=params["resolution"],
        width=params["resolution"],
        num_frames=params["frames"],
        num_inference_steps=params["steps"],
        guidance_scale=9.0,
        target_fps=params["fps"],
        generator=generator,
        output_type="np",
    ).frames[0]
    video = [(frame * 255).round().clip(0, 255).astype("uint8") for frame in frames]
    encode_mp4(video, out, params["fps"])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size I2VGen-XL, standard")
    parser.add_argument(
        "--standard",
        action="store_true",
        help="tiny model at the standard preset (512p, 16 frames, 50 steps): a job long "
        "enough that the daemon's fixed per-job cost shows in proportion",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=0, help="extra daemon jobs: memory creep")
    parser.add_argument("--oom-fraction", type=float, default=0.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if args.full:
            dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
            model = build_full_i2vgenxl(root / "model", dtype=dtype)
            params = {"resolution": 512, "frames": 16, "fps": 8, "steps": 50, "seed": 1}
        elif args.standard:
            model = build_i2vgenxl(root / "model")
            params = {"resolution": 512, "frames": 16, "fps": 8, "steps": 50, "seed": 1}
        else:
            model = build_i2vgenxl(root / "model")
            params = {"resolution": 256, "frames": 8, "fps": 8, "steps": 10, "seed": 1}
        size = params["resolution"] + 64  # a non-square source: crop and resize included
        daemon = Daemon(root / "daemon", model, params, args.device)
        cuda = args.device.startswith("cuda") and torch.cuda.is_available()

        warm_daemon, first = daemon.job(size)  # loads the model
        pipe = daemon.pipeline()
        warm_raw = raw_job(pipe, size, params, root / "raw-0.mp4", 0)
        raw_times: list[float] = []
        daemon_times: list[float] = []
        peaks: list[float] = []

        def daemon_round() -> None:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            daemon_times.append(daemon.job(size)[0])
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)

        def raw_round(index: int) -> None:
            raw_times.append(raw_job(pipe, size, params, root / f"raw-{index}.mp4", index))

        for index in range(1, args.rounds + 1):
            # Which side goes first alternates: the second of a pair runs on a warmer
            # allocator and cache, a bias of several percent on a CPU.
            if index % 2:
                raw_round(index)
                daemon_round()
            else:
                daemon_round()
                raw_round(index)
        for _ in range(args.jobs):
            daemon_round()

        result: dict[str, Any] = {
            "model": "full I2VGen-XL (random weights)" if args.full else "tiny I2VGen-XL",
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "params": params,
            "first_job_s": round(warm_daemon, 3),
            "first_job_load_s": first["timings"]["load"],
            "warm_raw_s": round(warm_raw, 3),
            "raw_median_s": round(median(raw_times), 3),
            "daemon_median_s": round(median(daemon_times[: args.rounds]), 3),
            "ratio": round(median(daemon_times[: args.rounds]) / median(raw_times), 3),
            "per_round_ratio_median": round(
                median([d / r for d, r in zip(daemon_times, raw_times, strict=False)]), 3
            ),
            "raw_s": [round(t, 3) for t in raw_times],
            "daemon_s": [round(t, 3) for t in daemon_times],
        }
        if cuda:
            result["gpu"] = torch.cuda.get_device_name()
            result["peak_gib_per_job"] = [round(p, 2) for p in peaks]
        if cuda and args.oom_fraction:
            torch.cuda.set_per_process_memory_fraction(args.oom_fraction)
            elapsed, sidecar = daemon.job(size)
            result["oom"] = {"fraction": args.oom_fraction, "seconds": round(elapsed, 2),
                             "backoff": sidecar["backoff"], "effective": sidecar["effective"]}
        daemon.store.close()

    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
