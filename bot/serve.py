"""Serving until told to stop: SIGTERM (docker stop, systemd) and Ctrl-C end the bot cleanly.

A clean stop refuses new work, tells queued members why their job ended, lets running jobs
finish and their replies go out, disconnects, and flushes every usage record. A second
signal stops the running jobs at once too (each told why); the rest of the stop is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from bot.app import Worker, running
from bot.client import AssistantBot
from bot.settings import Settings

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(
    settings: Settings,
    connect: Callable[[AssistantBot], Awaitable[None]],
    *,
    metrics: bool = True,
    worker: Worker | None = None,
) -> None:
    """Run the bot through ``connect`` (Discord, or SimCord in tests) until it returns;
    ``worker`` overrides ``BOT_WORKER``."""
    async with running(settings, metrics=metrics, worker=worker) as services:
        bot = AssistantBot(services, settings)
        async with stop_on_signals(bot.stop_gracefully, lambda: bot.executor.shutdown(now=True)):
            await connect(bot)


@contextlib.asynccontextmanager
async def stop_on_signals(
    stop: Callable[[], Awaitable[None]], hurry: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """The first signal starts ``stop``; a second one starts ``hurry`` beside it."""
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []

    def on_signal(received: signal.Signals) -> None:
        if started:
            log.warning("%s again: stopping running jobs now", received.name)
            started.append(loop.create_task(hurry(), name="stop-now"))
            return
        log.warning("%s: finishing running jobs, then stopping", received.name)
        started.append(loop.create_task(stop(), name="graceful-stop"))

    handled = []
    for received in SIGNALS:
        with contextlib.suppress(NotImplementedError):  # Windows' event loops have none
            loop.add_signal_handler(received, on_signal, received)
            handled.append(received)
    try:
        yield
        for task in started:
            await task  # their errors surface here, not as "never retrieved"
    finally:
        for received in handled:
            loop.remove_signal_handler(received)
