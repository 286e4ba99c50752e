#!/usr/bin/env bash
# Download the wheels benchmarks/gpu.sh installs on the GPU machine (which has no package
# registry) into benchmarks/gpu/wheels/ (ignored by git; carried with the run).
# Run once, here, on a machine that reaches PyPI:   benchmarks/gpu/prepare.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
rm -rf "$here/wheels"
mkdir -p "$here/wheels"
# The GPU image's python is 3.12 on x86-64 Linux; --no-deps: requirements.txt names
# every package the image lacks, one version each.
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform any \
    -d "$here/wheels" -r "$here/requirements.txt"
total=$(du -sm "$here/wheels" | cut -f1)
echo "$(ls "$here/wheels" | wc -l) wheels, ${total} MiB in $here/wheels"
if [ "$total" -gt 56 ]; then
    echo "too large to carry with the working tree (64 MiB in all)" >&2
    exit 1
fi
