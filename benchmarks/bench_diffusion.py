"""Diffusion at GPU speed: the daemon against the raw call, memory, utilisation, the
ladder and every speed switch, in one run that writes one JSON document.

Run from the repository root:

    .venv/bin/python benchmarks/bench_diffusion.py                      # tiny model, CPU
    python3 benchmarks/bench_diffusion.py --full --device cuda \\
        --model-dir /tmp/i2vgen-xl-random --json out.json              # one GPU session

(``benchmarks/gpu.sh`` is the prepared GPU session; ``benchmarks/gpu.sh --dry-run``
rehearses it here.) Sections, each timed against ``--budget-s`` and skipped with a
reason once the budget is spent, each recording its error instead of ending the run:

- ``environment``: versions, GPU, nvidia-smi, measured bf16 matrix-product rate;
- ``presets``: per preset, FLOPs (torch's counter, 1 and 2 steps), one instrumented raw
  call (per-phase and per-step times), then raw and daemon jobs alternating (which side
  goes first alternates too), each with peak allocated/reserved and allocated after;
  utilisation = FLOPs / seconds / the GPU's dense bf16 peak;
- ``creep``: ``--creep-jobs`` daemon jobs in a row, allocated memory after each;
- ``rungs``: each ladder saver switched on alone on the loaded pipeline, one raw job;
- ``variants``: each speed switch alone, through the daemon, on the same loaded pipeline;
- ``oom``: an absolute cap (``--oom-cap-gib``) set after emptying the allocator's cache,
  so the cap is felt; the daemon's ladder (``--ladder``) must recover for real.

``--full`` builds the full-size I2VGen-XL architecture (real configs, random weights:
speed and memory do not depend on the weights' values) into ``--model-dir`` once and
reuses it on later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROCESS_START = time.monotonic()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import diffusion_probe as probe  # noqa: E402
import torch  # noqa: E402
from diffusion_daemon import Daemon  # noqa: E402

from daemon.engines.diffusion import ladder as ladder_module  # noqa: E402
from daemon.engines.diffusion import speed  # noqa: E402
from daemon.engines.diffusion.families import BY_CLASS  # noqa: E402
from daemon.rules import BUILTIN_PRESETS  # noqa: E402
from tiny_pipelines import build_full_i2vgenxl, build_i2vgenxl  # noqa: E402

# The tiny model's stand-ins for the presets (the smallest a rule allows): the same code
# paths in seconds on a CPU.
TINY_PRESETS = {
    "quick": {"resolution": 256, "frames": 8, "fps": 8, "steps": 10},
    "standard": {"resolution": 256, "frames": 12, "fps": 8, "steps": 12},
    "high": {"resolution": 512, "frames": 8, "fps": 8, "steps": 10},
}
# torch.compile's warm-up of the full UNet with inductor: skipped when less time is left.
COMPILE_NEEDS_S = 180.0
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "no_cudnn_benchmark": {"cudnn_benchmark": False},
    "channels_last": {"channels_last": True},
    "fused_qkv": {"fused_qkv": True},
    "dpm++_25": {"scheduler": "dpm++", "scheduler_steps": 25},
    "step_cache": {"step_cache": True},
    "compile": {"compile": True},
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Run:
    """The sections of one benchmark run, against one time budget."""

    def __init__(self, args: argparse.Namespace, daemon: Daemon, presets: dict[str, Any]) -> None:
        self.args, self.daemon, self.presets = args, daemon, presets
        self.device = args.device
        self.memory = probe.Memory(self.device)
        self.started = time.monotonic()
        self.result: dict[str, Any] = {"sections_skipped": {}, "errors": {}}
        self.peak: float | None = args.peak_tflops
        self.flops: dict[str, dict[str, float]] = {}

    def section(self, name: str, body: Callable[[], Any]) -> None:
        spent = time.monotonic() - self.started
        if spent > self.args.budget_s:
            self.result["sections_skipped"][name] = f"budget spent ({spent:.0f} s)"
            return
        began = time.monotonic()
        try:
            self.result[name] = body()
        except Exception as exc:  # one broken section must not lose the others' figures
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        print(
            f"[{time.monotonic() - self.started:6.1f} s] {name}: {time.monotonic() - began:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    def keep(self, name: str, partial: dict[str, Any]) -> None:
        """Save a long section's results so far: the run may be stopped inside it."""
        self.result[name] = partial
        save(self.result, self.args.json)

    def environment(self) -> dict[str, Any]:
        measured = probe.matmul_tflops(self.device)
        sheet = probe.datasheet_tflops(self.device)
        if self.peak is None:
            self.peak = sheet or measured
        return {
            "device": self.device,
            "gpu": torch.cuda.get_device_name() if probe.cuda(self.device) else None,
            "torch_threads": torch.get_num_threads(),
            "versions": probe.versions(),
            "nvidia_smi": probe.nvidia_smi(),
            "bf16_matmul_tflops_measured": round(measured, 1) if measured else None,
            "bf16_dense_tflops_datasheet": sheet,
            "peak_tflops_used": self.peak,
        }

    def daemon_job(self, preset: dict[str, int], into: list[dict[str, Any]]) -> dict[str, Any]:
        """One timed daemon job; returns its sidecar."""
        record: dict[str, Any] = {}
        with self.memory.span(record):
            seconds, sidecar = self.daemon.job(preset["resolution"])
        record.update(seconds=round(seconds, 3), load_s=sidecar["timings"].get("load"))
        into.append(record)
        return sidecar

    def raw(self, preset: dict[str, int], index: int, into: list[dict[str, Any]]) -> float:
        record: dict[str, Any] = {}
        out = self.daemon.root / f"raw-{index}.mp4"
        with self.memory.span(record):
            seconds = probe.raw_job(self.daemon.pipeline, preset, out, index, self.device)
        record["seconds"] = round(seconds, 3)
        into.append(record)
        return seconds

    def preset(self, name: str) -> dict[str, Any]:
        preset = self.presets[name]
        self.daemon.use(preset)
        first, sidecar = self.daemon.job(preset["resolution"])  # loads, or warms this size
        pipe = self.daemon.pipeline
        counted = probe.flops(pipe, preset)
        self.flops[name] = counted
        instrumented = probe.phases(pipe, preset, self.device) if name in self.args.phases else None
        raw: list[dict[str, Any]] = []
        daemon: list[dict[str, Any]] = []
        for index in range(1, self.args.preset_rounds.get(name, self.args.rounds) + 1):
            if index % 2:
                self.raw(preset, index, raw)
                self.daemon_job(preset, daemon)
            else:
                self.daemon_job(preset, daemon)
                self.raw(preset, index, raw)
        raw_median = median([r["seconds"] for r in raw])
        daemon_median = median([d["seconds"] for d in daemon])
        return {
            "params": preset,
            "first_job_s": round(first, 3),
            "first_job_load_s": sidecar["timings"].get("load"),
            "flops": counted,
            "instrumented_raw": instrumented,
            "raw": raw,
            "daemon": daemon,
            "raw_median_s": round(raw_median, 3),
            "daemon_median_s": round(daemon_median, 3),
            "daemon_over_raw": round(daemon_median / raw_median, 3),
            "utilisation_raw": probe.utilisation(counted["job_tflop"], raw_median, self.peak),
            "utilisation_daemon": probe.utilisation(counted["job_tflop"], daemon_median, self.peak),
            "ladder": sidecar["effective"].get("ladder"),
            "ladder_skipped": sidecar["effective"].get("ladder_skipped"),
            "speed": sidecar["effective"].get("speed"),
        }

    def creep(self) -> dict[str, Any]:
        name = self.args.creep_preset
        self.daemon.use(self.presets[name])
        jobs: list[dict[str, Any]] = []
        for _ in range(self.args.creep_jobs):
            self.daemon_job(self.presets[name], jobs)
        after = [j.get("allocated_after_mib") for j in jobs if "allocated_after_mib" in j]
        return {
            "preset": name,
            "jobs": jobs,
            "allocated_after_spread_mib": round(max(after) - min(after), 1) if after else None,
            "nvidia_smi": probe.nvidia_smi(),
        }

    def rungs(self) -> dict[str, Any]:
        """Each saver alone on the loaded pipeline: what it costs in seconds and saves in
        peak memory, against the same raw job without it."""
        preset = self.presets[self.args.variant_preset]
        pipe = self.daemon.pipeline
        family = BY_CLASS[type(pipe).__name__]
        results: dict[str, Any] = {}
        for saver in ("none", "vae_slicing", "vae_tiling", "forward_chunking", "cpu_offload"):
            if saver == "cpu_offload" and not probe.cuda(self.device):
                results[saver] = {"skipped": "needs a GPU"}
                continue
            on = {
                "none": lambda: None,
                "vae_slicing": pipe.vae.enable_slicing,
                "vae_tiling": pipe.vae.enable_tiling,
                "forward_chunking": lambda: ladder_module.chunk_feed_forwards(pipe.unet),
                "cpu_offload": lambda: pipe.enable_model_cpu_offload(device=self.device),
            }[saver]
            on()
            jobs: list[dict[str, Any]] = []
            try:
                for index in range(self.args.rung_jobs):
                    self.raw(preset, 100 + index, jobs)
            except Exception as exc:  # e.g. the tiny VAE's tiles are smaller than a kernel
                results[saver] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            finally:
                if saver != "none":
                    ladder_module.revert((saver,), pipe, family, self.device)
            results[saver] = {"seconds": median([j["seconds"] for j in jobs]), "jobs": jobs}
            self.keep("rungs", results)
        base = results["none"]["seconds"]
        for entry in results.values():
            if "seconds" in entry:
                entry["cost_ratio"] = round(entry["seconds"] / base, 3)
        return results

    def variants(self) -> dict[str, Any]:
        preset = self.presets[self.args.variant_preset]
        results: dict[str, Any] = {}
        for name in self.args.variants:
            if time.monotonic() - self.started > self.args.budget_s:
                results[name] = {"skipped": "budget spent"}
                continue
            left = self.args.limit_s - (time.monotonic() - PROCESS_START)
            if name == "compile" and left < COMPILE_NEEDS_S:
                results[name] = {"skipped": f"{left:.0f} s left; compiling needs more"}
                continue
            self.daemon.use(preset, VARIANTS[name])
            first, last = self.daemon.job(preset["resolution"])  # warm-up / compile
            jobs: list[dict[str, Any]] = []
            for _ in range(self.args.variant_jobs):
                last = self.daemon_job(preset, jobs)
            seconds = median([j["seconds"] for j in jobs])
            results[name] = {
                "first_job_s": round(first, 3),
                "median_s": round(seconds, 3),
                "jobs": jobs,
                "steps": last["effective"]["speed"]["steps"],
                "speed": last["effective"]["speed"],
            }
            flops = self.flops.get(self.args.variant_preset)
            if flops:
                results[name]["utilisation_nominal"] = probe.utilisation(
                    flops["job_tflop"], seconds, self.peak
                )
            self.keep("variants", results)
        base = results.get("baseline", {}).get("median_s")
        if base:
            for entry in results.values():
                if "median_s" in entry:
                    entry["speedup"] = round(base / entry["median_s"], 3)
        self.daemon.use(preset)
        return results

    def oom(self) -> dict[str, Any]:
        if not probe.cuda(self.device):
            return {"skipped": "a real out-of-memory needs CUDA (the CPU has no cap to set)"}
        preset = self.presets[self.args.oom_preset]
        diffusion = {"ladder": self.args.ladder} if self.args.ladder else {}
        self.daemon.use(preset, diffusion)
        uncapped, _ = self.daemon.job(preset["resolution"])
        torch.cuda.synchronize()
        ladder_module.release_memory(self.device)  # an empty cache: the cap is felt at once
        total = torch.cuda.get_device_properties(0).total_memory
        cap = self.args.oom_cap_gib * 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        record: dict[str, Any] = {}
        try:
            with self.memory.span(record):
                seconds, sidecar = self.daemon.job(preset["resolution"])
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        return {
            "cap_gib": self.args.oom_cap_gib,
            "uncapped_s": round(uncapped, 3),
            "capped_s": round(seconds, 3),
            "ratio": round(seconds / uncapped, 3),
            "memory": record,
            "backoff": sidecar["backoff"],
            "effective": sidecar["effective"],
            "size": [sidecar.get("width"), sidecar.get("height"), sidecar.get("frames")],
        }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size I2VGen-XL (random)")
    parser.add_argument("--model-dir", type=Path, help="build the model here once; reuse")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="raw/daemon pairs per preset")
    parser.add_argument("--preset-rounds", default="", help="e.g. high=1 (else --rounds)")
    parser.add_argument("--phases", default="quick,standard", help="presets timed per phase")
    parser.add_argument("--rung-jobs", type=int, default=2, help="raw jobs per ladder saver")
    parser.add_argument("--creep-jobs", type=int, default=5)
    parser.add_argument("--creep-preset", default="quick")
    parser.add_argument("--variants", default="all", help=f"all or some of {list(VARIANTS)}")
    parser.add_argument("--variant-preset", default="standard")
    parser.add_argument("--variant-jobs", type=int, default=2)
    parser.add_argument("--oom-cap-gib", type=float, default=5.0)
    parser.add_argument("--oom-preset", default="standard")
    parser.add_argument("--ladder", help="comma-separated rungs for the out-of-memory job")
    parser.add_argument("--peak-tflops", type=float, help="default: datasheet, else measured")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on a CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no section after")
    parser.add_argument("--limit-s", type=float, default=3600.0, help="when the run is killed")
    parser.add_argument(
        "--sections",
        default="environment,preset:standard,preset:quick,oom,creep,preset:high,variants,rungs",
        help="in the order run (most wanted first: the budget may cut the tail)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.preset_rounds = {
        k: int(v) for k, v in (item.split("=") for item in args.preset_rounds.split(",") if item)
    }
    args.phases = args.phases.split(",")
    args.variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    args.ladder = args.ladder.split(",") if args.ladder else None
    args.sections = args.sections.split(",")
    known = {"environment", "creep", "rungs", "variants", "oom"}
    wrong = [x for x in args.sections if x not in known and not x.startswith("preset:")]
    if wrong:
        parser.error(f"unknown sections {wrong}; known: {sorted(known)} and preset:NAME")
    return args


