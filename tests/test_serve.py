"""Signals while serving: the first stops gracefully, a second hurries; handlers are removed."""

from __future__ import annotations

import asyncio
import os
import signal

from bot.serve import stop_on_signals


async def test_first_signal_stops_a_second_hurries_and_handlers_are_restored() -> None:
    calls: list[str] = []
    stopping, stopped = asyncio.Event(), asyncio.Event()

    async def stop() -> None:
        calls.append("stop")
        stopping.set()
        await stopped.wait()

    async def hurry() -> None:
        calls.append("hurry")
        stopped.set()

    before = signal.getsignal(signal.SIGTERM)
    async with stop_on_signals(stop, hurry):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopping.wait(), 10)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(stopped.wait(), 10)
    assert calls == ["stop", "hurry"]
    assert signal.getsignal(signal.SIGTERM) == before
