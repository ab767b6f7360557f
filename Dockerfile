# syntax=docker/dockerfile:1
# The bot on one NVIDIA GPU: `docker compose up -d` (docs/docker.md). PyTorch's wheel brings
# its own CUDA 13.0 libraries; the base image matches it, so a host driver too old for
# CUDA 13 is refused when the container starts, with a message naming the version.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

# Ubuntu's snapshot service shows apt the archive as it was at this moment, so the pinned
# versions stay installable. NVIDIA's apt repository is not needed (nor snapshotted): dropped.
ARG APT_SNAPSHOT=20260928T000000Z
RUN rm -f /etc/apt/sources.list.d/cuda*.list \
 && apt-get update --snapshot "${APT_SNAPSHOT}" \
 && apt-get install -y --no-install-recommends \
      python3-venv=3.12.3-0ubuntu2.1 \
      python3.12-venv=3.12.3-1ubuntu0.17 \
      libopus0=1.4-1build1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --create-home --home-dir /home/bot bot \
 && mkdir /data /models \
 && chown bot:bot /data /models

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY locks ./locks
COPY bot ./bot
COPY handlers ./handlers
# The README's install from the lock (not editable: the source stays root-owned and
# read-only). No PyTorch is installed first, so the lock's torch is its CUDA build from PyPI;
# the cache mount keeps that multi-GB download across rebuilds.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv && . /opt/venv/bin/activate && pip install -r locks/bot.txt .

# /data: the usage database and the heartbeat; /models: the Hugging Face cache (models and
# the voice table), kept apart so either can be wiped alone. The health check reads
# /data/heartbeat, so BOT_DATA_DIR stays /data (compose.yaml pins it over .env).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models \
    BOT_DATA_DIR=/data \
    BOT_METRICS_HOST=0.0.0.0
VOLUME ["/data", "/models"]
USER 10001:10001
WORKDIR /data
# `docker stop` sends SIGTERM: the bot refuses new work, finishes running jobs, delivers
# their replies and flushes the usage log (bot/serve.py), within compose's grace period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["python", "-m", "bot.health", "/data/heartbeat"]
CMD ["python", "-m", "bot", "run"]
