#!/usr/bin/env bash
# Fetch, here, the Python 3.12 wheels that the GPU machine's image lacks (see bench/device.sh) into
# .whl/ (git-ignored). `--with-peer` adds diffusers for bench/run.py's side-by-side cases.
# imageio-ffmpeg is pinned to 0.5.1: its wheel is 27 MB, the newest one 68 MB, and the working tree
# plus the carried wheels must stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 imageio-ffmpeg==0.5.1 invisible-watermark==0.2.0
          PyWavelets==1.8.0)
if [ "${1:-}" = "--with-peer" ]; then packages+=(diffusers==0.42.1); fi
rm -rf .whl && mkdir .whl
for p in "${packages[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl "$p"
done
du -sh .whl
