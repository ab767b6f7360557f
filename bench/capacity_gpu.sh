#!/usr/bin/env bash
# Issue 14's GPU measurements in one run, about 8 minutes on an H200: what a step of eager
# generate costs; chat's static and continuous paths, with and without CUDA graphs, at
# Qwen2.5-0.5B's architecture (one at a time is left out: it alone would take two minutes
# there); what the image options save; and the community mix at full size through the real
# executor (chat as BOT_CHAT__CONTINUOUS=auto runs it on CUDA). Each step has its own time
# limit and a failed one does not stop the others; the JSON and the whole log go to $OUT
# (the device tool's folder) or bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
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
  step 180 bench/chat.py --device cuda --full-size --paths static,continuous,continuous_graphs \
    --json "$out/chat_cuda.json"
  step 100 bench/imagine.py --device cuda --full-size --json "$out/imagine_cuda.json"
  step 270 bench/capacity.py --device cuda --full-size --rates 2,4,8 --duration 20 \
    --json "$out/capacity_cuda.json"
  exit $failed
} 2>&1 | tee "$out/capacity_gpu.log"
