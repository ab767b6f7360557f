"""The study group's tools: /catchup ("what did I miss"), daily digests (/digest) and
quizzes made from the group's material (/quiz)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from bot.guilds import DIRECT_MESSAGES
from bot.invocations import Caller, CommandDisabled
from bot.markdown import clip
from bot.quizzes import (
    LETTERS,
    MAX_QUESTIONS,
    MalformedQuiz,
    Question,
    QuizStore,
    material_chars,
    parse_quiz,
    quiz_request,
)
from bot.reading import material_source
from handlers.base import InvalidInput
from handlers.chat import ChatResult
from handlers.summarize import SummarizeRequest, SummarizeResult

if TYPE_CHECKING:
    from bot.client import AssistantBot
    from bot.executor import JobHandle

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


class QuizButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"quiz:(?P<quiz>[0-9a-f]{32}):(?P<index>[0-9]{1,2}):(?P<choice>[0-4])",
):
    """A choice under a quiz's question; the quiz is kept in SQLite, so it works across
    restarts. A member's first answer counts; pressing again shows it."""

    def __init__(self, quiz_id: str, index: int, choice: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=LETTERS[choice],
                style=discord.ButtonStyle.secondary,
                custom_id=f"quiz:{quiz_id}:{index}:{choice}",
            )
        )
        self.quiz_id, self.index, self.choice = quiz_id, index, choice

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> QuizButton:
        return cls(match["quiz"], int(match["index"]), int(match["choice"]))

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]
        bot = interaction.client
        caller = dataclasses.replace(caller_of(interaction), command="quiz")
        try:
            blocked = bot.invoker.why_not("chat", caller)
            if blocked is not None:
                raise blocked
            await interaction.response.defer(ephemeral=True, thinking=True)
            await self._answer(interaction, caller)
        except Exception as exc:
            if isinstance(exc, InvalidInput | CommandDisabled):
                bot.invoker.record_refusal("chat", caller, exc)
            await bot.report_error(interaction, exc)

    async def _answer(self, interaction: Interaction, caller: Caller) -> None:
        store = QuizStore(interaction.client.usage)
        found = await store.question(self.quiz_id, self.index)
        here = interaction.guild_id or DIRECT_MESSAGES
        if found is None or found[0] != here or self.choice >= len(found[1].choices):
            raise InvalidInput("quiz", "this quiz is no longer kept")
        guild_id, question = found
        counted = await store.answer(self.quiz_id, self.index, caller.user_id, guild_id,
                                     self.choice, self.choice == question.answer)  # fmt: skip
        score = await store.score(guild_id, caller.user_id)
        said = question.verdict(counted)
        if counted != self.choice:
            said = f"You answered **{LETTERS[counted]}** already. {said}"
        await interaction.edit_original_response(
            content=f"{said}\n-# Your score: {score.correct} right of {score.answered}"
        )


def quiz_buttons(quiz_id: str, index: int, question: Question) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for choice in range(len(question.choices)):
        view.add_item(QuizButton(quiz_id, index, choice))
    return view


