"""Seeing: /describe and the Describe image menu on a message, whose descriptions carry an
Imagine this button that draws one with /imagine (as Midjourney's /describe offers)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import Text, caller_of, run_task
from bot.image_buttons import image_buttons
from bot.localization import tr
from bot.reading import check_here
from bot.seeing import Picture, attached, check_images, is_image, pictures_of, read_images
from handlers.base import InvalidInput
from handlers.describe import DESCRIBE_EACH, DescribeRequest
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]


MAX_MENU_TOKENS = 1024
"""The most a menu's descriptions of several images may take together."""
PROMPT_CHARS = 400
"""The start of a description that becomes a prompt: image models read little more (CLIP
stops at 77 tokens)."""


_ALT_TEXT = re.compile(r"^\W*alt[\s-]*text\b", re.IGNORECASE)
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~<])")


def prompt_from(description: str) -> str:
    """A description as an /imagine prompt: the model's words, without the bot's notes,
    its *(...)* lines, alt-text lines or markdown escapes, cut at a word near
    ``PROMPT_CHARS``."""
    kept = []
    for line in description.splitlines():
        line = _ESCAPE.sub(r"\1", line).strip().strip("|")
        if not line or line.startswith("-#") or _ALT_TEXT.match(line):
            continue
        if line.startswith("*(") and line.endswith(")*"):
            continue
        kept.append(line)
    text = re.sub(r"\s+", " ", " ".join(kept)).strip()
    if len(text) <= PROMPT_CHARS:
        return text
    return text[: PROMPT_CHARS + 1].rsplit(" ", 1)[0]


class ImagineThis(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"seen:imagine"):
    """Under a description: /imagine with the description as its prompt. It reads the
    message it is under, so it keeps working across restarts with nothing stored."""

    def __init__(self, locale: str | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=tr("Imagine this", locale),
                emoji="🎨",
                style=discord.ButtonStyle.secondary,
                custom_id="seen:imagine",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ImagineThis:
        return cls()

    async def callback(self, interaction: Interaction) -> None:
        bot = interaction.client
        try:
            message = interaction.message
            prompt = prompt_from(message.content if message is not None else "")
            if not prompt:
                error = InvalidInput("prompt", "this description has no words to draw from")
                bot.invoker.record_refusal("imagine", caller_of(interaction), error)
                raise error
            request = ImagineRequest(prompt)
            await run_task(interaction, "imagine", request, final_view=image_buttons)
        except Exception as exc:  # a button has no command tree to report it
            await bot.report_error(interaction, exc)


async def imagine_this(interaction: Interaction, request: DescribeRequest) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ImagineThis(interaction.locale.value))
    return view


class Seeing(commands.Cog):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(
            name="Describe image", callback=self.describe_message, extras={"task": "describe"}
        )

    async def cog_load(self) -> None:
        self.bot.add_menu(self.menu)
        self.bot.add_dynamic_items(ImagineThis)

    async def cog_unload(self) -> None:
        self.bot.remove_menu(self.menu)
        self.bot.remove_dynamic_items(ImagineThis)

    def _check(self, interaction: Interaction, pictures: list[Picture]) -> None:
        """Refuse at once (and record it) what can never be described here."""
        describe = self.bot.settings.describe
        caller = caller_of(interaction)
        try:
            if not pictures:
                raise InvalidInput("message", "has no image")
            check_images(pictures, describe.max_images, describe.max_bytes, caller.age_restricted)
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("describe", caller, exc)
            raise

    async def _run(
        self,
        interaction: Interaction,
        pictures: list[Picture],
        read: Callable[[], Awaitable[DescribeRequest]],
    ) -> None:
        """Described (behind a spoiler when an image is one), with Imagine this under it
        where /imagine can be used."""
        spoiler = any(picture.spoiler for picture in pictures)
        offer = self.bot.invoker.allows("imagine", caller_of(interaction)) and not spoiler
        await run_task(
            interaction, "describe", read=read,
            spoiler=spoiler,
            final_view=imagine_this if offer else None,
        )  # fmt: skip

    @app_commands.command(description="Describe an image, or ask a question about it")
    @app_commands.describe(
        image="The image", question="What to ask about it (default: describe it)"
    )
    async def describe(
        self, interaction: Interaction, image: discord.Attachment, question: Text | None = None
    ) -> None:
        if not is_image(image):
            error = InvalidInput("image", "is not an image")
            self.bot.invoker.record_refusal("describe", caller_of(interaction), error)
            raise error
        pictures = [attached(interaction.id, image)]
        self._check(interaction, pictures)
        max_bytes = self.bot.settings.describe.max_bytes

        async def read() -> DescribeRequest:
            return await read_images(pictures, max_bytes, question or "")

        await self._run(interaction, pictures, read)

    async def describe_message(self, interaction: Interaction, message: discord.Message) -> None:
        """Each image of the message (attached, unfurled from a link, or forwarded)
        described, with a line of alt text for each."""
        pictures = pictures_of(message, self.bot.http)
        self._check(interaction, pictures)
        describe = self.bot.settings.describe
        tokens = min(describe.default_new_tokens * len(pictures), MAX_MENU_TOKENS)

        async def read() -> DescribeRequest:
            await check_here(interaction, "message")
            return await read_images(pictures, describe.max_bytes, DESCRIBE_EACH, tokens)

        await self._run(interaction, pictures, read)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Seeing(bot))
