#!/usr/bin/env bash
# Runs a benchmark on a lent GPU machine whose image lacks some of our packages.
# Wheels for them sit in .whl/ (see bench/README.md); usage: bench/device_run.sh ARGS...
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
PYTHONUNBUFFERED=1 python3 bench/executor.py "$@"
