#!/usr/bin/env bash
# Issue 14's GPU measurements in one run, about 8 minutes on an H200: chat's three paths at
# Qwen2.5-0.5B's architecture, the community mix at full size through the real executor
# (chat on continuous batching, as BOT_CHAT__CONTINUOUS=auto runs it on CUDA), and what the
# image options save. The JSON goes to $OUT (the device tool's folder) or bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
bench/device_run.sh bench/chat.py --device cuda --full-size --json "$out/chat_cuda.json"
bench/device_run.sh bench/capacity.py --device cuda --full-size --rates 4,8,12,16 \
  --duration 15 --json "$out/capacity_cuda.json"
bench/device_run.sh bench/imagine.py --device cuda --full-size --json "$out/imagine_cuda.json"
