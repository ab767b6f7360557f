"""The usage log, quotas, guild settings and the admission wrapper that ties them together."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiosqlite
import pytest

from bot.cli import main
from bot.executor import Busy
from bot.guilds import GuildSettings, GuildSettingsStore
from bot.invocations import Caller, CommandDisabled, Invoker
from bot.quotas import (
    DAY,
    CooldownActive,
    GpuBudgetExceeded,
    QuotaExceeded,
    QuotaPolicy,
    Quotas,
)
from bot.usage import UsageLog, UsageUnavailable, migrate, migrations
from handlers.base import InvalidInput
from tests.fakes import FakeTask, Item, make_executor

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path, sql: str = "SELECT * FROM invocations ORDER BY id") -> list[sqlite3.Row]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql).fetchall()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    async with UsageLog(path, flush_interval_s=0.01) as usage:

        async def writer(n: int) -> None:
            for k in range(20):
                row_id = f"{n}-{k}"
                usage.begin({"id": row_id, "source": "cli", "user_id": str(n), "task": "chat"})
                await asyncio.sleep(0)
                usage.end(row_id, "ok", wait_ms=1.0, run_ms=2.0, batch_size=4)

        await asyncio.gather(*(writer(n) for n in range(50)))
    found = rows(path)
    assert len(found) == 1000
    assert {r["status"] for r in found} == {"ok"}
    assert all(r["run_ms"] == 2.0 and r["started_at"] <= r["ended_at"] for r in found)


def test_sigkill_keeps_flushed_rows_and_next_start_marks_open_jobs(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "usage_crash_child.py"), str(path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "flushed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(rows(path)) == 20

    async def reopen() -> None:
        async with UsageLog(path):
            pass

    asyncio.run(reopen())
    statuses = [r["status"] for r in rows(path)]
    assert statuses.count("ok") == 10 and statuses.count("interrupted") == 10


async def test_migrations_from_empty_and_from_the_previous_version(tmp_path: Path) -> None:
    latest = migrations()[-1][0]
    assert latest >= 2
    async with aiosqlite.connect(tmp_path / "fresh.sqlite3") as db:
        assert await migrate(db) == latest
    old = tmp_path / "old.sqlite3"
    async with aiosqlite.connect(old) as db:
        assert await migrate(db, target=latest - 1) == latest - 1
        await db.execute(
            "INSERT INTO invocations (id, started_at, source, user_id, task, status) "
            "VALUES ('kept', ?, 'cli', 'u', 'chat', 'ok')",
            (time.time(),),
        )
        await db.commit()
    async with UsageLog(old):
        pass
    assert [r["id"] for r in rows(old)] == ["kept"]
    assert rows(old, "PRAGMA user_version")[0][0] == latest
    assert rows(old, "SELECT count(*) FROM guild_settings")[0][0] == 0


async def test_an_unwritable_path_fails_clearly_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(UsageUnavailable, match=r"cannot open the usage database at .*BOT_DATA_DIR"):
        await UsageLog(blocker / "usage.sqlite3").open()


async def test_records_survive_a_locked_database(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    async with UsageLog(path, flush_interval_s=3600, busy_timeout_ms=20) as usage:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        for n in range(30):
            usage.begin({"id": f"r{n}", "source": "cli", "user_id": "u", "task": "chat"})
        assert not await usage.flush()
        for n in range(30):
            usage.end(f"r{n}", "ok")
        assert not await usage.flush()
        assert usage.pending == 30
        locker.execute("ROLLBACK")
        locker.close()
        assert await usage.flush()
        assert usage.pending == 0
    assert [r["status"] for r in rows(path)] == ["ok"] * 30


async def test_an_end_after_its_begin_was_written_updates_the_row(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    async with UsageLog(path, flush_interval_s=3600) as usage:
        usage.begin({"id": "a", "source": "cli", "user_id": "u", "task": "chat"})
        assert await usage.flush()
        usage.end("a", "error", error_kind="JobFailed")
    (row,) = rows(path)
    assert (row["status"], row["error_kind"], row["source"]) == ("error", "JobFailed", "cli")


async def test_retention_deletes_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    clock = Clock(100 * DAY)
    async with UsageLog(path, clock=clock, retention_days=None) as usage:
        clock.now = 1 * DAY
        usage.record({"id": "old", "source": "cli", "user_id": "u", "task": "x", "status": "ok"})
        clock.now = 99 * DAY
        usage.record({"id": "new", "source": "cli", "user_id": "u", "task": "x", "status": "ok"})
    clock.now = 100 * DAY
    async with UsageLog(path, clock=clock, retention_days=30):
        pass
    assert [r["id"] for r in rows(path)] == ["new"]


async def test_quota_refuses_until_the_utc_day_ends(tmp_path: Path) -> None:
    clock = Clock(10 * DAY + 3600)
    async with UsageLog(tmp_path / "u.sqlite3", clock=clock) as usage:
        quotas = Quotas(QuotaPolicy({"imagine": 2}), usage, clock)
        await quotas.load()
        for _ in range(2):
            quotas.reserve("u1", "imagine")
        with pytest.raises(QuotaExceeded, match="resets in 23h00m") as err:
            quotas.reserve("u1", "imagine")
        assert err.value.resets_in == DAY - 3600
        quotas.reserve("u2", "imagine")  # another member
        quotas.reserve("u1", "chat")  # another task
        assert quotas.summary("u1") == [("imagine", 2, 2, DAY - 3600)]
        clock.now = 11 * DAY + 1
        quotas.reserve("u1", "imagine")
        assert quotas.summary("u1") == [("imagine", 1, 2, DAY - 1)]


async def test_quota_counts_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock(5 * DAY + 60)
    path = tmp_path / "u.sqlite3"
    async with UsageLog(path, clock=clock) as usage:
        for status in ("ok", "refused_busy"):  # refusals don't count
            usage.record({"id": status, "source": "discord", "user_id": "u", "task": "imagine",
                          "status": status})  # fmt: skip
        clock.now -= 120  # yesterday's use doesn't count either
        usage.record(
            {"id": "old", "source": "discord", "user_id": "u", "task": "imagine", "status": "ok"}
        )
    clock.now = 5 * DAY + 90
    async with UsageLog(path, clock=clock) as usage:
        quotas = Quotas(QuotaPolicy({"imagine": 2}, {"imagine": 60.0}), usage, clock)
        await quotas.load()
        with pytest.raises(RuntimeError, match="once"):
            await quotas.load()
        assert quotas.summary("u") == [("imagine", 1, 2, DAY - 90)]
        with pytest.raises(CooldownActive, match="in 30s"):  # the cooldown survives too
            quotas.reserve("u", "imagine")
        clock.now += 30
        quotas.reserve("u", "imagine")
        clock.now += 60
        with pytest.raises(QuotaExceeded):
            quotas.reserve("u", "imagine")


async def test_cooldowns_exemptions_and_guild_overrides(tmp_path: Path) -> None:
    clock = Clock(DAY)
    async with UsageLog(tmp_path / "u.sqlite3", clock=clock) as usage:
        policy = QuotaPolicy({"imagine": 1}, {"imagine": 10.0}, frozenset({"owner"}))
        quotas = Quotas(policy, usage, clock)
        quotas.reserve("u", "imagine")
        with pytest.raises(CooldownActive, match="try again in 10s"):
            quotas.reserve("u", "imagine")
        clock.now += 10
        with pytest.raises(QuotaExceeded):
            quotas.reserve("u", "imagine")
        for _ in range(3):
            quotas.reserve("owner", "imagine")
        generous = GuildSettings(quotas={"imagine": 5}, cooldowns={"imagine": 0})
        quotas.reserve("u", "imagine", generous)
        vip = GuildSettings(exempt_roles=[42])
        quotas.reserve("v", "imagine")
        quotas.reserve("v", "imagine", vip, roles=[42])
        with pytest.raises(CooldownActive):
            quotas.reserve("v", "imagine", vip, roles=[7])


async def test_a_released_reservation_gives_back_exactly_what_it_took(tmp_path: Path) -> None:
    clock = Clock(3 * DAY - 5)
    async with UsageLog(tmp_path / "u.sqlite3", clock=clock) as usage:
        quotas = Quotas(QuotaPolicy({"imagine": 1}, {"imagine": 60.0}), usage, clock)
        taken = quotas.reserve("u", "imagine")
        taken.release()
        taken.release()  # twice changes nothing
        assert quotas.summary("u")[0][1] == 0
        again = quotas.reserve("u", "imagine")  # neither quota nor cooldown holds it back
        clock.now += 10  # the day turns before this admission is refused after all
        again.release()
        assert quotas.summary("u")[0][1] == 0
        clock.now += 60
        quotas.reserve("u", "imagine")
        clock.now += 60
        with pytest.raises(QuotaExceeded):
            quotas.reserve("u", "imagine")
        assert quotas.summary("u")[0][1] == 1  # never negative, never more than taken


async def test_guild_settings_are_loaded_once_and_written_through_one_function(
    tmp_path: Path,
) -> None:
    path = tmp_path / "u.sqlite3"
    async with UsageLog(path) as usage:
        store = GuildSettingsStore(usage)
        await store.load()
        assert store.get(1) == GuildSettings()
        updated = await store.update(1, enabled_commands=["chat"], ephemeral=True)
        assert updated.ephemeral and store.get(1) is updated
        with pytest.raises(ValueError, match="nsfw"):
            await store.update(1, nsfw="sometimes")
    async with UsageLog(path) as usage:
        reloaded = GuildSettingsStore(usage)
        await reloaded.load()
    assert reloaded.get(1).enabled_commands == ["chat"] and reloaded.get(1).ephemeral


async def invoker(tmp_path: Path, log_prompts: bool = False, **limits: object) -> Invoker:
    usage = UsageLog(tmp_path / "u.sqlite3", flush_interval_s=3600)
    await usage.open()
    executor = make_executor(FakeTask(encode=True), **limits)
    await executor.start()
    quotas = Quotas(QuotaPolicy({"fake": 3}), usage)
    return Invoker(executor, usage, quotas, GuildSettingsStore(usage), log_prompts)


async def close(inv: Invoker) -> None:
    await inv.executor.shutdown()
    await inv.usage.close()


async def test_every_invocation_leaves_one_row_with_its_outcome(tmp_path: Path) -> None:
    inv = await invoker(tmp_path, max_per_user=1)
    caller = Caller("u1", guild_id=7, channel_id=70)
    handle = inv.submit("fake", Item("secret words"), caller)
    assert await handle == "<SECRET WORDS>"
    with pytest.raises(InvalidInput):
        inv.submit("fake", Item(""), caller)
    failing = inv.submit("fake", Item("bad-input"), caller)
    with pytest.raises(Exception, match="bad-input"):
        await failing
    await inv.guilds.update(7, enabled_commands=["chat"])
    with pytest.raises(CommandDisabled):
        inv.submit("fake", Item("x"), caller)
    await inv.guilds.update(7, enabled_commands=None, allowed_channels=[71])
    with pytest.raises(CommandDisabled, match="channel"):
        inv.submit("fake", Item("x"), caller)
    await inv.guilds.update(7, allowed_channels=None)
    # The quota is 3: the ok and the failed job count, the refused and invalid ones don't.
    assert await inv.submit("fake", Item("y"), caller) == "<Y>"
    with pytest.raises(QuotaExceeded):
        inv.submit("fake", Item("z"), caller)
    await close(inv)
    found = rows(tmp_path / "u.sqlite3", "SELECT * FROM invocations ORDER BY started_at")
    statuses = [r["status"] for r in found]
    assert statuses.count("ok") == 2 and statuses.count("invalid") == 3
    assert statuses.count("error") == 1 and statuses.count("refused_quota") == 1
    done = next(r for r in found if r["output_size"])
    assert (done["guild_id"], done["channel_id"], done["user_id"]) == (7, 70, "u1")
    assert done["wait_ms"] is not None and done["run_ms"] is not None and done["batch_size"] == 1
    assert done["input_size"] == len("secret words") and done["output_size"] == 14
    assert all(r["prompt"] is None for r in found)  # prompts are off by default
    assert "secret" not in "".join(str(tuple(r)) for r in found)


async def test_prompts_are_logged_only_when_the_admin_opts_in(tmp_path: Path) -> None:
    inv = await invoker(tmp_path, log_prompts=True)
    await inv.submit("fake", Item("hello there"), Caller("u"))
    await close(inv)
    (row,) = rows(tmp_path / "u.sqlite3")
    assert "hello there" in row["prompt"] and "hello there" not in row["options"]


async def test_busy_refusals_are_logged(tmp_path: Path) -> None:
    inv = await invoker(tmp_path, max_queue=1)
    task = inv.executor.tasks["fake"]
    task.hold_values.add("hold")
    task.gate.clear()
    held = inv.submit("fake", Item("hold"), Caller("a", enforce_quotas=False))
    with pytest.raises(Busy):
        inv.submit("fake", Item("more"), Caller("b"))
    task.gate.set()
    await held
    await close(inv)
    assert sorted(r["status"] for r in rows(tmp_path / "u.sqlite3")) == ["ok", "refused_busy"]


async def test_usage_stats_and_export_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_DATA_DIR", str(tmp_path))
    inv = await invoker(tmp_path)
    for text in ("a", "b"):
        await inv.submit("fake", Item(text), Caller("u1", enforce_quotas=False))
    await close(inv)
    (tmp_path / "u.sqlite3").rename(tmp_path / "usage.sqlite3")
    assert await asyncio.to_thread(main, ["usage", "stats"]) == 0
    out = capsys.readouterr().out
    assert "invocations per day" in out and "fake" in out and "u1" in out
    assert await asyncio.to_thread(main, ["usage", "export", "--since", "2000-01-01"]) == 0
    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(exported) == 2 and {r["status"] for r in exported} == {"ok"}
    for row in exported:  # ISO 8601 in UTC, as spreadsheets read it
        started = datetime.datetime.fromisoformat(row["started_at"])
        assert started.tzinfo == datetime.UTC and row["started_at"].endswith("+00:00")
        assert abs(started.timestamp() - time.time()) < 3600


def test_usage_chart_draws_days_and_an_empty_period() -> None:
    from PIL import Image

    from bot.charts import usage_chart
    from bot.usage import UsageStats

    busy = UsageStats({("2026-11-27", "chat"): 3, ("2026-11-28", "imagine"): 5}, {}, {}, {}, [])
    for stats in (busy, UsageStats({}, {}, {}, {}, [])):
        with Image.open(io.BytesIO(usage_chart(stats))) as image:
            assert image.size == (800, 400)


async def test_reads_and_rare_writes_during_a_flush_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    async with UsageLog(path, flush_interval_s=3600) as usage:
        for n in range(3000):
            usage.begin({"id": f"b{n}", "source": "cli", "user_id": "u", "task": "chat"})
        flushing = asyncio.create_task(usage.flush())
        await asyncio.sleep(0)  # the flush is now inside its transaction
        for n in range(10):
            usage.begin({"id": f"late{n}", "source": "cli", "user_id": "u", "task": "chat"})
        store = GuildSettingsStore(usage)
        await asyncio.gather(store.update(9, ephemeral=True), usage.used_since(0))
        assert await flushing
    assert len(rows(path)) == 3010
    assert len(rows(path, "SELECT * FROM guild_settings")) == 1


async def test_each_job_ends_with_one_log_line_and_no_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="bot.invocations")
    inv = await invoker(tmp_path)
    handle = inv.submit("fake", Item("private words"), Caller("u7"))
    await handle
    await close(inv)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bot.invocations"]
    assert f"job {handle.id} fake user=u7 status=ok" in line and "batch=1" in line
    assert "private" not in line


async def test_a_daily_gpu_time_budget_counts_each_jobs_share_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    clock = Clock(7 * DAY + 60)
    path = tmp_path / "u.sqlite3"
    async with UsageLog(path, clock=clock) as usage:
        quotas = Quotas(
            QuotaPolicy(gpu_seconds_per_day=10.0, exempt_users=frozenset({"o"})), usage, clock
        )
        await quotas.load()
        quotas.reserve("u", "imagine")
        quotas.charge_gpu("u", 6.0)
        quotas.reserve("u", "chat")  # 6 of 10 used: still in
        quotas.charge_gpu("u", 4.5)
        with pytest.raises(GpuBudgetExceeded, match="used your 10 seconds of GPU time"):
            quotas.reserve("u", "sentiment")
        quotas.charge_gpu("o", 100.0)
        quotas.reserve("o", "imagine")  # exempt
        usage.record({"id": "j", "source": "discord", "user_id": "u", "task": "imagine",
                      "status": "ok", "gpu_ms": 10_500.0})  # fmt: skip
    async with UsageLog(path, clock=clock) as usage:
        quotas = Quotas(QuotaPolicy(gpu_seconds_per_day=10.0), usage, clock)
        await quotas.load()  # today's GPU time comes back from the log
        with pytest.raises(GpuBudgetExceeded):
            quotas.reserve("u", "chat")
        clock.now += DAY
        quotas.reserve("u", "chat")


async def test_each_finished_job_records_and_charges_its_share_of_the_device(
    tmp_path: Path,
) -> None:
    inv = await invoker(tmp_path)
    inv.quotas.policy = QuotaPolicy(gpu_seconds_per_day=3600.0)
    handles = [inv.submit("fake", Item(v), Caller(f"u{v}")) for v in "ab"]
    await asyncio.gather(*handles)
    await close(inv)
    shares = {r["user_id"]: r["gpu_ms"] for r in rows(tmp_path / "u.sqlite3")}
    assert set(shares) == {"ua", "ub"} and all(ms is not None and ms >= 0 for ms in shares.values())
    assert inv.quotas.gpu_used("ua") == pytest.approx(shares["ua"] / 1000)


def test_stats_and_queue_compute_percentiles_alike() -> None:
    """#34: /stats rounded up to a rank and /queue to the nearest index; for four waits they
    gave 2 s and 3 s as the median of the same numbers."""
    from bot.executor.metrics import Percentiles
    from bot.usage import quantiles

    seconds = [1.0, 2.0, 3.0, 4.0]
    shown = Percentiles.of(seconds)
    assert quantiles(seconds) == (2.0, 4.0)
    assert (shown.p50_ms, shown.p95_ms, shown.p99_ms) == (2000.0, 4000.0, 4000.0)
    many = [float(n) for n in range(1, 101)]
    assert quantiles(many) == (50.0, 95.0) and Percentiles.of(many).p99_ms == 99_000.0
