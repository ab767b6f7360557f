"""Faults seen from Discord: the bot keeps serving, every member hears how their command ended,
and no usage record is lost. The executor-level mechanics (batch splitting, retries, worker
restart) are tested in test_executor.py; these tests drive the same faults through the bot.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import torch

from bot.usage import UsageLog
from handlers.base import LoadSpec
from tests import tinymodels
from tests.fakes import WorkerDeath
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    REAL_REQUEST,
    RESPONSES,
    Harness,
    edits,
    harness,
    scene,
    simcord_bot,
    stack,
)

ROOT = Path(__file__).resolve().parents[1]


def respond_failing_on(word: str, error: BaseException) -> Any:
    """A sentiment response that raises ``error`` for texts containing ``word``."""

    def respond(request: Any) -> Any:
        if word in request.text:
            raise error
        return RESPONSES["sentiment"](request)

    return respond


async def queue_behind_a_blocker(h: Harness, commands: list[tuple[Any, str]]) -> list[Any]:
    """Send sentiment commands while the worker is held, so they run as one batch."""
    s = await scene(h)
    task = h.tasks["sentiment"]
    task.hold = True
    blocker = h.bot.executor.submit("sentiment", REAL_REQUEST, user_id="blocker")
    await asyncio.to_thread(task.entered.wait, 10)
    results = [
        await member(s).slash(s.channel, "sentiment", text=text) for member, text in commands
    ]
    task.hold = False
    task.gate.set()
    await blocker
    await h.finish()
    return results


def alice(s: Any) -> Any:
    return s.alice


def bob(s: Any) -> Any:
    return s.bob


async def test_a_model_that_fails_to_load_leaves_other_tasks_serving_and_is_retried(
    harness: Harness,
) -> None:
    s = await scene(harness)
    loads: list[str] = []

    def load_failing_once(spec: LoadSpec) -> str:
        loads.append(spec.source)
        if len(loads) == 1:
            raise OSError("weights file truncated")
        return "scripted"

    harness.tasks["sentiment"].load = load_failing_once  # type: ignore[method-assign]
    failed = await s.alice.slash(s.channel, "sentiment", text="good")
    other = await s.bob.slash(s.channel, "chat", message="hello")
    await harness.finish()
    assert "could not load model 'sentiment-model'" in failed.response.content
    assert "weights file truncated" in failed.response.content
    assert other.response.content == "echo: hello"
    retried = await s.alice.slash(s.channel, "sentiment", text="good")
    await harness.finish()
    assert "**POSITIVE**" in retried.response.content
    assert loads == ["sentiment-model", "sentiment-model"]


async def test_an_item_that_breaks_its_batch_fails_alone(harness: Harness) -> None:
    harness.tasks["sentiment"].respond = respond_failing_on("poison", ValueError("bad token"))
    good, poisoned, also_good = await queue_behind_a_blocker(
        harness, [(alice, "fine"), (bob, "poison pill"), (alice, "also fine")]
    )
    runs = [[r.text for r in run] for run in harness.tasks["sentiment"].runs]
    assert ["fine", "poison pill", "also fine"] in runs  # tried together first
    assert "**POSITIVE**" in good.response.content
    assert "**POSITIVE**" in also_good.response.content
    assert poisoned.response.content == (
        "⚠️ the model failed on this request (ValueError: bad token)"
    )


async def test_out_of_memory_splits_the_batch_then_fails_only_the_culprit(
    harness: Harness,
) -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    harness.tasks["sentiment"].respond = respond_failing_on("enormous", oom)
    small, enormous = await queue_behind_a_blocker(
        harness, [(alice, "small"), (bob, "enormous essay")]
    )
    runs = [[r.text for r in run] for run in harness.tasks["sentiment"].runs]
    assert runs[1:] == [["small", "enormous essay"], ["small"], ["enormous essay"]]
    assert "**POSITIVE**" in small.response.content
    assert "ran out of memory" in enormous.response.content
    assert "try a smaller input" in enormous.response.content


async def test_a_dead_worker_thread_is_restarted_and_its_job_told_why(harness: Harness) -> None:
    harness.tasks["sentiment"].respond = respond_failing_on("die", WorkerDeath())
    s = await scene(harness)
    died = await s.alice.slash(s.channel, "sentiment", text="die now")
    await harness.finish()
    assert "the inference worker crashed (WorkerDeath); it was restarted" in (died.response.content)
    after = await s.bob.slash(s.channel, "sentiment", text="still there?")
    await harness.finish()
    assert "**POSITIVE**" in after.response.content


async def test_a_locked_database_delays_records_but_not_commands(harness: Harness) -> None:
    s = await scene(harness)
    usage = harness.bot.usage
    usage.busy_timeout_ms = 20
    await usage.flush()
    locker = sqlite3.connect(harness.db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        results = [
            await s.alice.slash(s.channel, "sentiment", text="during the lock"),
            await s.bob.slash(s.channel, "chat", message="still answering"),
        ]
        await harness.finish()
        assert not await usage.flush()
        assert usage.pending == 2
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert "**POSITIVE**" in results[0].response.content
    assert results[1].response.content == "echo: still answering"
    assert await usage.flush()
    assert [(r["task"], r["status"]) for r in harness.rows()] == [
        ("sentiment", "ok"),
        ("chat", "ok"),
    ]


async def test_a_read_only_database_keeps_records_until_it_is_writable(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the disk is remounted read-only: writes fail, reads (quotas) still work."""
    s = await scene(harness)
    usage = harness.bot.usage
    await usage.flush()
    writable_connect = UsageLog._connect

    async def read_only_connect(self: UsageLog) -> aiosqlite.Connection:
        db = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        return db

    monkeypatch.setattr(UsageLog, "_connect", read_only_connect)
    await usage._reconnect()
    result = await s.alice.slash(s.channel, "sentiment", text="on a read-only disk")
    image = await s.alice.slash(s.channel, "imagine", prompt="a fox")  # reads the quota table
    await harness.finish()
    assert not await usage.flush()
    assert usage.pending == 2
    assert "**POSITIVE**" in result.response.content
    # The image arrives; its buttons need a stored request, so it comes without them.
    assert [a.filename for a in image.response.attachments] == ["imagine-7.png"]
    assert image.response.components == []
    monkeypatch.setattr(UsageLog, "_connect", writable_connect)
    assert await usage.flush()  # reconnects, writable again
    assert [(r["task"], r["status"]) for r in harness.rows()] == [
        ("sentiment", "ok"),
        ("imagine", "ok"),
    ]