class Study(commands.Cog):
    digest = app_commands.Group(
        name="digest",
        description="A daily digest of a channel's discussion",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    quiz = app_commands.Group(
        name="quiz", description="Quizzes made from the group's material", extras={"task": "chat"}
    )

    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.digests = Digests(bot.usage)
        self.quizzes = QuizStore(bot.usage)
        self.clock: Callable[[], datetime.datetime] = discord.utils.utcnow
        self._digesting: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(QuizButton)
        await self._follow_schedules()

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(QuizButton)
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
        caller = Caller(f"digest:{schedule.channel_id}", "digest", schedule.guild_id,
                        schedule.channel_id, enforce_quotas=False, command="digest")  # fmt: skip
        if self.bot.invoker.why_not("summarize", caller) is not None:
            return False  # turned off here since it was scheduled: the day is skipped
        newest = channel.history(after=self.clock() - DAY, limit=500, oldest_first=False)
        messages = [m async for m in newest][::-1]
        replied = {m.reference.message_id for m in messages if m.reference is not None}
        said = [
            Said(m.author.display_name, m.content, m.jump_url,
                 sum(r.count for r in m.reactions), m.id in replied, m.pinned)
            for m in messages if m.content and not m.author.bot
        ]  # fmt: skip
        lines = newest_that_fit(
            [f"{m.author}: {m.content}" for m in said], self.bot.settings.summarize.max_chars
        )
        said = said[len(said) - len(lines) :]
        if not said:
            return False  # a quiet day
        text = "\n".join(lines)
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
        there = dataclasses.replace(
            place_caller(interaction.user, place, place.id, interaction.guild_id, False),
            command="digest",
        )
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

    @quiz.command(name="make", description="Multiple-choice questions from a text, a message "
                  "or a document, answered with buttons")  # fmt: skip
    @app_commands.describe(
        source="A text, or a link to a message in this server",
        file="A document: .pdf, .docx, .pptx, .md, .html or .txt",
        questions="How many questions",
    )
    async def quiz_make(
        self,
        interaction: Interaction,
        source: str | None = None,
        file: discord.Attachment | None = None,
        questions: app_commands.Range[int, 1, MAX_QUESTIONS] = 5,
    ) -> None:
        bot, chat = self.bot, self.bot.settings.chat
        caller = caller_of(interaction)
        try:
            most = material_chars(chat.context_tokens, chat.max_new_tokens, questions)
            read = material_source(interaction, source, file, bot.settings.read_messages, most)
        except InvalidInput as exc:
            bot.invoker.record_refusal("chat", caller, exc)
            raise
        policy = bot.reply_policy(interaction)
        with bot.invoker.admit("chat", caller) as admission:
            await interaction.response.defer(thinking=True, ephemeral=policy.ephemeral)
            material = await read()
            handle = admission.submit(quiz_request(material, questions, chat.max_new_tokens))
        made = await self._write_quiz(handle, material, questions, caller)
        quiz_id = await self.quizzes.put(interaction.guild_id or DIRECT_MESSAGES,
                                         interaction.channel_id, caller.user_id, made)  # fmt: skip
        await interaction.edit_original_response(
            content=f"📝 **Quiz**: {len(made)} question(s) from {interaction.user.mention}'s "
            "material. Press a letter to answer: your first answer counts"
            + (", and `/quiz scores` shows the server's best." if interaction.guild else "."),
            allowed_mentions=NO_MENTIONS,
        )
        for index, question in enumerate(made):
            await interaction.followup.send(
                question.render(index + 1, len(made)), view=quiz_buttons(quiz_id, index, question),
                ephemeral=policy.ephemeral, allowed_mentions=NO_MENTIONS,
            )  # fmt: skip

    async def _write_quiz(
        self, handle: JobHandle, material: str, count: int, caller: Caller
    ) -> list[Question]:
        """The quiz the model wrote; written again once (sampled) if it is malformed, and
        refused if it still is."""
        try:
            result: ChatResult = await handle
        except InvalidInput as exc:  # the chat model's window, in tokens
            raise InvalidInput("source", f"is too long for a quiz: {exc.message}") from None
        try:
            return parse_quiz(result.text, count)
        except MalformedQuiz as exc:
            log.info("the model wrote a malformed quiz (%s): asking again", exc)
        retry = quiz_request(material, count, self.bot.settings.chat.max_new_tokens, attempt=1)
        again = self.bot.invoker.submit(
            "chat", retry, dataclasses.replace(caller, enforce_quotas=False)
        )
        result = await again
        try:
            return parse_quiz(result.text, count)
        except MalformedQuiz as exc:
            refused = InvalidInput(
                "source", f"the model could not write a whole quiz from this, twice ({exc}); "
                "try fewer questions or clearer material"
            )  # fmt: skip
            self.bot.invoker.record_refusal("chat", caller, refused)
            raise refused from None

    @quiz.command(name="scores", description="This server's best at its quizzes")
    async def quiz_scores(self, interaction: Interaction) -> None:
        caller = caller_of(interaction)
        blocked: InvalidInput | CommandDisabled | None = self.bot.invoker.why_not("chat", caller)
        if interaction.guild_id is None:
            blocked = InvalidInput("scores", "are kept for each server; ask in one")
        if blocked is not None:
            self.bot.invoker.record_refusal("chat", caller, blocked)
            raise blocked
        best = await self.quizzes.scores(interaction.guild_id)
        lines = [
            f"{place}. <@{s.user_id}>: {s.correct} right of {s.answered}"
            for place, s in enumerate(best, 1)
        ]
        text = "\n".join(["**Quiz scores**", *lines]) if lines else "No quiz answered here yet."
        await interaction.response.send_message(
            text, ephemeral=self.bot.reply_policy(interaction).ephemeral,
            allowed_mentions=NO_MENTIONS,
        )  # fmt: skip
        self.bot.invoker.record_command("quiz", caller)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Study(bot))
