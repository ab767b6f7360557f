"""Hearing: /transcribe, the Transcribe menu on a message, and auto-transcribe in the
channels a server chose, whose transcripts carry a button for their speaker to have them
transcribed again in another language. (Voice messages said to the bot are conversations: see
``conversations.py``.)"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import caller_of, place_caller, render, run_task
from bot.delivery import MessagePlace
from bot.hearing import check_sound, is_voice_message, read_sound, sound_of
from bot.localization import tr
from bot.reading import MESSAGE_LINK, UNREADABLE, Readable, check_here, check_read_access
from handlers.base import InvalidInput
from handlers.languages import search_languages
from handlers.transcribe import TranscribeRequest, whisper_language, whisper_languages

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)


class AnotherLanguage(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"hear:lang:(?P<speaker>[0-9]{1,20}):(?P<message>[0-9]{1,20})",
):
    """Under an automatic transcript: its speaker names the language they spoke, when the
    one detected was wrong. Works across restarts (the ids are in the button)."""

    def __init__(self, speaker: int, message: int, locale: str | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=tr("Another language", locale),
                emoji="🌐",
                style=discord.ButtonStyle.secondary,
                custom_id=f"hear:lang:{speaker}:{message}",
            )
        )
        self.speaker = speaker
        self.message = message

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> AnotherLanguage:
        return cls(int(match["speaker"]), int(match["message"]))

    async def callback(self, interaction: Interaction) -> None:
        locale = interaction.locale.value
        if interaction.user.id != self.speaker:
            await interaction.response.send_message(
                tr("Only the member who spoke can choose another language.", locale),
                ephemeral=True,
            )
            return
        await interaction.response.send_modal(LanguageForm(self.message, locale))


class LanguageForm(discord.ui.Modal):
    def __init__(self, message_id: int, locale: str | None) -> None:
        super().__init__(title=tr("Transcribe in another language", locale), timeout=600)
        self.message_id = message_id
        self.language: discord.ui.TextInput[LanguageForm] = discord.ui.TextInput(
            label=tr("Language", locale),
            placeholder="German, de, 日本語",
            max_length=64,
            custom_id="language",
        )
        self.add_item(self.language)

    async def on_submit(self, interaction: Interaction) -> None:  # type: ignore[override]
        bot = interaction.client
        try:
            try:
                language = whisper_language(self.language.value)
            except InvalidInput as exc:
                bot.invoker.record_refusal("transcribe", caller_of(interaction), exc)
                raise

            async def read() -> TranscribeRequest:
                await check_here(interaction, "message")
                channel = interaction.channel
                if not isinstance(channel, discord.abc.Messageable):
                    raise InvalidInput("message", UNREADABLE)
                try:
                    message = await channel.fetch_message(self.message_id)
                except discord.HTTPException:
                    raise InvalidInput("message", "was deleted") from None
                attachment = sound_of(message)
                if attachment is None:
                    raise InvalidInput("message", "has no voice message, audio or video file")
                max_bytes = bot.settings.transcribe.max_bytes
                return await read_sound(attachment, max_bytes, language)

            await run_task(interaction, "transcribe", read=read)
        except Exception as exc:  # a form has no command tree to report it
            await bot.report_error(interaction, exc)


class Hearing(commands.Cog):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Transcribe", callback=self.transcribe_message)

    async def cog_load(self) -> None:
        self.bot.add_menu(self.menu)
        self.bot.add_dynamic_items(AnotherLanguage)

    async def cog_unload(self) -> None:
        self.bot.remove_menu(self.menu)
        self.bot.remove_dynamic_items(AnotherLanguage)

    @property
    def max_bytes(self) -> int:
        return self.bot.settings.transcribe.max_bytes

    @app_commands.command(description="Write down what is said in an audio or video file")
    @app_commands.describe(
        file="A voice message, audio or video file",
        link="Or a link to a message with one, in this server",
        language="The language spoken (default: detected)",
        timestamps="A line for each part, with its times",
    )
    async def transcribe(
        self,
        interaction: Interaction,
        file: discord.Attachment | None = None,
        link: str | None = None,
        language: str | None = None,
        timestamps: bool = False,
    ) -> None:
        try:
            if (file is None) == (link is None):
                raise InvalidInput("file", "give a file, or a link to a message with one")
            if file is not None:
                check_sound(file, self.max_bytes)
            elif not self.bot.settings.read_messages:
                raise InvalidInput(
                    "link",
                    "reading messages is off on this bot (its admin can enable BOT_READ_MESSAGES)",
                )
            if language is not None:
                language = whisper_language(language)
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("transcribe", caller_of(interaction), exc)
            raise

        async def read() -> TranscribeRequest:
            attachment = file or await self._linked_sound(interaction, link or "")
            return await read_sound(attachment, self.max_bytes, language, timestamps)

        await run_task(interaction, "transcribe", read=read)

    @transcribe.autocomplete("language")
    async def _languages(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        heard = set(whisper_languages())
        return [
            app_commands.Choice(name=f"{language.name} ({language.code})", value=language.code)
            for language in search_languages(current, limit=100)
            if language.code in heard
        ][:25]

    async def transcribe_message(self, interaction: Interaction, message: discord.Message) -> None:
        """The menu on a message: its voice message or audio file, in the language detected."""
        attachment = sound_of(message)
        try:
            if attachment is None:
                raise InvalidInput("message", "has no voice message, audio or video file")
            check_sound(attachment, self.max_bytes)
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("transcribe", caller_of(interaction), exc)
            raise

        async def read() -> TranscribeRequest:
            await check_here(interaction, "message")
            return await read_sound(attachment, self.max_bytes)

        await run_task(interaction, "transcribe", read=read)

    async def _linked_sound(self, interaction: Interaction, link: str) -> discord.Attachment:
        """The sound of the message at ``link``, read with the member's own permissions."""
        match = MESSAGE_LINK.fullmatch(link.strip())
        guild = interaction.guild
        if match is None or guild is None or int(match[1]) != guild.id:
            raise InvalidInput("link", "must be a link to a message in this server")
        place = guild.get_channel_or_thread(int(match[2]))
        if not isinstance(place, Readable) or not isinstance(place, discord.abc.Messageable):
            raise InvalidInput("link", UNREADABLE)
        await check_read_access(interaction.user, place, "link")
        try:
            message = await place.fetch_message(int(match[3]))
        except discord.HTTPException:
            raise InvalidInput("link", UNREADABLE) from None
        attachment = sound_of(message)
        if attachment is None:
            raise InvalidInput("link", "points to a message with no voice message or audio file")
        return attachment

    # Auto-transcribe

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not await self._auto_transcribed(message):
            return
        try:
            await self._auto_transcribe(message)
        except Exception as exc:  # nobody asked: a refusal (a quota, a cooldown) stays quiet
            log.info("no automatic transcript of message %s: %s", message.id, exc)

    async def _auto_transcribed(self, message: discord.Message) -> bool:
        """A member's voice message in a channel (or a thread of one) the server chose,
        that is not said to the bot (a conversation answers those, transcript included),
        in a server whose replies are public."""
        if message.author.bot or message.guild is None or not is_voice_message(message):
            return False
        guild = self.bot.guild_settings.get(message.guild.id)
        channel = message.channel
        if guild.ephemeral or not {channel.id, getattr(channel, "parent_id", None)} & set(
            guild.auto_transcribe_channels
        ):
            return False
        me = self.bot.user
        if me is None or (isinstance(channel, discord.Thread) and channel.owner_id == me.id):
            return False
        reference = message.reference
        if reference is None or reference.message_id is None:
            return True
        answers = await self.bot.conversations.store.answers_among([reference.message_id])
        return reference.message_id not in answers

    async def _auto_transcribe(self, message: discord.Message) -> None:
        assert message.guild is not None
        attachment = sound_of(message)
        assert attachment is not None
        caller = place_caller(
            message.author, message.channel, message.channel.id, message.guild.id, False
        )
        with self.bot.invoker.admit("transcribe", caller) as admission:
            request = await read_sound(attachment, self.max_bytes)
            handle = admission.submit(request)
        locale = message.guild.preferred_locale.value
        place = MessagePlace(message.channel, message.author, message, locale=locale)
        again = discord.ui.View(timeout=None)
        again.add_item(AnotherLanguage(message.author.id, message.id, locale))
        self.bot.follow(handle, place, render, message.author.id, again)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Hearing(bot))
