"""The study group's tools: /catchup ("what did I miss") for now."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.catchup import Missed, parse_since, read_missed
from bot.commands import caller_of, render, run_task
from bot.delivery import Reply
from handlers.base import InvalidInput
from handlers.summarize import SummarizeRequest, SummarizeResult

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]


def render_missed(result: SummarizeResult, missed: Missed) -> Reply:
    """The summary, then what it covers and the messages the channel reacted to most."""
    reply = render(result)
    when = discord.utils.format_dt(missed.since, "R")
    note = f"-# {missed.count} message(s) since {when}"
    if missed.key_links:
        note += " · most reacted to: " + " ".join(missed.key_links)
    return Reply(reply.text, f"{reply.note}\n{note}".strip())


class Study(commands.Cog):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot

    @app_commands.command(
        description="What did I miss? The channel since you last wrote, summarized for you alone",
        extras={"task": "summarize"},
    )
    @app_commands.describe(
        since="From when: 3h, 90m, 2d, today or yesterday (default: your last message here)"
    )
    async def catchup(self, interaction: Interaction, since: str | None = None) -> None:
        bot = self.bot
        now = discord.utils.utcnow()
        try:
            if not bot.settings.read_messages:
                raise InvalidInput(
                    "since",
                    "reading messages is off on this bot (its admin can enable BOT_READ_MESSAGES)",
                )
            moment = None if since is None else parse_since(since, now)
        except InvalidInput as exc:
            bot.invoker.record_refusal("summarize", caller_of(interaction), exc)
            raise
        found: list[Missed] = []

        async def read() -> SummarizeRequest:
            missed = await read_missed(
                interaction.user, interaction.channel, discord.Object(interaction.id), moment, now
            )
            found.append(missed)
            return SummarizeRequest(missed.text, "medium")

        await run_task(
            interaction, "summarize", read=read,
            render_result=lambda result: render_missed(result, found[0]), private=True,
        )  # fmt: skip


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Study(bot))
