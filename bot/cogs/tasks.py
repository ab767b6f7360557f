"""Slash commands for the seven tasks: thin adapters from Discord options to handler requests."""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs._render import CancelView, JobWatcher, Reply
from bot.cogs.images import image_buttons
from bot.invocations import Caller
from handlers.base import HandlerError, InvalidInput
from handlers.chat import ChatRequest, ChatResult
from handlers.classify import ClassifyRequest, ClassifyResult, parse_labels
from handlers.imagine import ImagineRequest, ImagineResult
from handlers.languages import search_languages
from handlers.sentiment import SentimentRequest, SentimentResult
from handlers.speak import SpeakRequest, SpeakResult
from handlers.summarize import SummarizeRequest, SummarizeResult
from handlers.translate import TranslateRequest, TranslateResult

if TYPE_CHECKING:
    from bot.client import AssistantBot

log = logging.getLogger(__name__)

Text = app_commands.Range[str, 1, 4000]


def caller_of(interaction: discord.Interaction) -> Caller:
    channel = interaction.channel
    user = interaction.user
    return Caller(
        user_id=str(user.id),
        source="discord",
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        roles=tuple(role.id for role in user.roles) if isinstance(user, discord.Member) else (),
        age_restricted=bool(channel is not None and getattr(channel, "is_nsfw", bool)()),
    )


def language_choices(current: str, detect: bool) -> list[app_commands.Choice[str]]:
    choices = [
        app_commands.Choice(name=f"{language.name} ({language.code})", value=language.code)
        for language in search_languages(current)
    ]
    if detect and "detect automatically".startswith(current.casefold()):
        choices.insert(0, app_commands.Choice(name="Detect automatically", value="auto"))
    return choices[:25]


def render(result: Any) -> Reply:
    """How each task's result looks in Discord."""
    match result:
        case SummarizeResult():
            note = f"\n-# summarised from {result.chunks} parts" if result.chunks > 1 else ""
            return Reply(result.summary + note)
        case TranslateResult():
            return Reply(f"{result.text}\n-# {result.source} → {result.target}")
        case ImagineResult():
            note = f"-# seed {result.seed} · {result.width}x{result.height} · {result.steps} steps"
            if result.flagged:
                note += f" · {result.flagged} withheld by the safety filter"
            files = [(f"imagine-{result.seed + k}.png", png) for k, png in enumerate(result.images)]
            return Reply(note, files)
        case SpeakResult():
            return Reply(f"-# {result.seconds:.1f} s", [("speech.ogg", result.ogg)])
        case SentimentResult():
            return Reply(f"**{result.label}** ({result.score:.0%})")
        case ClassifyResult():
            rows = zip(result.labels, result.scores, strict=True)
            return Reply("\n".join(f"`{score:6.1%}` {label}" for label, score in rows))
        case ChatResult():
            return Reply(result.text or "*(no answer)*")
    raise TypeError(f"no rendering for {type(result).__name__}")


# Snowflakes have at most 20 digits; int() raises ValueError past 4,300 of them.
MESSAGE_LINK = re.compile(
    r"https://(?:\w+\.)?discord(?:app)?\.com/channels/(\d{1,20})/(\d{1,20})/(\d{1,20})"
)
MAX_TEXT_FILE = 2**20


