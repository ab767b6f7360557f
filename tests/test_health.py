"""The heartbeat the running bot keeps, and the health checks that read it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import simcord

from bot.client import AssistantBot
from bot.health import MAX_AGE_S, Heartbeat, problem
from tests.test_discord import simcord_bot, stack  # noqa: F401  (fixtures: the bot SimCord runs)

ROOT = Path(__file__).resolve().parent.parent


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), 10)


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_fresh_stale_and_missing_heartbeats(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    assert "no heartbeat" in (problem(beat) or "")
    beat.touch()
    assert problem(beat) is None
    age(beat, MAX_AGE_S + 5)
    assert "ago" in (problem(beat) or "")
    assert problem(beat, max_age_s=MAX_AGE_S + 60) is None


async def test_the_heartbeat_beats_only_while_alive_and_clears_its_file(tmp_path: Path) -> None:
    beat = tmp_path / "state" / "heartbeat"
    beat.parent.mkdir()
    beat.touch()  # a previous run's file must not count for this one
    alive = False
    async with Heartbeat(beat, lambda: alive, interval_s=0.01):
        assert not beat.exists()
        await asyncio.sleep(0.05)
        assert not beat.exists()  # not alive: no beat
        alive = True
        await until(beat.exists)
        assert problem(beat) is None
        alive = False
        age(beat, 120)
        await asyncio.sleep(0.05)
        assert problem(beat) is not None  # stops refreshing once no longer alive
    assert not beat.exists()


async def test_the_bot_counts_as_connected_only_with_an_open_gateway(
    simcord_env: simcord.Env, tmp_path: Path
) -> None:
    bot = simcord_env.bot
    assert isinstance(bot, AssistantBot)
    beat = tmp_path / "heartbeat"
    async with Heartbeat(beat, bot.is_connected, interval_s=0.01):
        await until(beat.exists)
        assert bot.is_ready()
        await bot.ws.close()  # the gateway drops; discord.py still says ready
        assert bot.is_ready() and not bot.is_connected()


async def test_the_bot_counts_as_healthy_only_while_its_engine_runs(
    simcord_env: simcord.Env,
) -> None:
    bot = simcord_env.bot
    assert isinstance(bot, AssistantBot)
    assert bot.is_healthy() and bot.executor.health().alive
    engine = bot.executor._engine
    assert engine is not None
    engine.cancel()  # as if the engine's task had ended
    await asyncio.gather(engine, return_exceptions=True)
    assert bot.is_connected() and not bot.is_healthy()


def test_health_command_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    monkeypatch.setenv("BOT_DATA_DIR", str(tmp_path))
    assert main(["health"]) == 1
    assert "unhealthy: no heartbeat" in capsys.readouterr().err
    (tmp_path / "heartbeat").touch()
    assert main(["health"]) == 0
    age(tmp_path / "heartbeat", 30)
    assert main(["health", "--max-age", "10"]) == 1


def test_the_container_check_is_light_and_exits_like_a_health_check(tmp_path: Path) -> None:
    """Docker runs it every 30 s: it must not import torch, discord or the settings."""
    beat = tmp_path / "heartbeat"
    script = (
        "import sys, runpy; sys.argv = ['bot.health', sys.argv[1]]\n"
        "try:\n    runpy.run_module('bot.health', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    heavy = {'torch', 'discord', 'pydantic'} & {m.split('.')[0] for m in sys.modules}\n"
        "    print(sorted(heavy), file=sys.stderr); raise\n"
    )

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, str(beat)], capture_output=True, text=True, cwd=ROOT
        )

    missing = check()
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == "[]"
    beat.touch()
    fresh = check()
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.startswith("healthy")
