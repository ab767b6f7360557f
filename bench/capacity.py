"""How many commands per second of a community's mix one device sustains before members wait.

    python bench/capacity.py --device cpu --json out.json
    python bench/capacity.py --device cuda --full-size --json out.json
    [--rates 2,4,8,16,32] [--duration 20] [--members 200] [--worker process|thread] [--seed 0]
    [--chat auto|on|off] [--workers auto|one|by-class]

The mix: 20% /imagine at the default size and steps (one image for 80% of them, four for
the rest), 10% /speak, 14% /chat, 5% /transcribe (voice messages of 3 to 15 s), 5%
/describe (screenshots and photos, answers of 32 to 160 tokens), and 46% the other text
tasks (/summarize, /translate, /sentiment, /classify, 11.5% each). Answers end where real
ones do (bench/lengths.py, in the benchmark only, recorded in the JSON): chat at its
log-uniform 16 to 256 new tokens (16 to 128 on the tiny model's 256 positions), summaries
at 40 to 120, translations at about the source's length; random weights alone would run
every answer to its cap. At each rate, commands arrive as a Poisson process (seeded) for
``--duration`` seconds from ``--members`` members, through the real executor and handlers
(tiny models built offline, or with ``--full-size`` the default models' architectures with
random weights, in a model worker process as the bot runs them); then the queue drains.
Reported per rate: p50/p95 wait (admission to the start of the job's batch) per task,
refusals (busy at admission, or past the queue deadline), failures, and the device's busy
fraction (the jobs' device seconds over the wall time). Then the highest rate
whose p95 wait is at most 5 s with nothing refused.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.describe import make_images  # noqa: E402
from bench.lengths import LENGTHS, honest  # noqa: E402
from bench.models import TEXTS, build_models  # noqa: E402
from bench.transcribe import opus, speech_like  # noqa: E402
from bot.app import build_tasks, start_executor  # noqa: E402
from bot.executor import Busy, Executor, JobHandle, QueueTimeout, metrics  # noqa: E402
from handlers.chat import ChatRequest  # noqa: E402
from handlers.classify import ClassifyRequest  # noqa: E402
from handlers.describe import DescribeRequest  # noqa: E402
from handlers.imagine import ImagineRequest  # noqa: E402
from handlers.sentiment import SentimentRequest  # noqa: E402
from handlers.speak import SpeakRequest  # noqa: E402
from handlers.summarize import SummarizeRequest  # noqa: E402
from handlers.transcribe import TranscribeRequest  # noqa: E402
from handlers.translate import TranslateRequest  # noqa: E402

WAIT_TARGET_S = 5.0
CHAT_TOKENS = {False: (16, 128), True: (16, 256)}
"""Answer lengths, log-uniform, by ``--full-size``: the tiny chat model has 256 positions."""
chat_tokens = CHAT_TOKENS[False]


def chat_request(r: random.Random, n: int) -> ChatRequest:
    tokens = round(math.exp(r.uniform(*map(math.log, chat_tokens))))
    return ChatRequest(r.choice(TEXTS), max_tokens=tokens, temperature=0.7, seed=n)


@functools.cache
def voice_messages() -> list[bytes]:
    """Eight voice messages of 3 to 15 s of speech-like sound, as Ogg/Opus."""
    rng = np.random.default_rng(0)
    return [opus(speech_like(float(rng.uniform(3, 15)), rng)) for _ in range(8)]


@functools.cache
def pictures() -> list[Any]:
    """Eight screenshots and photos of 320x240 to 1920x1080, with questions."""
    return make_images(8, seed=0)


def describe_request(r: random.Random, n: int) -> DescribeRequest:
    """An image described in 32 to 160 new tokens, log-uniform (random weights run to it)."""
    tokens = round(math.exp(r.uniform(math.log(32), math.log(160))))
    return r.choice(pictures()).request(tokens)


MIX: list[tuple[str, float, Callable[[random.Random, int], Any]]] = [
    (
        "imagine",
        0.20,
        lambda r, n: ImagineRequest(
            "a lighthouse at dusk", seed=n, count=4 if r.random() < 0.2 else 1
        ),
    ),
    ("speak", 0.10, lambda r, n: SpeakRequest(r.choice(TEXTS)[:60])),
    ("chat", 0.14, chat_request),
    ("transcribe", 0.05, lambda r, n: TranscribeRequest(r.choice(voice_messages()))),
    ("describe", 0.05, describe_request),
    ("summarize", 0.115, lambda r, n: SummarizeRequest(r.choice(TEXTS), "medium")),
    ("translate", 0.115, lambda r, n: TranslateRequest(r.choice(TEXTS), "fr", "en")),
    ("sentiment", 0.115, lambda r, n: SentimentRequest(r.choice(TEXTS))),
    (
        "classify",
        0.115,
        lambda r, n: ClassifyRequest(r.choice(TEXTS), ("school", "sports", "music")),
    ),
]


@dataclass
class RateResult:
    rate: float
    commands: int = 0
    refused: int = 0
    failed: int = 0
    wall_s: float = 0.0
    device_s: float = 0.0
    waits: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answers: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Seconds from arrival to the whole result, per task."""

    def p95(self) -> float:
        every = [w for waits in self.waits.values() for w in waits]
        return percentile(every, 0.95) if every else math.inf

    def sustained(self) -> bool:
        return self.refused == 0 and self.failed == 0 and self.p95() <= WAIT_TARGET_S

    def row(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "commands": self.commands,
            "refused": self.refused,
            "failed": self.failed,
            "busy_fraction": self.device_s / self.wall_s if self.wall_s else 0.0,
            "wait_p50_s": percentile([w for ws in self.waits.values() for w in ws], 0.5),
            "wait_p95_s": self.p95(),
            "per_task": {
                task: {
                    "n": len(ws),
                    "p50_s": percentile(ws, 0.5),
                    "p95_s": percentile(ws, 0.95),
                    "answer_p95_s": percentile(self.answers[task], 0.95),
                }
                for task, ws in sorted(self.waits.items())
            },
            "sustained": self.sustained(),
        }


