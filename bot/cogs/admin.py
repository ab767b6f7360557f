"""Admin and member commands about the bot itself: /queue, /stats, /usage."""

from __future__ import annotations

import asyncio
import io
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.charts import usage_chart
from bot.commands import admin_only, caller_of
from bot.delivery import NO_MENTIONS
from bot.markdown import clip
from bot.quotas import duration
from bot.usage import render_stats

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]


class Admin(commands.Cog):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot

    async def _reply(self, interaction: Interaction, command: str, text: str) -> None:
        """Answer privately, in place of the private deferral where there was one."""
        if interaction.response.is_done():
            await interaction.followup.send(
                clip(text), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        else:
            await interaction.response.send_message(
                clip(text), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        self.bot.invoker.record_command(command, caller_of(interaction))

    @app_commands.command(description="Jobs waiting and running, and the models in memory")
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def queue(self, interaction: Interaction) -> None:
        snapshot = self.bot.executor.snapshot()
        lines = [f"**{snapshot.outstanding}** jobs in progress, **{snapshot.queued}** waiting"]
        for model in snapshot.models:
            lines.append(
                f"`{model.task}` {model.model}: {model.queued} waiting, "
                f"wait p50 {model.wait.p50_ms:.0f} ms, run p50 {model.run.p50_ms:.0f} ms"
            )
        lines.append("**Loaded models**")
        lines += [f"`{m.task}` {m.model}: {m.bytes / 2**20:.0f} MiB on {m.device}"
                  for m in snapshot.loaded] or ["none"]  # fmt: skip
        await self._reply(interaction, "queue", "\n".join(lines))

    @app_commands.command(description="Usage over the last days")
    @app_commands.describe(days="How many days back")
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def stats(
        self, interaction: Interaction, days: app_commands.Range[int, 1, 90] = 7
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        # Owners see every server; a server's managers see their own server only.
        owner = str(interaction.user.id) in self.bot.settings.owner_ids
        guild_id = None if owner else interaction.guild_id
        stats = await self.bot.usage.stats(time.time() - days * 86400, guild_id=guild_id)
        chart = await asyncio.to_thread(usage_chart, stats)  # drawing is CPU work
        table = render_stats(stats)
        await interaction.followup.send(
            f"Usage over {days} day(s); the full table is attached.",
            files=[
                discord.File(io.BytesIO(chart), filename="usage.png"),
                discord.File(io.BytesIO(table.encode()), filename="usage.txt"),
            ],
            ephemeral=True,
        )
        self.bot.invoker.record_command("stats", caller_of(interaction))

    @app_commands.command(description="Your quota for today")
    async def usage(self, interaction: Interaction) -> None:
        guild = self.bot.settings_for(interaction)
        quotas = self.bot.invoker.quotas
        rows = quotas.summary(str(interaction.user.id), guild)
        lines = [f"/{task}: {used} of {limit} used, resets in {duration(resets)}"
                 for task, used, limit, resets in rows]  # fmt: skip
        budget = quotas.policy.gpu_seconds_per_day
        if budget is not None:
            used_s = quotas.gpu_used(str(interaction.user.id))
            lines.append(f"GPU time: {used_s:.0f} of {budget:g} seconds used today")
        lines = lines or ["No daily limits apply."]
        await self._reply(interaction, "usage", "\n".join(lines))


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Admin(bot))
