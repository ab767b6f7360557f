"""Text commands while images saturate a device: one model worker per device against a worker
per class of task (BOT_WORKERS_PER_DEVICE), side by side in one run.

    python bench/workers.py --device cpu --json bench/results/workers_cpu.json
    python bench/workers.py --device cuda --full-size --json out.json
    [--duration 20] [--text-rate 4] [--images 4] [--image-steps 20] [--seed 0]

For each layout, through the real executor with its models in worker processes (tiny models
built offline, or the defaults' architectures with ``--full-size``), two phases of the same
seeded text commands (/sentiment, /summarize, /translate, /classify, arriving as a Poisson
process at ``--text-rate`` a second): alone, then while /imagine keeps ``--images`` requests
outstanding, so that the image worker is never idle. Reported per layout and phase: the
text commands' p50 and p95 wait (admission to the start of their batch), and the ratio of
the p95s with and without images. The target: at most 1.5 with a worker per class, beside
the one-worker layout's ratio. Each worker gets its share of the cores (one each here).
On CUDA, each layout also reports the GPU memory of each worker process (nvidia-smi), which
includes the CUDA context every process pays for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.capacity import percentile  # noqa: E402
from bench.models import TEXTS, build_models  # noqa: E402
from bot.app import start_executor  # noqa: E402
from bot.executor import Executor, JobHandle  # noqa: E402
from handlers.classify import ClassifyRequest  # noqa: E402
from handlers.imagine import ImagineRequest  # noqa: E402
from handlers.sentiment import SentimentRequest  # noqa: E402
from handlers.summarize import SummarizeRequest  # noqa: E402
from handlers.translate import TranslateRequest  # noqa: E402

TEXT_MIX: list[tuple[str, Callable[[random.Random], Any]]] = [
    ("sentiment", lambda r: SentimentRequest(r.choice(TEXTS))),
    ("summarize", lambda r: SummarizeRequest(r.choice(TEXTS), "short")),
    ("translate", lambda r: TranslateRequest(r.choice(TEXTS), "fr", "en")),
    ("classify", lambda r: ClassifyRequest(r.choice(TEXTS), ("school", "sports", "music"))),
]
LAYOUTS = ("one", "by-class")


async def text_waits(
    executor: Executor, args: argparse.Namespace, seed: int
) -> tuple[list[float], int]:
    """Seeded Poisson text commands for ``args.duration`` seconds: their waits, and how many
    failed or were refused."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start, moment = loop.time(), 0.0
    handles: list[JobHandle] = []
    failed = 0
    while (moment := moment + rng.expovariate(args.text_rate)) < args.duration:
        await asyncio.sleep(max(0.0, start + moment - loop.time()))
        task, make = rng.choice(TEXT_MIX)
        try:
            handles.append(executor.submit(task, make(rng), user_id=f"m{len(handles)}"))
        except Exception:
            failed += 1
    waits = []
    for handle in handles:
        try:
            await handle
            waits.append(handle.wait_s or 0.0)
        except Exception:
            failed += 1
    return waits, failed


async def keep_drawing(executor: Executor, outstanding: int, stop: asyncio.Event) -> int:
    """Keep ``outstanding`` /imagine requests queued or running until ``stop``; how many ran."""
    done = 0

    async def member(index: int) -> None:
        nonlocal done
        while not stop.is_set():
            request = ImagineRequest("a lighthouse at dusk", seed=done)
            await executor.submit("imagine", request, user_id=f"artist{index}")
            done += 1

    artists = [asyncio.ensure_future(member(i)) for i in range(outstanding)]
    await stop.wait()
    await asyncio.gather(*artists, return_exceptions=True)
    return done


def gpu_memory_mib() -> dict[str, int]:
    """Each process's GPU memory by pid, as nvidia-smi sees it (empty without one)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    lines = subprocess.run(query, capture_output=True, text=True, check=False).stdout
    return {pid.strip(): int(mib) for pid, mib in (line.split(",") for line in lines.splitlines())}


def phase(waits: list[float], failed: int, images: int | None = None) -> dict[str, Any]:
    row = {"n": len(waits), "failed": failed, "p50_s": percentile(waits, 0.5),
           "p95_s": percentile(waits, 0.95)}  # fmt: skip
    if images is not None:
        row["images_made"] = images
    return row


async def layout(directory: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = build_models(directory, args.device, args.full_size)
    settings.workers_per_device = name  # type: ignore[assignment]
    settings.imagine.default_steps = args.image_steps
    settings.max_queue, settings.max_per_user = 256, 2
    if args.device == "cpu":
        settings.torch_threads = 1  # one core per worker, as by-class shares two cores
    executor = await start_executor(settings, tasks=["imagine", *(t for t, _ in TEXT_MIX)])
    try:
        rng = random.Random(args.seed)
        for task, make in TEXT_MIX:  # load every model and pay first-call costs first
            await executor.submit(task, make(rng), user_id="warm-up")
        await executor.submit("imagine", ImagineRequest("warm-up"), user_id="warm-up")
        pids = {str(b._worker.process.pid): b.spec.name or "every task"  # type: ignore[attr-defined]
                for b in executor.backends if getattr(b, "_worker", None)}  # fmt: skip
        memory = {pids.get(pid, pid): mib for pid, mib in gpu_memory_mib().items()}
        alone = phase(*await text_waits(executor, args, args.seed))
        stop = asyncio.Event()
        drawing = asyncio.ensure_future(keep_drawing(executor, args.images, stop))
        await asyncio.sleep(1.0)  # the image queue fills first
        waits, failed = await text_waits(executor, args, args.seed)
        stop.set()
        busy = phase(waits, failed, await drawing)
    finally:
        await executor.shutdown()
    return {"workers": len(executor.backends), "alone": alone, "with_images": busy,
            "p95_ratio": busy["p95_s"] / max(alone["p95_s"], 1e-3),
            "gpu_mib_per_worker": memory}  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"device": args.device, "full_size": args.full_size,
                              "text_rate": args.text_rate, "images_outstanding": args.images,
                              "image_steps": args.image_steps, "layouts": {}}  # fmt: skip
    for name in LAYOUTS:
        with tempfile.TemporaryDirectory() as directory:
            result["layouts"][name] = await layout(Path(directory), name, args)
        print(table(result), file=sys.stderr)
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| workers per device | text p95 wait alone | with images | ratio |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for name, row in result["layouts"].items():
        alone, busy = row["alone"]["p95_s"] * 1000, row["with_images"]["p95_s"] * 1000
        lines.append(f"| {name} ({row['workers']}) | {alone:.0f} ms | {busy:.0f} ms | "
                     f"{row['p95_ratio']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--text-rate", type=float, default=4.0)
    parser.add_argument("--images", type=int, default=4, help="image requests kept outstanding")
    parser.add_argument("--image-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
