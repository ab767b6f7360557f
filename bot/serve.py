"""Serving until told to stop: SIGTERM (docker stop, systemd) and Ctrl-C end the bot cleanly.

A clean stop refuses new work, tells queued members why their job ended, lets running jobs
finish and their replies go out, disconnects, and flushes every usage record. A second
signal stops at once (still flushing the usage log on the way out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from bot.app import running
from bot.client import AssistantBot
from bot.settings import Settings

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(
    settings: Settings,
    connect: Callable[[AssistantBot], Awaitable[None]],
    *,
    metrics: bool = True,
) -> None:
    """Run the bot through ``connect`` (Discord, or SimCord in tests) until it returns."""
    async with running(settings, metrics=metrics) as services:
        bot = AssistantBot(services, settings)
        async with stop_on_signals(bot.stop_gracefully):
            await connect(bot)


@contextlib.asynccontextmanager
async def stop_on_signals(stop: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """The first signal starts ``stop``; a second cancels the serving task outright."""
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(received: signal.Signals) -> None:
        if stopping:
            log.warning("%s again: stopping now", received.name)
            if serving is not None:
                serving.cancel()
            return
        log.warning("%s: finishing running jobs, then stopping", received.name)
        stopping.append(loop.create_task(stop(), name="graceful-stop"))

    for received in SIGNALS:
        loop.add_signal_handler(received, on_signal, received)
    try:
        yield
        if stopping:
            await stopping[0]  # its errors surface here, not as "never retrieved"
    finally:
        for received in SIGNALS:
            loop.remove_signal_handler(received)
        for task in stopping:
            task.cancel()
