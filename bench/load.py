"""Load test: members send a burst of slash commands to the real bot, through SimCord.

Every task runs a tiny real model built offline (``tests/tinymodels.py``) behind the
product's own wiring (``bot.app.running`` and ``AssistantBot``), so admission, quotas,
batching, rendering and the usage log all take the load. SimCord delivers one interaction
at a time, as fast as the bot acknowledges them (10-20 a second here). Tiny models would
drain that at once, so each batch also takes ``--batch-delay-ms`` longer, as a batch on a
busy GPU does whatever its size: work then arrives faster than it drains, queues fill,
batches grow and members get busy replies, as in a real burst.

    python bench/load.py --users 50 --commands 1000 [--batch-delay-ms 150] [--json out.json]
        [--worker process|thread] [--no-voice]

Meanwhile the bot is in a voice call reading the channel aloud (unless ``--no-voice``):
every tenth step a member writes a message there, which is synthesized like a /speak and
played, 20 ms frame by 20 ms frame on a player thread as discord.py's own does (without
the network).

Exit status 1 when an interaction went unanswered, was left without exactly one usage
row, or the event loop lagged more than 10 ms at the 99th percentile or 50 ms at most.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import discord
import simcord

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.models import TEXTS, build_models  # noqa: E402
from bot import app as bot_app  # noqa: E402
from bot.app import Worker, running  # noqa: E402
from bot.client import AssistantBot, friendly  # noqa: E402
from bot.executor.metrics import percentile  # noqa: E402
from bot.settings import Settings  # noqa: E402
from handlers.base import BatchContext, LoadSpec, Task  # noqa: E402

LAG_P99_LIMIT_MS = 10.0
LAG_MAX_LIMIT_MS = 50.0
SAMPLE_S = 0.005
DEFERRED, PRIVATE_MESSAGE = "deferred", "private message"
ADMITTED = {"ok", "error", "timeout", "cancelled"}


COMMANDS: list[tuple[str, Callable[[random.Random], dict[str, Any]]]] = [
    ("sentiment", lambda r: {"text": r.choice(TEXTS)}),
    ("classify", lambda r: {"text": r.choice(TEXTS), "labels": "school, sports, music"}),
    ("summarize", lambda r: {"text": r.choice(TEXTS), "length": "short"}),
    ("translate", lambda r: {"text": r.choice(TEXTS), "to": "fr", "from": "en"}),
    ("chat", lambda r: {"message": r.choice(TEXTS)}),
    ("speak", lambda r: {"text": r.choice(TEXTS)[:60]}),
    ("imagine", lambda r: {"prompt": "a lighthouse at dusk", "seed": r.randrange(1000)}),
]


@dataclass
class LoadReport:
    users: int
    commands: int
    wall_s: float
    statuses: dict[str, int]
    """Usage-log status of every interaction (ok, busy, quota, invalid, ...)."""
    by_task: dict[str, dict[str, int]]
    unanswered: int
    """Interactions with no acknowledgement, or whose reply never reached a final state."""
    deferred: int
    """Interactions whose first response was a deferral, sent before any model work."""
    refused_at_once: int
    """Interactions refused with a private reply instead (busy, quota, invalid input)."""
    admitted: int
    """Usage rows of jobs that reached the executor: each must have been deferred."""
    usage_rows: int
    """Rows of the interactions (source discord)."""
    read_aloud: int
    """Messages read aloud during the burst (usage rows of source voice)."""
    frames_played: int
    """20 ms voice frames the player took while the burst ran."""
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    gc_pause_max_ms: float
    """The longest garbage collection on the event loop's thread while the burst ran."""
    gc_freed_at_max: int
    """Objects that collection freed."""
    batch_sizes: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.unanswered == 0
            and self.deferred == self.admitted
            and self.deferred + self.refused_at_once == self.commands
            and self.usage_rows == self.commands
            and self.loop_lag_p99_ms <= LAG_P99_LIMIT_MS
            and self.loop_lag_max_ms <= LAG_MAX_LIMIT_MS
        )

    def summary(self) -> str:
        lines = [
            f"{self.commands} commands from {self.users} members in {self.wall_s:.1f} s",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
        ]
        for task, counts in sorted(self.by_task.items()):
            lines.append(
                f"  {task:10s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
        lines += [
            f"unanswered: {self.unanswered}   deferred: {self.deferred} (admitted jobs: "
            f"{self.admitted})   refused at once: {self.refused_at_once}   "
            f"usage rows: {self.usage_rows}/{self.commands}",
            f"read aloud: {self.read_aloud} messages, {self.frames_played} frames played",
            f"event loop lag ms: p50 {self.loop_lag_p50_ms:.2f}  p99 {self.loop_lag_p99_ms:.2f}"
            f"  max {self.loop_lag_max_ms:.2f} (limits: p99 {LAG_P99_LIMIT_MS:.0f}, "
            f"max {LAG_MAX_LIMIT_MS:.0f})",
            f"longest garbage collection on the loop: {self.gc_pause_max_ms:.1f} ms "
            f"({self.gc_freed_at_max} objects freed)",
            "batch sizes: "
            + "; ".join(
                f"{t} " + " ".join(f"{s}x{n}" for s, n in sorted(sizes.items()))
                for t, sizes in sorted(self.batch_sizes.items())
            ),
            "PASS" if self.passed else "FAIL",
        ]
        return "\n".join(lines)


class FramePlayer(discord.VoiceProtocol):
    """A voice connection without the network: a thread takes a frame every 20 ms, as
    discord.py's AudioPlayer does before encoding and sending it."""

    frames = 0

    def __init__(self, client: discord.Client, channel: Any) -> None:
        super().__init__(client, channel)
        self._stop = threading.Event()

    async def connect(self, *, timeout: float, reconnect: bool, **flags: bool) -> None:
        pass

    async def disconnect(self, *, force: bool) -> None:
        self._stop.set()
        self.cleanup()

    def play(self, source: discord.AudioSource, *, after: Callable[[Any], None]) -> None:
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set() and source.read():
                FramePlayer.frames += 1
                self._stop.wait(0.02)
            after(None)

        threading.Thread(target=run, name="voice-player", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class LagProbe:
    """Samples how late the event loop wakes a sleeper; lag is the cost to every member. It
    also times the garbage collections on the loop's thread, which stop the loop too: under
    SimCord most of what they free is SimCord's own bookkeeping of every callback."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.gc_pause_max_ms = 0.0
        self.gc_freed_at_max = 0
        self._task: asyncio.Task[None] | None = None
        self._gc_started = 0.0
        self._loop_thread = threading.get_ident()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - self._gc_started) * 1000
        if pause_ms > self.gc_pause_max_ms:
            self.gc_pause_max_ms, self.gc_freed_at_max = pause_ms, info["collected"]

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(SAMPLE_S)
            self.lags_ms.append((time.perf_counter() - started - SAMPLE_S) * 1000)

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def percentile(self, q: float) -> float:
        return percentile(self.lags_ms or [0.0], q)


class Slowed(Task[Any, Any]):
    """A task whose every batch takes ``delay_s`` longer, as one on a busy GPU does. It
    travels to a model worker process with the task it wraps."""

    def __init__(self, inner: Task[Any, Any], delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.name = inner.name  # type: ignore[misc]
        self.kind = inner.kind  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:  # voice_names, size_choices, languages...
        if name == "inner":  # not set yet (while unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare(self) -> None:
        self.inner.prepare()

    def validate(self, request: Any) -> None:
        self.inner.validate(request)

    def model_for(self, request: Any, default: str) -> str:
        return self.inner.model_for(request, default)

    def batch_key(self, request: Any) -> Hashable:
        return self.inner.batch_key(request)

    def cost(self, request: Any) -> int:
        return self.inner.cost(request)

    def work(self, request: Any) -> float:
        return self.inner.work(request)

    def load(self, spec: LoadSpec) -> Any:
        return self.inner.load(spec)

    def model_bytes(self, model: Any) -> int:
        return self.inner.model_bytes(model)

    def run_batch(self, model: Any, requests: Sequence[Any], ctx: BatchContext) -> list[Any]:
        time.sleep(self.delay_s)  # on the device's thread, like a GPU kernel
        return self.inner.run_batch(model, requests, ctx)

    def finish(self, output: Any) -> Any:
        return self.inner.finish(output)


def slowed_tasks(delay_s: float) -> Callable[[Settings], dict[str, Task[Any, Any]]]:
    build = bot_app.build_tasks

    def build_slowed(settings: Settings) -> dict[str, Task[Any, Any]]:
        return {name: Slowed(task, delay_s) for name, task in build(settings).items()}

    return build_slowed


async def run_load(
    settings: Settings,
    users: int,
    commands: int,
    batch_delay_s: float = 0.15,
    seed: int = 0,
    worker: Worker = "process",
    voice: bool = True,
) -> LoadReport:
    """Drive ``commands`` interactions from ``users`` members and check how each one ended;
    with ``voice``, the bot reads the channel aloud in a call meanwhile."""
    rng = random.Random(seed)
    probe = LagProbe()
    with mock.patch.object(bot_app, "build_tasks", slowed_tasks(batch_delay_s)):
        return await _drive(settings, users, commands, rng, probe, worker, voice)


async def _drive(
    settings: Settings,
    users: int,
    commands: int,
    rng: random.Random,
    probe: LagProbe,
    worker: Worker,
    voice: bool,
) -> LoadReport:
    async with running(settings, worker=worker) as services:
        for backend in services.executor.backends:  # each worker ready before the clock runs
            await backend.start()
        bot = AssistantBot(services, settings)
        bot.voice_protocol = FramePlayer
        FramePlayer.frames = 0
        async with simcord.run(bot, check_errors=False) as env:
            guild = env.create_guild()
            channel = guild.create_text_channel("study")
            await bot.guild_settings.update(guild.id, nsfw="allow")
            members = [guild.add_member(env.create_user(f"member{i}")) for i in range(users)]
            if voice:
                call = guild.create_voice_channel("study call")
                for member in members[:2]:
                    await member.join_voice(call)
                await members[0].slash(channel, "voice join")
                await members[0].slash(channel, "voice read", channel=channel)
            plan = [(rng.choice(members), *rng.choice(COMMANDS)) for _ in range(commands)]
            gc.collect()  # the server and its members exist now, as after the bot's start-up
            gc.freeze()
            probe.start()
            started = time.perf_counter()
            results = []
            kinds: dict[int, str] = {}
            for step, (member, name, options) in enumerate(plan):
                results.append((name, await member.slash(channel, name, **options(rng))))
                if step % 10 == 0:  # the channel read aloud has its own traffic
                    await member.send(channel, rng.choice(TEXTS)[:60])
                drain_logs(env, kinds)
            for watcher in list(bot.watchers.values()):
                await asyncio.wait_for(asyncio.shield(watcher.finished), 300)
            await env.settle()
            drain_logs(env, kinds)
            wall_s = time.perf_counter() - started
            probe.stop()
            frames = FramePlayer.frames
            if voice:
                await members[0].slash(channel, "voice leave")
            bugs = [e for e in env.errors if friendly(unwrap(e)) is None]
            if bugs:
                raise RuntimeError(f"the bot raised {len(bugs)} unhandled errors: {bugs[:3]}")
            snapshot = services.executor.snapshot()
        await services.usage.flush()
    return report(settings, users, commands, results, kinds, probe, wall_s, snapshot, frames)


def drain_logs(env: simcord.Env, kinds: dict[int, str]) -> None:
    """Note how the bot first answered each interaction, from the REST calls it made, and
    empty SimCord's logs of every call and event: kept for the whole run they would be the
    bulk of the process's heap, which a bot on a real gateway never holds, and every full
    garbage collection would walk them with the loop stopped."""
    for call in env.http_requests:
        parts = call.path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "interactions" and parts[3] == "callback":
            body = call.json if isinstance(call.json, dict) else {}
            flags = (body.get("data") or {}).get("flags", 0)
            kind = {5: DEFERRED, 4: PRIVATE_MESSAGE if flags & 64 else "message"}
            kinds.setdefault(int(parts[1]), kind.get(body.get("type"), "other"))
    env.http_requests.clear()
    env.backend.transcript.clear()


def unwrap(error: BaseException) -> BaseException:
    return error.original if isinstance(error, discord.app_commands.CommandInvokeError) else error


def report(
    settings: Settings,
    users: int,
    commands: int,
    results: list[tuple[str, Any]],
    first_kinds: dict[int, str],
    probe: LagProbe,
    wall_s: float,
    snapshot: Any,
    frames: int,
) -> LoadReport:
    with sqlite3.connect(settings.usage_path()) as db:
        rows = db.execute(
            "SELECT task, status FROM invocations WHERE source = 'discord' "
            "AND task NOT LIKE 'voice%'"
        ).fetchall()
        (read_aloud,) = db.execute(
            "SELECT count(*) FROM invocations WHERE source = 'voice'"
        ).fetchone()
    by_task: dict[str, Counter[str]] = {}
    for task, status in rows:
        by_task.setdefault(task, Counter())[status] += 1
    unanswered = sum(1 for _, r in results if not is_final(r))
    first_responses = {r._interaction.id: first_kinds.get(r._interaction.id) for _, r in results}
    batch_sizes: dict[str, Counter[int]] = {}
    for stats in snapshot.models:
        batch_sizes.setdefault(stats.task, Counter()).update(stats.batch_sizes)
    return LoadReport(
        users=users,
        commands=commands,
        wall_s=wall_s,
        statuses=dict(Counter(status for _, status in rows)),
        by_task={t: dict(c) for t, c in by_task.items()},
        unanswered=unanswered,
        deferred=sum(1 for kind in first_responses.values() if kind == DEFERRED),
        refused_at_once=sum(1 for kind in first_responses.values() if kind == PRIVATE_MESSAGE),
        admitted=sum(1 for _, status in rows if status in ADMITTED),
        usage_rows=len(rows),
        read_aloud=read_aloud,
        frames_played=frames,
        loop_lag_p50_ms=probe.percentile(0.5),
        loop_lag_p99_ms=probe.percentile(0.99),
        loop_lag_max_ms=max(probe.lags_ms, default=0.0),
        gc_pause_max_ms=probe.gc_pause_max_ms,
        gc_freed_at_max=probe.gc_freed_at_max,
        batch_sizes={t: dict(c) for t, c in batch_sizes.items()},
    )


def is_final(result: Any) -> bool:
    """Acknowledged, and the reply no longer offers Cancel: it shows how the command ended."""
    return (
        result.acknowledged
        and result.response is not None
        and not has_cancel(result.response.components)
    )


def has_cancel(components: Any) -> bool:
    if isinstance(components, dict):
        return str(components.get("custom_id", "")).startswith("cancel:") or has_cancel(
            components.get("components", [])
        )
    return isinstance(components, list) and any(has_cancel(c) for c in components)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--batch-delay-ms", type=float, default=150, help="added to each batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the tiny models run")
    parser.add_argument(
        "--worker",
        choices=["process", "thread"],
        default="process",
        help="models in a worker process (the bot's default) or a thread",
    )
    parser.add_argument(
        "--no-voice", action="store_true", help="without the call read aloud (the baseline)"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        settings = build_models(Path(directory), args.device)
        result = asyncio.run(
            run_load(
                settings,
                args.users,
                args.commands,
                args.batch_delay_ms / 1000,
                args.seed,
                args.worker,
                not args.no_voice,
            )
        )
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps({**asdict(result), "passed": result.passed}, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