def patches(h: Harness) -> list[str]:
    return [
        e.json.get("content", "")
        for e in h.env.http_requests
        if e.method == "PATCH" and isinstance(e.json, dict)
    ]


async def result_edit_refused(h: Harness, status: int, code: int, times: int | None) -> Any:
    """Run /chat with its progress shown, then Discord refusing to edit in the result."""
    s = await scene(h)
    task = h.tasks["chat"]
    task.hold = True
    result = await s.alice.slash(s.channel, "chat", message="through the storm")
    await asyncio.to_thread(task.entered.wait, 10)
    await h.env.settle()
    h.env.inject_error(
        "PATCH", "/webhooks/*/messages/@original", status=status, code=code, times=times
    )
    task.gate.set()
    await h.finish()
    return s, result


async def test_a_progress_edit_discord_refuses_is_skipped(harness: Harness) -> None:
    s = await scene(harness)
    harness.env.inject_error("PATCH", "/webhooks/*/messages/@original", status=503, times=1)
    result = await s.alice.slash(s.channel, "chat", message="progress lost")
    await harness.finish()
    assert result.response.content == "echo: progress lost"


@pytest.mark.parametrize(
    ("status", "code", "times"),
    [
        (429, 0, 1),  # rate limited
        (500, 0, 1),
        (503, 0, None),  # Discord down for the reply, for good
        (400, 50035, 1),  # the edit refused outright
    ],
)
async def test_a_result_that_cannot_be_edited_in_is_posted_in_the_channel(
    harness: Harness, status: int, code: int, times: int | None
) -> None:
    """Real discord.py first retries 429 and 5xx in place; SimCord's webhook transport
    does not, so this is the last resort: the channel, with a mention."""
    s, result = await result_edit_refused(harness, status, code, times)
    assert result.response.content == "⚙️ /chat: working…"
    posted = s.channel.last_message
    assert posted is not None
    assert posted.content == f"<@{s.alice.id}> your /chat is ready:\necho: through the storm"


def test_sigterm_during_a_burst_finishes_or_cancels_every_job_and_flushes_the_log(
    tmp_path: Path,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BOT_")},
        "BOT_DATA_DIR": str(tmp_path / "data"),
        "BOT_DEVICE": "cpu",
        "BOT_MODELS__SENTIMENT": str(tinymodels.build_classifier(tmp_path / "sentiment")),
        "BOT_MODELS__CHAT": str(tinymodels.build_chat(tmp_path / "chat")),
        "BOT_CHAT__DEFAULT_NEW_TOKENS": "4",
        "BOT_EDIT_INTERVAL_S": "0.2",
        "HF_HUB_OFFLINE": "1",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.sigterm_child"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 120)  # a stalled child fails
        assert ready and child.stdout.readline().strip() == "burst sent"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "SIGTERM: finishing running jobs, then stopping" in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["unanswered"] == 0
    statuses = report["statuses"]
    print("statuses after SIGTERM:", statuses)
    assert sum(statuses.values()) == report["commands"] == 24  # every row flushed
    assert statuses.get("ok", 0) >= 1  # the running batch finished
    assert statuses.get("cancelled", 0) >= 1  # queued jobs ended with a reason
    assert "🛑 the bot is shutting down" in report["replies"]
