"""Seeing: /describe and the Describe image menu on a message, whose descriptions carry an
Imagine this button that draws one with /imagine (as Midjourney's /describe offers)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import Text, caller_of, run_task
from bot.image_buttons import image_buttons
from bot.localization import tr
from bot.reading import check_here
from bot.seeing import check_images, images_of, read_images
from handlers.base import InvalidInput
from handlers.describe import DESCRIBE_EACH, DescribeRequest
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]


PROMPT_CHARS = 400
"""The start of a description that becomes a prompt: image models read little more (CLIP
stops at 77 tokens)."""


def prompt_from(description: str) -> str:
    """A description as an /imagine prompt: the model's words, without the bot's notes or
    alt-text lines, cut at a word near ``PROMPT_CHARS``."""
    lines = [line.strip() for line in description.splitlines()]
    kept = [
        line
        for line in lines
        if line and not line.startswith("-#") and not line.lower().startswith("alt text")
    ]
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
                raise InvalidInput("prompt", "this description has no words to draw from")
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
        self.menu = app_commands.ContextMenu(name="Describe image", callback=self.describe_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)
        self.bot.add_dynamic_items(ImagineThis)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(ImagineThis)

    def _limits(self) -> tuple[int, int]:
        describe = self.bot.settings.describe
        return describe.max_images, describe.max_bytes

    @app_commands.command(description="Describe an image, or ask a question about it")
    @app_commands.describe(
        image="The image", question="What to ask about it (default: describe it)"
    )
    async def describe(
        self, interaction: Interaction, image: discord.Attachment, question: Text | None = None
    ) -> None:
        try:
            check_images([image], *self._limits())
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("describe", caller_of(interaction), exc)
            raise

        async def read() -> DescribeRequest:
            return await read_images([image], *self._limits(), question or "")

        await run_task(interaction, "describe", read=read, final_view=imagine_this)

    async def describe_message(self, interaction: Interaction, message: discord.Message) -> None:
        """Each image of the message described, with a line of alt text for each."""
        images = images_of(message)
        try:
            if not images:
                raise InvalidInput("message", "has no image")
            check_images(images, *self._limits())
        except InvalidInput as exc:
            self.bot.invoker.record_refusal("describe", caller_of(interaction), exc)
            raise

        async def read() -> DescribeRequest:
            await check_here(interaction, "message")
            return await read_images(images, *self._limits(), DESCRIBE_EACH)

        await run_task(interaction, "describe", read=read, final_view=imagine_this)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Seeing(bot))
