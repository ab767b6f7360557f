"""The study group's tools: /catchup ("what did I miss") and daily digests (/digest)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.catchup import Missed, newest_that_fit, parse_since, read_missed
from bot.commands import admin_only, caller_of, place_caller, render, run_task
from bot.delivery import NO_MENTIONS, Reply
from bot.digests import (
    Digests,
    Said,
    Schedule,
    compose,
    due,
    parse_time,
    parse_zone,
    scheduled_at,
)
from bot.invocations import Caller
from bot.markdown import clip
from handlers.base import InvalidInput
from handlers.summarize import SummarizeRequest, SummarizeResult

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)

RETRY_EVERY_S = 60.0
"""How soon a failed digest is tried again."""
DAY = datetime.timedelta(days=1)
RETRY_FOR = datetime.timedelta(hours=3)
"""How long a digest that failed (the channel out of reach, the queue full) is tried again
before its day is given up."""


def render_missed(result: SummarizeResult, missed: Missed) -> Reply:
    """The summary, then what it covers and the messages the channel reacted to most."""
    reply = render(result)
    when = discord.utils.format_dt(missed.since, "R")
    note = f"-# {missed.count} message(s) since {when}"
    if missed.key_links:
        note += " · most reacted to: " + " ".join(missed.key_links)
    return Reply(reply.text, f"{reply.note}\n{note}".strip())


class Study(commands.Cog):
    digest = app_commands.Group(
        name="digest",
        description="A daily digest of a channel's discussion",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.digests = Digests(bot.usage)
        self.clock: Callable[[], datetime.datetime] = discord.utils.utcnow
        self._digesting: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        await self._follow_schedules()

    async def cog_unload(self) -> None:
        await self._stop_digesting()

    async def _stop_digesting(self) -> None:
        if self._digesting is not None:
            self._digesting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._digesting
            self._digesting = None

    async def _follow_schedules(self) -> None:
        """(Re)start the digests' round as the schedules now are: none runs, and no timer
        waits, while no digest is scheduled."""
        await self._stop_digesting()
        if await self.digests.every():
            self._digesting = asyncio.create_task(self._digest_forever(), name="digests")

    async def _digest_forever(self) -> None:
        """Post what is due, then sleep until the next digest's time (a minute after a
        failure), and again."""
        await self.bot.wait_until_ready()
        while True:
            wait: float | None = RETRY_EVERY_S
            try:
                _, failed = await self.run_due_digests()
                wait = await self._until_next(RETRY_EVERY_S if failed else None)
            except Exception:  # one bad round never ends the schedule
                log.exception("digests failed this round")
            await asyncio.sleep(wait if wait is not None else DAY.total_seconds())

    async def _until_next(self, soonest: float | None) -> float | None:
        """Seconds until the next digest is due (at most ``soonest``); None when none is
        scheduled."""
        now = self.clock()
        for schedule in await self.digests.every():
            last = datetime.date.fromisoformat(schedule.last_day or now.date().isoformat())
            moment = scheduled_at(schedule, (last + DAY).isoformat())
            wait = max(1.0, (moment - now).total_seconds())
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    async def run_due_digests(self) -> tuple[int, int]:
        """Post every digest that is due (each once, however many days it missed), skip the
        quiet ones: (posted, failed). A failed one is tried again at the next rounds for
        ``RETRY_FOR`` after its time, then its day is given up."""
        posted = failed = 0
        for schedule in await self.digests.every():
            day = None
            try:
                day = due(schedule, self.clock())
                if day is None:
                    continue
                posted += await self._post_digest(schedule)
            except Exception as exc:  # the channel out of reach, the queue full...
                failed += 1
                log.warning("the digest of channel %d failed: %s", schedule.channel_id, exc)
                if day is None or self.clock() - scheduled_at(schedule, day) < RETRY_FOR:
                    continue
            await self.digests.ran(schedule.channel_id, day)
        return posted, failed

    async def _post_digest(self, schedule: Schedule) -> bool:
        channel = self.bot.get_channel(schedule.channel_id)
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            raise LookupError("the channel is gone or not a text channel")
        newest = channel.history(after=self.clock() - DAY, limit=500, oldest_first=False)
        messages = [m async for m in newest][::-1]
        replied = {m.reference.message_id for m in messages if m.reference is not None}
        said = [
            Said(m.author.display_name, m.content, m.jump_url,
                 sum(r.count for r in m.reactions), m.id in replied)
            for m in messages if m.content and not m.author.bot
        ]  # fmt: skip
        lines = newest_that_fit(
            [f"{m.author}: {m.content}" for m in said], self.bot.settings.summarize.max_chars
        )
        said = said[len(said) - len(lines) :]
        if not said:
            return False  # a quiet day
        text = "\n".join(lines)
        caller = Caller(f"digest:{schedule.channel_id}", "digest", schedule.guild_id,
                        schedule.channel_id, enforce_quotas=False)  # fmt: skip
        result = await self.bot.invoker.submit("summarize", SummarizeRequest(text), caller)
        await channel.send(clip(compose(result.summary, said)), allowed_mentions=NO_MENTIONS)
        return True

    @digest.command(name="schedule", description="Post a digest of a channel's last day, daily")
    @app_commands.describe(
        time="When: 18:30, 7pm...", timezone="A time zone such as Europe/Paris (default UTC)",
        channel="The channel (default: this one); the digest is posted in it",
    )  # fmt: skip
    @admin_only()
    async def digest_schedule(
        self,
        interaction: Interaction,
        time: str,
        timezone: str = "UTC",
        channel: discord.TextChannel | None = None,
    ) -> None:
        place = channel or interaction.channel
        if not isinstance(place, discord.TextChannel):
            raise InvalidInput("channel", "choose a text channel of this server")
        if not self.bot.settings.read_messages:
            raise InvalidInput(
                "channel", "reading messages is off on this bot (its admin can enable "
                "BOT_READ_MESSAGES)"
            )  # fmt: skip
        at, zone = parse_time(time), parse_zone(timezone)
        mine = place.permissions_for(place.guild.me)
        if not (mine.read_message_history and mine.send_messages):
            raise InvalidInput("channel", "I cannot read and post there")
        theirs = place.permissions_for(interaction.user)  # type: ignore[arg-type]
        if not (theirs.view_channel and theirs.read_message_history):
            raise InvalidInput("channel", "you cannot read that channel's history yourself")
        there = place_caller(interaction.user, place, place.id, interaction.guild_id, False)
        blocked = self.bot.invoker.why_not("summarize", there)
        if blocked is not None:
            raise InvalidInput("channel", f"no digest there: {blocked}")
        assert interaction.guild_id is not None
        now = self.clock()
        # The first digest is at the next time of day to come: the latest one passed counts
        # as done, so none is posted at once.
        local = now.astimezone(zone)
        before = local.hour * 60 + local.minute < at
        passed = local.date() - (DAY if before else datetime.timedelta())
        schedule = Schedule(place.id, interaction.guild_id, at, zone.key,
                            str(interaction.user.id), passed.isoformat())  # fmt: skip
        await self.digests.put(schedule, now.timestamp())
        await self._follow_schedules()
        await interaction.response.send_message(
            f"A digest of {place.mention} will be posted there daily at {schedule.time()}.",
            ephemeral=True,
        )
        self.bot.invoker.record_command("digest", caller_of(interaction))

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        """A deleted channel's digest goes with it (the command cannot name it any more)."""
        if await self.digests.remove(channel.id):
            await self._follow_schedules()

    @digest.command(name="list", description="The daily digests of this server")
    @admin_only()
    async def digest_list(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        schedules = await self.digests.of_guild(interaction.guild_id)
        lines = [f"- <#{s.channel_id}> at {s.time()}" for s in schedules]
        await interaction.response.send_message(
            "\n".join(lines) or "No daily digest here.", ephemeral=True
        )

    @digest.command(name="remove", description="Stop a channel's daily digest")
    @app_commands.describe(channel="The channel (default: this one)")
    @admin_only()
    async def digest_remove(
        self, interaction: Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        place = channel or interaction.channel
        assert place is not None
        removed = await self.digests.remove(place.id)
        await self._follow_schedules()
        said = "The daily digest there is stopped." if removed else "No daily digest there."
        await interaction.response.send_message(said, ephemeral=True)

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
                interaction.user, interaction.channel, discord.Object(interaction.id), moment,
                now, bot.settings.summarize.max_chars,
            )  # fmt: skip
            found.append(missed)
            return SummarizeRequest(missed.text, "medium")

        await run_task(
            interaction, "summarize", read=read,
            render_result=lambda result: render_missed(result, found[0]), private=True,
        )  # fmt: skip


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Study(bot))
