"""Slash commands for the seven tasks: thin adapters from Discord options to handler requests."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.calls import VoiceUnavailable, speech_render
from bot.commands import Text, caller_of, image_model_choices, run_task, voice_choices
from bot.drawing import from_picture, start_picture
from bot.image_buttons import image_buttons
from bot.localization import tr
from bot.reading import material_source, message_text, summarize_source
from handlers.base import InvalidInput
from handlers.classify import ClassifyRequest, parse_labels
from handlers.imagine import ImagineRequest
from handlers.languages import resolve_language, search_languages
from handlers.sentiment import SentimentRequest
from handlers.speak import SpeakRequest
from handlers.summarize import SummarizeRequest
from handlers.translate import TranslateRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)


def language_choices(
    current: str, detect: bool, locale: str | None = None
) -> list[app_commands.Choice[str]]:
    """Languages matching what the member typed; "detect" offered in their language (or
    English, which they may have typed too)."""
    choices = [
        app_commands.Choice(name=f"{language.name} ({language.code})", value=language.code)
        for language in search_languages(current)
    ]
    detect_name = tr("Detect automatically", locale)
    typed = current.casefold()
    if detect and any(
        n.casefold().startswith(typed) for n in (detect_name, "detect automatically")
    ):
        choices.insert(0, app_commands.Choice(name=detect_name, value="auto"))
    return choices[:25]


def source_hint(interaction: Interaction, target: str) -> str | None:
    """The language a short text is most likely in, when detection leaves it unclear: the
    member's own, unless that is the target (then the text is someone else's), else the
    server's."""
    try:
        wanted = resolve_language(target, "to")
    except InvalidInput:
        return None  # validation names the bad target
    for locale in (interaction.locale, interaction.guild_locale):
        if locale is None:
            continue
        try:
            if resolve_language(str(locale), "hint") != wanted:
                return str(locale)
        except InvalidInput:
            continue
    return None


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
            self.bot.add_menu(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.remove_menu(menu)

    async def summarize_message(self, interaction: Interaction, message: discord.Message) -> None:
        """The message, and the documents attached to it."""
        most = self.bot.settings.summarize.max_chars

        async def read() -> SummarizeRequest:
            return SummarizeRequest(await message_text(message, most))

        await run_task(interaction, "summarize", read=read)

    async def translate_message(self, interaction: Interaction, message: discord.Message) -> None:
        """The message and its documents, into the language of the member's Discord client."""
        target = str(interaction.locale)
        hint = source_hint(interaction, target)
        most = self.bot.settings.max_text_chars

        async def read() -> TranslateRequest:
            return TranslateRequest(await message_text(message, most), target, hint=hint)

        await run_task(interaction, "translate", read=read)

    async def speak_message(self, interaction: Interaction, message: discord.Message) -> None:
        await run_task(interaction, "speak", SpeakRequest(message.content))

    @app_commands.command(description="Summarize a text, a file or the channel's last messages")
    @app_commands.describe(
        text="The text to summarize",
        messages="Summarize this many recent messages of the channel (a study-group recap)",
        link="Summarize the message at this link",
        file="Summarize a document (PDF, Word, slides, Markdown, HTML or text)",
        length="How long the summary should be",
    )
    @app_commands.choices(
        length=[app_commands.Choice(name=n, value=n) for n in ("short", "medium", "long")]
    )
    async def summarize(
        self,
        interaction: Interaction,
        text: Text | None = None,
        messages: app_commands.Range[int, 1, 100] | None = None,
        link: str | None = None,
        file: discord.Attachment | None = None,
        length: str = "medium",
    ) -> None:
        try:
            source = summarize_source(
                interaction, text, messages, link, file, self.bot.settings.read_messages,
                self.bot.settings.summarize.max_chars,
            )  # fmt: skip
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("summarize", caller_of(interaction), exc)
            raise

        async def read() -> SummarizeRequest:
            return SummarizeRequest(await source(), length)

        await run_task(interaction, "summarize", read=read)

    @app_commands.command(description="Translate a text or a document into another language")
    @app_commands.describe(
        text="The text",
        to="Target language (default: your Discord language)",
        source="Source (default: detect)",
        file="A document to translate (PDF, Word, slides, Markdown, HTML or text)",
    )
    @app_commands.rename(source="from")
    async def translate(
        self,
        interaction: Interaction,
        text: Text | None = None,
        to: str | None = None,
        source: str = "auto",
        file: discord.Attachment | None = None,
    ) -> None:
        target = to or str(interaction.locale)
        hint = source_hint(interaction, target)
        if text is not None and file is None:
            await run_task(interaction, "translate", TranslateRequest(text, target, source, hint))
            return
        try:
            if text is not None or file is None:
                raise InvalidInput("text", "give either a text or a document")
            settings = self.bot.settings
            document = material_source(
                interaction, None, file, settings.read_messages, settings.max_text_chars
            )
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("translate", caller_of(interaction), exc)
            raise

        async def read() -> TranslateRequest:
            return TranslateRequest(await document(), target, source, hint)

        await run_task(interaction, "translate", read=read)

    @translate.autocomplete("to")
    async def _targets(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return language_choices(current, detect=False)

    @translate.autocomplete("source")
    async def _sources(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return language_choices(current, detect=True, locale=interaction.locale.value)

    @app_commands.command(description="Generate images from a prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid",
        steps="Denoising steps (more: slower, finer)",
        guidance="How closely to follow the prompt",
        seed="Reuse a seed to reproduce an image",
        size="Image size",
        count="How many images",
        image="A picture to start from (its shape picks the size)",
        strength="How far to move from the picture: near 0 keeps it, 1 all but ignores it",
        model="The image model (each has its own speed, sizes and defaults)",
    )
    async def imagine(
        self,
        interaction: Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        negative: app_commands.Range[str, 0, 1000] = "",
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        size: str | None = None,
        count: app_commands.Range[int, 1, 4] = 1,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
        model: str | None = None,
    ) -> None:
        model = self.bot.invoker.image_model(interaction.guild_id, model)
        request = ImagineRequest(prompt, negative, steps, guidance, seed, size, count, model=model)
        if image is None:
            if strength is not None:
                request = dataclasses.replace(request, strength=strength)  # refused, named
            await run_task(interaction, "imagine", request, final_view=image_buttons)
            return
        bot = self.bot
        caller = caller_of(interaction)
        max_bytes = bot.settings.imagine.max_image_bytes
        try:
            picture = start_picture(image, interaction.id, max_bytes, caller.age_restricted)
        except InvalidInput as exc:
            bot.invoker.record_refusal("imagine", caller, exc)
            raise
        native = bot.executor.tasks["imagine"].native_for(model)  # type: ignore[attr-defined]
        wanted = dataclasses.replace(request, strength=strength)

        async def read() -> ImagineRequest:
            return await from_picture(wanted, picture, native, max_bytes)

        await run_task(
            interaction, "imagine", read=read, final_view=image_buttons,
            spoiler=picture.spoiler,
        )  # fmt: skip

    @imagine.autocomplete("size")
    async def _sizes(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """The sizes of the model picked so far (or of this server's default)."""
        model = self.bot.invoker.image_model(
            interaction.guild_id, getattr(interaction.namespace, "model", None)
        )
        sizes = self.bot.executor.tasks["imagine"].size_choices(model) or []
        return [app_commands.Choice(name=s, value=s) for s in sizes if current in s][:25]

    @imagine.autocomplete("model")
    async def _models(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return image_model_choices(self.bot, current)

    @app_commands.command(description="Read a text aloud")
    @app_commands.describe(
        text="What to say",
        voice="Voice",
        language="Language code",
        where="An audio file, or said in the call (default: the call, when we are both in it)",
    )
    async def speak(
        self,
        interaction: Interaction,
        text: app_commands.Range[str, 1, 2000],
        voice: str | None = None,
        language: str = "en",
        where: Literal["file", "call"] | None = None,
    ) -> None:
        if voice is None and (guild := self.bot.settings_for(interaction)) is not None:
            voice = guild.member_voices.get(interaction.user.id)  # /voice myvoice
        calls = self.bot.calls
        playback = calls.with_member(interaction.guild_id, interaction.user)
        if where is None:
            where = "call" if playback is not None else "file"
        request = SpeakRequest(text, voice, language, for_call=where == "call")
        if where == "file":
            await run_task(interaction, "speak", request)
            return
        if playback is None:
            error = VoiceUnavailable("join my voice channel (or `/voice join` yours) first")
            self.bot.invoker.record_refusal("speak", caller_of(interaction), error)
            raise error
        channel = playback.voice.channel.mention  # type: ignore[attr-defined]
        member = interaction.user.id
        await run_task(
            interaction, "speak", request, render_result=speech_render(channel),
            then=lambda handle: calls.say(playback, member, handle),
        )  # fmt: skip

    @speak.autocomplete("voice")
    async def _voices(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return voice_choices(self.bot, current)

    @speak.autocomplete("language")
    async def _speech_languages(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        codes = self.bot.executor.tasks["speak"].languages()
        return [app_commands.Choice(name=c, value=c) for c in codes if current in c][:25]

    @app_commands.command(description="Is a text positive or negative?")
    @app_commands.describe(text="The text to rate")
    async def sentiment(self, interaction: Interaction, text: Text) -> None:
        await run_task(interaction, "sentiment", SentimentRequest(text))

    @app_commands.command(description="Sort a text into your own labels")
    @app_commands.describe(
        text="The text",
        labels="2 to 10 labels, separated by commas",
        multi_label="Labels may apply together",
    )
    async def classify(
        self,
        interaction: Interaction,
        text: Text,
        labels: app_commands.Range[str, 3, 1000],
        multi_label: bool = False,
    ) -> None:
        request = ClassifyRequest(text, parse_labels(labels), multi_label)
        await run_task(interaction, "classify", request)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Tasks(bot))
