#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md §4, one part per device-tool call (each well under its
# 10-minute limit; run them back to back while the machine is warm):
#   here:    bash bench/device-wheels.sh [--with-peer]      (the wheels the image lacks, into .whl/)
#   device:  bash bench/device.sh pipelines                  carry [".whl"]  (~5 min: SDXL, SVD-XT, SV4D 2.0)
#            bash bench/device.sh compile                    carry [".whl"]  (~4 min: SDXL with --compile)
#            bash bench/device.sh compile-cl                 carry [".whl"]  (~4 min: the same, channels_last)
#            bash bench/device.sh calls                      carry [".whl"]  (needs --with-peer wheels)
#            bash bench/device.sh calls-compile              carry [".whl"]  (gm compiled vs diffusers eager)
#            bash bench/device.sh plan                       carry [".whl"]  (~4 min: memory plan vs
#                     torch.cuda.max_memory_allocated at release sizes, bench/plan_vs_rss.py --device cuda)
# Every figure lands in $OUT (JSON + log); copy them into BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gm-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GM_CHECKPOINTS=/tmp/none
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, typer; print('torch', torch.__version__, 'typer', typer.__version__)" | tee -a "$OUT/gpu.txt"
case "${1:-pipelines}" in
    pipelines) python3 bench/pipelines.py --cases "${GM_BENCH_CASES:-sdxl,svd-xt,sv4d2}" --tmp /tmp \
                   --json "$OUT/pipelines.json" 2>&1 | tee "$OUT/pipelines.log" ;;
    compile)   python3 bench/pipelines.py --cases sdxl --compile --repeat 3 --tmp /tmp \
                   --json "$OUT/compile.json" 2>&1 | tee "$OUT/compile.log" ;;
    compile-cl) python3 bench/pipelines.py --cases sdxl --compile --set perf.channels_last=true --repeat 3 \
                   --tmp /tmp --json "$OUT/compile-cl.json" 2>&1 | tee "$OUT/compile-cl.log" ;;
    calls)     python3 bench/run.py --load-preset "${GM_BENCH_LOAD:-none}" --json "$OUT/calls.json" 2>&1 \
                   | tee "$OUT/calls.log" ;;
    calls-compile) python3 bench/run.py --compile --dtype fp16 --cases sdxl-unet-step,sd21-unet-step \
                   --load-preset none --json "$OUT/calls-compile.json" 2>&1 | tee "$OUT/calls-compile.log" ;;
    plan)      python3 bench/plan_vs_rss.py --device cuda --cases "${GM_PLAN_CASES:-sdxl-unet,svd-xt-unet,sv4d2-unet,svd-xt-decode,sdxl-decode}" \
                   2>&1 | tee "$OUT/plan.log"
               python3 bench/plan_table.py --presets sdxl-base-1.0,svd-xt,sv4d2 --json "$OUT/plan-table.json" \
                   2>&1 | tee -a "$OUT/plan.log" ;;
    *)         echo "usage: bash bench/device.sh pipelines|compile|compile-cl|calls|calls-compile|plan" >&2; exit 2 ;;
esac