def model_folder(args: argparse.Namespace, scratch: Path) -> Path:
    folder = args.model_dir or scratch / "model"
    if (folder / "model_index.json").exists():
        return folder
    if args.full:
        dtype = torch.float16 if probe.cuda(args.device) else torch.float32
        return build_full_i2vgenxl(folder, dtype=dtype)
    return build_i2vgenxl(folder)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # On a CPU one thread: OpenMP threads on a small shared machine spin against each
    # other and make a tiny job tens of times slower (see tests/test_diffusion_engine.py).
    torch.set_num_threads(args.threads or (1 if args.device == "cpu" else os.cpu_count() or 1))
    speed.COMPILE_BACKEND = args.compile_backend
    table = {n: p.model_dump(exclude={"guidance"}) for n, p in BUILTIN_PRESETS.items()}
    presets = table if args.full else TINY_PRESETS
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        started = time.monotonic()
        try:
            model = model_folder(args, scratch)
            daemon = Daemon(scratch / "daemon", model, args.device)
        except Exception as exc:  # nothing to measure: say why in the one results file
            save({"errors": {"setup": f"{type(exc).__name__}: {exc}"[:2000]}}, args.json)
            raise
        run = Run(args, daemon, presets)
        run.result.update(
            model="full I2VGen-XL (random weights)" if args.full else "tiny I2VGen-XL",
            model_ready_s=round(time.monotonic() - started, 1),
            args={k: str(v) for k, v in vars(args).items()},
        )
        for section in args.sections:
            if section.startswith("preset:"):
                name = section.split(":", 1)[1]
                run.section(f"preset_{name}", lambda name=name: run.preset(name))
            else:
                run.section(section, getattr(run, section))
            # Written after every section: a run stopped by its time limit keeps the rest.
            save(run.result, args.json)
        run.result["goals"] = probe.goals(run.result)
        run.result["total_s"] = round(time.monotonic() - run.started, 1)
        daemon.store.close()
    print(save(run.result, args.json))
    return 1 if run.result["errors"] else 0


def save(result: dict[str, Any], path: Path | None) -> str:
    text = json.dumps(result, indent=2, default=str)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    sys.exit(main())
