#!/usr/bin/env bash
# The one prepared GPU session for the diffusion engine (BENCHMARKS.md, "Diffusion on a
# GPU"): installs the carried wheels, builds the full-size random I2VGen-XL once, runs
# benchmarks/bench_diffusion.py's sections most-wanted first inside a fixed budget, and
# leaves everything in one folder ($OUT, else ./gpu-results): bench.json, bench.log,
# nvidia-smi before and after, the installed versions.
#
#   benchmarks/gpu/prepare.sh     # once, on a machine with PyPI: the wheels to carry
#   benchmarks/gpu.sh             # on the GPU machine (carry benchmarks/gpu/wheels)
#   benchmarks/gpu.sh --dry-run   # here, on the CPU: the same steps with the tiny model
#
# On the GPU it stays under ~8 minutes: the benchmark stops starting sections after
# BUDGET_S seconds and is killed at LIMIT_S; bench.json is rewritten after every
# section, so a cut run keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
out="${OUT:-$PWD/gpu-results}"
mkdir -p "$out"
wheels=benchmarks/gpu/wheels
log() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" | tee -a "$out/gpu.log" >&2; }

if [ "$dry_run" = 1 ]; then
    python="${PYTHON:-$PWD/.venv/bin/python}"
    [ -x "$python" ] || python=python3
    # The install step, rehearsed: the same wheels into a scratch target, for the GPU
    # image's python (3.12, x86-64), so a missing or doubled wheel shows up here.
    if [ -d "$wheels" ]; then
        scratch="$(mktemp -d)"
        "$python" -m pip install -q --no-index --no-deps --no-compile --target "$scratch" \
            --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 "$wheels"/*.whl \
            && log "wheels install for python 3.12: $(ls "$wheels" | wc -l) wheels" \
            || { log "wheels do not install"; exit 1; }
        rm -rf "$scratch"
    else
        log "no $wheels: run benchmarks/gpu/prepare.sh before the GPU session"
    fi
    device=cpu
    args=(--rounds 1 --creep-jobs 2 --variant-jobs 1 --rung-jobs 1 --compile-backend eager
          --budget-s "${BUDGET_S:-600}")
    limit="${LIMIT_S:-900}"
else
    python=python3
    if [ ! -d "$wheels" ]; then
        log "no $wheels: run benchmarks/gpu/prepare.sh here and carry benchmarks/gpu/wheels"
        exit 2
    fi
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/i2vd-site "$wheels"/*.whl || { log "wheel install failed"; exit 2; }
    export PYTHONPATH="/tmp/i2vd-site${PYTHONPATH:+:$PYTHONPATH}"
    device=cuda
    args=(--full --model-dir /tmp/i2vgen-xl-random --rounds 3 --preset-rounds high=1
          --phases standard,quick --creep-jobs 20 --variant-jobs 2 --rung-jobs 1
          --oom-cap-gib 5 --budget-s "${BUDGET_S:-300}")
    limit="${LIMIT_S:-450}"
    nvidia-smi > "$out/nvidia-smi-before.txt" 2>&1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" - > "$out/versions.txt" 2>&1 <<'PY'
import importlib.metadata as m, sys
print(sys.version)
for name in ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub",
             "pydantic", "sqlmodel", "imageio-ffmpeg"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "MISSING")
import daemon.worker, daemon.engines.diffusion.engine  # the daemon imports, as it runs
import imageio_ffmpeg
print("ffmpeg", imageio_ffmpeg.get_ffmpeg_exe())
PY
status=$?
cat "$out/versions.txt" >&2
[ $status = 0 ] || { log "the daemon does not import; see versions.txt"; exit 3; }

log "benchmark on $device (limit ${limit} s)"
timeout "$limit" "$python" benchmarks/bench_diffusion.py --device "$device" "${args[@]}" \
    --limit-s "$limit" --json "$out/bench.json" > "$out/bench.log" 2>&1
status=$?
tail -n 5 "$out/bench.log" >&2
[ "$dry_run" = 1 ] || nvidia-smi > "$out/nvidia-smi-after.txt" 2>&1
log "benchmark exit status $status; results in $out"
exit $status