def percentile(values: list[float], q: float) -> float:
    """The bot's own percentile (nearest rank), NaN for no values."""
    return metrics.percentile(values, q) if values else math.nan


def pick(rng: random.Random) -> tuple[str, Callable[[random.Random, int], Any]]:
    roll, total = rng.random(), 0.0
    for task, share, make in MIX:
        total += share
        if roll < total:
            return task, make
    return MIX[-1][0], MIX[-1][2]


async def at_rate(
    executor: Executor, rate: float, duration: float, members: int, rng: random.Random
) -> RateResult:
    """Poisson arrivals at ``rate`` for ``duration`` seconds, then until the queue drains."""
    result = RateResult(rate)
    handles: list[tuple[str, JobHandle]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    moment = 0.0
    while True:
        moment += rng.expovariate(rate)
        if moment > duration:
            break
        await asyncio.sleep(max(0.0, start + moment - loop.time()))
        task, make = pick(rng)
        result.commands += 1
        try:
            handle = executor.submit(
                task, make(rng, result.commands), user_id=f"m{rng.randrange(members)}"
            )
        except Busy:
            result.refused += 1
            continue
        handles.append((task, handle))
    for task, handle in handles:
        try:
            await handle
        except QueueTimeout:
            result.refused += 1
            continue
        except Exception as exc:
            logging.warning("a %s job failed: %s", task, exc)
            result.failed += 1
            continue
        result.waits[task].append(handle.wait_s or 0.0)
        result.answers[task].append((handle.wait_s or 0.0) + (handle.run_s or 0.0))
        result.device_s += handle.gpu_s or 0.0
    result.wall_s = loop.time() - start
    return result


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        settings = build_models(Path(directory), args.device, args.full_size)
        settings.max_queue = args.max_queue
        settings.max_per_user = 2
        settings.chat.continuous = args.chat
        settings.workers_per_device = args.workers
        global chat_tokens
        chat_tokens = CHAT_TOKENS[args.full_size]
        handlers = honest(build_tasks(settings))
        executor = await start_executor(settings, worker=args.worker, handlers=handlers)
        try:
            rng = random.Random(args.seed)
            for task, _, make in MIX:  # load every model and pay first-call costs first
                await executor.preload(task)
                await executor.submit(task, make(rng, 0), user_id="warm-up")
            results: list[RateResult] = []
            for rate in args.rates:
                results.append(await at_rate(executor, rate, args.duration, args.members, rng))
                print(summary(results[-1]), file=sys.stderr)
                if args.json:  # a run cut short still leaves the rates it finished
                    args.json.write_text(json.dumps(report(args, results), indent=2))
        finally:
            await executor.shutdown()
    return report(args, results)


def report(args: argparse.Namespace, results: list[RateResult]) -> dict[str, Any]:
    sustained = [r.rate for r in results if r.sustained()]
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "answer_lengths": LENGTHS
        | {"chat": f"log-uniform {chat_tokens[0]} to {chat_tokens[1]} new tokens"},
        "results": [r.row() for r in results],
        "highest_sustained_rate": max(sustained, default=None),
    }


def summary(result: RateResult) -> str:
    row = result.row()
    tasks = "  ".join(f"{task} {values['p95_s']:.1f}" for task, values in row["per_task"].items())
    return (
        f"{result.rate:5.1f}/s: {result.commands:4d} commands, {result.refused} refused, "
        f"{result.failed} failed, busy {row['busy_fraction']:.0%}, wait p50 "
        f"{row['wait_p50_s']:.2f} s p95 {row['wait_p95_s']:.2f} s  (p95 by task: {tasks})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="the default models' architectures with random weights (bench/fullsize.py)",
    )
    parser.add_argument(
        "--rates", default="2,4,8,16,32", help="commands per second, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--worker", choices=("process", "thread"), default="process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chat",
        choices=("auto", "on", "off"),
        default="auto",
        help="continuous batching for chat (BOT_CHAT__CONTINUOUS); auto uses it on CUDA",
    )
    parser.add_argument(
        "--workers",
        choices=("auto", "one", "by-class"),
        default="auto",
        help="worker processes per device (BOT_WORKERS_PER_DEVICE)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    args.rates = [float(rate) for rate in args.rates.split(",")]
    logging.basicConfig(level=logging.WARNING)
    began = time.perf_counter()
    figures = asyncio.run(measure(args))
    figures["wall_s"] = time.perf_counter() - began
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    best = figures["highest_sustained_rate"]
    print(
        f"highest rate with p95 wait <= {WAIT_TARGET_S:g} s and nothing refused: "
        f"{'none of those tried' if best is None else f'{best:g} commands/s'}"
    )
    print(json.dumps({k: v for k, v in figures.items() if k != "args"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
