"""The prepared GPU session, rehearsed on the CPU: ``benchmarks/gpu.sh --dry-run`` runs
every step and every benchmark section with the tiny I2VGen-XL, so a GPU minute is never
spent on a typo; and the benchmark's options are checked without running it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_section_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run(
        [str(REPO / "benchmarks" / "gpu.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:] + (tmp_path / "bench.log").read_text()[-4000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["errors"] == {} and result["sections_skipped"] == {}
    for preset in ("standard", "quick", "high"):
        section = result[f"preset_{preset}"]
        assert section["raw"] and section["daemon"]
        assert section["flops"]["per_step_tflop"] > 0
        assert section["daemon_over_raw"] > 0
        assert section["ladder"] and section["speed"]["scheduler"] == "DDIMScheduler"
    phases = result["preset_standard"]["instrumented_raw"]
    assert set(phases["phases_s"]) >= {"denoise", "vae_decode", "text_encoder"}
    assert phases["step_s"]["count"] == result["preset_standard"]["params"]["steps"]
    assert len(result["creep"]["jobs"]) == 2
    variants = result["variants"]
    assert variants["compile"]["speed"]["compile"] is True
    assert variants["compile"]["speed"]["compile_graphs"]["recompiles"] == 0
    assert variants["dpm++_25"]["steps"] == 25
    assert variants["step_cache"]["speed"]["step_cache"].startswith("deepcache")
    assert result["rungs"]["forward_chunking"]["cost_ratio"] > 0
    assert "needs CUDA" in result["oom"]["skipped"]
    assert result["environment"]["versions"]["diffusers"]
    goals = result["goals"]
    assert goals["standard_s"]["figure"] == result["preset_standard"]["daemon_median_s"]
    assert goals["oom_recovery_ratio"]["met"] is None  # not measured on the CPU
    versions = (tmp_path / "versions.txt").read_text()
    assert "MISSING" not in versions and "ffmpeg" in versions


def test_benchmark_options_are_checked() -> None:
    import bench_diffusion

    args = bench_diffusion.parse(
        ["--preset-rounds", "high=1", "--variants", "baseline,compile", "--ladder", "cpu_offload"]
    )
    assert args.preset_rounds == {"high": 1} and args.variants == ["baseline", "compile"]
    assert args.ladder == ["cpu_offload"]
    assert args.sections[:2] == ["environment", "preset:standard"]
    for wrong in (["--variants", "turbo"], ["--sections", "everything"]):
        with pytest.raises(SystemExit):
            bench_diffusion.parse(wrong)


def test_gpu_wheels_fit_the_carry_limit() -> None:
    """The wheel list names one version of each package, and what prepare.sh downloads
    (when it has run here) fits beside the working tree in a device run's 64 MiB."""
    lines = (REPO / "benchmarks" / "gpu" / "requirements.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    names = [name.lower().replace("_", "-") for name, _ in pins]
    assert len(names) == len(set(names))
    versions = dict(zip(names, (version for _, version in pins), strict=True))
    assert versions["imageio-ffmpeg"] == "0.5.1"  # the current wheel alone is 68 MB
    wheels = REPO / "benchmarks" / "gpu" / "wheels"
    if wheels.is_dir():
        assert sum(p.stat().st_size for p in wheels.iterdir()) < 56 * 2**20
