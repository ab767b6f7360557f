"""Serves the bot over SimCord, sends a burst, then waits for the parent's SIGTERM.

Run by tests/test_faults.py: ``python -m tests.sigterm_child`` with BOT_* settings in the
environment. It prints ``burst sent`` once every command is in, and, after ``serve``
returns, one JSON line describing how every interaction ended.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from typing import Any
from unittest import mock

import simcord

from bench.load import is_final, slowed_tasks
from bot import app as bot_app
from bot.client import AssistantBot
from bot.serve import serve
from bot.settings import Settings

COMMANDS = 24
BATCH_DELAY_S = 0.4


async def main() -> None:
    settings = Settings(_env_file=None)
    results: list[Any] = []

    async def connect(bot: AssistantBot) -> None:
        async with simcord.run(bot, check_errors=False) as env:
            guild = env.create_guild()
            channel = guild.create_text_channel("study")
            members = [guild.add_member(env.create_user(f"member{i}")) for i in range(12)]
            for n in range(COMMANDS):
                command, options = [
                    ("sentiment", {"text": f"good exam {n}"}),
                    ("chat", {"message": f"hello {n}"}),
                ][n % 2]
                results.append(await members[n % 12].slash(channel, command, **options))
            print("burst sent", flush=True)
            while not bot.is_closed():
                await asyncio.sleep(0.05)
            await env.settle()

    with mock.patch.object(bot_app, "build_tasks", slowed_tasks(BATCH_DELAY_S)):
        await serve(settings, connect, metrics=False)
    with sqlite3.connect(settings.usage_path()) as db:
        statuses = Counter(status for (status,) in db.execute("SELECT status FROM invocations"))
    print(
        json.dumps(
            {
                "commands": len(results),
                "unanswered": sum(1 for r in results if not is_final(r)),
                "statuses": statuses,
                "replies": [r.response.content for r in results],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
