#!/usr/bin/env bash
# Issue 30's GPU measurements in one run, about 9 minutes on an H200: what a step of eager
# generate costs per task; the community mix at full size through the real executor, with
# answers ending where real ones do (bench/lengths.py), before (one worker per device) and
# after (a worker per class of task), rates 5, 10 and 15/s; and the memory of each worker
# process (bench/workers.py). Each step has its own time limit and a failed one does not
# stop the others; the JSON and the whole log go to $OUT (the device tool's folder) or
# bench/results/. Run it through bench/device_run.sh's wheels (docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export USE_HUB_KERNELS=NO # the machine has no hub; transformers 5.25 would ask it for kernels
failed=0

step() { # LIMIT_S SCRIPT ARGS...
  local limit=$1
  shift
  echo "== $* (at most ${limit} s)"
  if ! timeout --signal=INT --kill-after=15 "$limit" bench/device_run.sh "$@"; then
    echo "== FAILED: $*"
    failed=1
  fi
}

{
  step 60 bench/generate_step.py --device cuda
  for workers in one by-class; do
    step 200 bench/capacity.py --device cuda --full-size --workers "$workers" --rates 5,10,15 \
      --duration 20 --json "$out/capacity_cuda_$workers.json"
  done
  step 120 bench/workers.py --device cuda --full-size --duration 15 --json "$out/workers_cuda.json"
  exit $failed
} 2>&1 | tee "$out/capacity_gpu.log"