async def text_from(
    interaction: discord.Interaction,
    text: str | None,
    messages: int | None,
    link: str | None,
    file: discord.Attachment | None,
    can_read: bool,
) -> str:
    """The text to summarize, from exactly one source; errors name the option to fix."""
    given = [name for name, value in (("text", text), ("messages", messages), ("link", link),
             ("file", file)) if value]  # fmt: skip
    if len(given) != 1:
        raise InvalidInput("text", "give exactly one of text, messages, link or file")
    if text:
        return text
    if file is not None:
        if not file.filename.lower().endswith(".txt") or file.size > MAX_TEXT_FILE:
            raise InvalidInput("file", "attach a .txt file of at most 1 MiB")
        try:
            return (await file.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("file", "is not UTF-8 text") from None
    if not can_read:
        raise InvalidInput(
            "messages" if messages else "link",
            "reading messages is off on this bot (its admin can enable BOT_READ_MESSAGES)",
        )
    channel = interaction.channel
    if link:
        match = MESSAGE_LINK.fullmatch(link.strip())
        if match is None or int(match[1]) != interaction.guild_id:
            raise InvalidInput("link", "must be a link to a message in this server")
        source = (
            interaction.guild.get_channel_or_thread(int(match[2])) if interaction.guild else None
        )
        if not isinstance(source, discord.abc.GuildChannel | discord.Thread) or not isinstance(
            interaction.user, discord.Member
        ):
            raise InvalidInput("link", "points to a channel I cannot see")
        allowed = source.permissions_for(interaction.user)
        if not (allowed.view_channel and allowed.read_message_history):
            raise InvalidInput("link", "points to a channel you cannot read")
        try:
            message = await source.fetch_message(int(match[3]))
        except discord.HTTPException:
            raise InvalidInput("link", "points to a message I cannot read") from None
        return message.content
    if not isinstance(channel, discord.abc.Messageable):
        raise InvalidInput("messages", "this channel has no history I can read")
    lines = [f"{m.author.display_name}: {m.content}"
             async for m in channel.history(limit=messages) if m.content]  # fmt: skip
    return "\n".join(reversed(lines))


class Tasks(commands.Cog):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.menus = [
            app_commands.ContextMenu(name="Summarize", callback=self.summarize_message),
            app_commands.ContextMenu(name="Translate", callback=self.translate_message),
            app_commands.ContextMenu(name="Speak", callback=self.speak_message),
        ]

    async def cog_load(self) -> None:
        for menu in self.menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    async def summarize_message(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        await self.run(interaction, "summarize", SummarizeRequest(message.content))

    async def translate_message(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        """Into the language of the member's Discord client."""
        target = str(interaction.locale)
        await self.run(interaction, "translate", TranslateRequest(message.content, target))

    async def speak_message(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        await self.run(interaction, "speak", SpeakRequest(message.content))

    async def run(self, interaction: discord.Interaction, task: str, request: Any) -> None:
        """Admit (refusals answer privately at once), defer, then let a watcher follow the job."""
        guild = await self.bot.settings_for(interaction)
        ephemeral = bool(guild and guild.ephemeral)
        final_view = None
        if task == "imagine":  # stored first: a button must never point at nothing
            try:
                key = await self.bot.image_requests.save(
                    request, interaction.user.id, interaction.guild_id
                )
                final_view = image_buttons(key)
            except sqlite3.Error as exc:  # the images still come, without buttons
                log.warning("cannot store an image request, so no buttons: %s", exc)
        handle = await self.bot.invoker.submit(
            task,
            request,
            caller_of(interaction),
            acknowledge=lambda: interaction.response.defer(thinking=True, ephemeral=ephemeral),
        )
        view = CancelView(handle, interaction.user.id)
        watcher = JobWatcher(interaction, handle, view, self.bot.edit_interval, render, final_view)
        self.bot.watchers[handle.id] = watcher
        watcher.finished.add_done_callback(lambda _: self.bot.watchers.pop(handle.id, None))

    @app_commands.command(description="Summarize a text, a file or the channel's last messages")
    @app_commands.describe(
        text="The text to summarize",
        messages="Summarize this many recent messages of the channel (a study-group recap)",
        link="Summarize the message at this link",
        file="Summarize a .txt file",
        length="How long the summary should be",
    )
    @app_commands.choices(
        length=[app_commands.Choice(name=n, value=n) for n in ("short", "medium", "long")]
    )
    async def summarize(
        self,
        interaction: discord.Interaction,
        text: Text | None = None,
        messages: app_commands.Range[int, 1, 100] | None = None,
        link: str | None = None,
        file: discord.Attachment | None = None,
        length: str = "medium",
    ) -> None:
        try:
            source = await text_from(
                interaction, text, messages, link, file, self.bot.settings.read_messages
            )
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("summarize", caller_of(interaction), exc)
            raise
        await self.run(interaction, "summarize", SummarizeRequest(source, length))

    @app_commands.command(description="Translate a text into another language")
    @app_commands.describe(text="The text", to="Target language", source="Source (default: detect)")
    @app_commands.rename(source="from")
    async def translate(
        self, interaction: discord.Interaction, text: Text, to: str, source: str = "auto"
    ) -> None:
        await self.run(interaction, "translate", TranslateRequest(text, to, source))

    @translate.autocomplete("to")
    async def _targets(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return language_choices(current, detect=False)

    @translate.autocomplete("source")
    async def _sources(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return language_choices(current, detect=True)

    @app_commands.command(description="Generate images from a prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid",
        steps="Denoising steps (more: slower, finer)",
        guidance="How closely to follow the prompt",
        seed="Reuse a seed to reproduce an image",
        size="Image size",
        count="How many images",
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        negative: app_commands.Range[str, 0, 1000] = "",
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        size: str | None = None,
        count: app_commands.Range[int, 1, 4] = 1,
    ) -> None:
        request = ImagineRequest(prompt, negative, steps, guidance, seed, size, count)
        await self.run(interaction, "imagine", request)

    @imagine.autocomplete("size")
    async def _sizes(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        sizes = self.bot.executor.tasks["imagine"].size_choices() or []
        return [app_commands.Choice(name=s, value=s) for s in sizes if current in s][:25]

    @app_commands.command(description="Read a text aloud")
    @app_commands.describe(text="What to say", voice="Voice", language="Language code")
    async def speak(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, 2000],
        voice: str | None = None,
        language: str = "en",
    ) -> None:
        await self.run(interaction, "speak", SpeakRequest(text, voice, language))

    @speak.autocomplete("voice")
    async def _voices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            names = self.bot.executor.tasks["speak"].voice_names()
        except HandlerError:  # the voice table could not be loaded; /speak says why
            return []
        return [app_commands.Choice(name=n, value=n) for n in names if current in n][:25]

    @speak.autocomplete("language")
    async def _speech_languages(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        codes = self.bot.executor.tasks["speak"].languages()
        return [app_commands.Choice(name=c, value=c) for c in codes if current in c][:25]

    @app_commands.command(description="Is a text positive or negative?")
    @app_commands.describe(text="The text to rate")
    async def sentiment(self, interaction: discord.Interaction, text: Text) -> None:
        await self.run(interaction, "sentiment", SentimentRequest(text))

    @app_commands.command(description="Sort a text into your own labels")
    @app_commands.describe(
        text="The text",
        labels="2 to 10 labels, separated by commas",
        multi_label="Labels may apply together",
    )
    async def classify(
        self,
        interaction: discord.Interaction,
        text: Text,
        labels: app_commands.Range[str, 3, 1000],
        multi_label: bool = False,
    ) -> None:
        request = ClassifyRequest(text, parse_labels(labels), multi_label)
        await self.run(interaction, "classify", request)

    @app_commands.command(description="Talk to the chat model")
    @app_commands.describe(message="What to say", temperature="0 answers the same way each time")
    async def chat(
        self,
        interaction: discord.Interaction,
        message: Text,
        temperature: app_commands.Range[float, 0.0, 2.0] = 0.7,
    ) -> None:
        request = ChatRequest(message, temperature=temperature, seed=interaction.id % 2**31)
        await self.run(interaction, "chat", request)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Tasks(bot))
