#!/usr/bin/env bash
# Runs a benchmark on a lent GPU machine whose image lacks some of our packages.
# Wheels for them sit in .whl/ (docs/benchmarks.md); usage: bench/device_run.sh [SCRIPT.py] ARGS...
# (SCRIPT defaults to bench/executor.py).
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  if [[ ! -e /tmp/site/.installed ]]; then # once per machine
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    touch /tmp/site/.installed
  fi
  export PYTHONPATH=/tmp/site
fi
script=bench/executor.py
if [[ "${1:-}" == *.py ]]; then
  script=$1
  shift
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
PYTHONUNBUFFERED=1 exec python3 "$script" "$@"
