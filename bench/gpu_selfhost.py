"""The self-hosting path on a GPU box without a hub: pull, doctor, offline start.

Tiny stand-ins for every default model are served by the tests' local hub under the
default ids, pulled with ``bot.models.pull`` into a fresh HF cache, then ``python -m bot
doctor`` checks the machine (real GPU rows) and the bot's services start with
HF_HUB_OFFLINE=1 and run each task once on the accelerator.

    python bench/gpu_selfhost.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="selfhost-"))
os.environ.update(
    HF_HOME=str(WORK / "hf"),
    BOT_DATA_DIR=str(WORK / "data"),
    DISCORD_TOKEN="MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.stand-in-token-for-the-shape-check-only",
)
for name in [n for n in os.environ if n.startswith("BOT_") and n != "BOT_DATA_DIR"]:
    del os.environ[name]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.app import running  # noqa: E402
from bot.invocations import Caller  # noqa: E402
from bot.models import pull, requirements  # noqa: E402
from bot.settings import Settings  # noqa: E402
from handlers.chat import ChatRequest  # noqa: E402
from handlers.classify import ClassifyRequest  # noqa: E402
from handlers.imagine import ImagineRequest  # noqa: E402
from handlers.sentiment import SentimentRequest  # noqa: E402
from handlers.speak import SpeakRequest  # noqa: E402
from handlers.summarize import SummarizeRequest  # noqa: E402
from handlers.translate import TranslateRequest  # noqa: E402
from tests.localhub import LocalHub  # noqa: E402
from tests.test_offline import BUILDERS, DATASETS  # noqa: E402

REQUESTS = {
    "summarize": SummarizeRequest("The group met. They reviewed the notes on enzymes."),
    "translate": TranslateRequest("Good morning, everyone.", "fr", "en"),
    "imagine": ImagineRequest("a lighthouse at dusk", steps=4, seed=1),
    "speak": SpeakRequest("Welcome to the study group."),
    "sentiment": SentimentRequest("I love this study group"),
    "classify": ClassifyRequest("The exam moved to Friday", ["school", "music"]),
    "chat": ChatRequest("What should we review?", max_tokens=8),
}


async def serve_each_task_offline(settings: Settings) -> None:
    caller = Caller("selfhost", source="cli", enforce_quotas=False)
    async with running(settings) as services:
        for task, request in REQUESTS.items():
            handle = services.invoker.submit(task, request, caller)
            result = await handle
            print(f"  {task:10s} ok in {handle.run_s * 1000:6.1f} ms: {type(result).__name__}")
        for model in services.executor.snapshot().loaded:
            print(f"  loaded {model.task:10s} on {model.device} as {model.dtype}")


def main() -> int:
    hub = LocalHub()
    for source, build in BUILDERS.items():
        folder = WORK / "repos" / source.replace("/", "--")
        folder.mkdir(parents=True)
        hub.add(source, build(folder), "dataset" if source in DATASETS else "model")
    settings = Settings(_env_file=None)
    print("$ python -m bot models pull   (from a local stand-in hub)")
    failures = pull(requirements(settings), download=hub)
    os.environ["HF_HUB_OFFLINE"] = "1"
    print("\n$ HF_HUB_OFFLINE=1 python -m bot doctor")
    doctor = subprocess.run([sys.executable, "-m", "bot", "doctor"], cwd=ROOT, check=False)
    print(f"(exit {doctor.returncode})\n\nHF_HUB_OFFLINE=1: one request per task")
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    asyncio.run(serve_each_task_offline(Settings(_env_file=None)))
    return 1 if failures or doctor.returncode else 0


if __name__ == "__main__":
    raise SystemExit(main())
