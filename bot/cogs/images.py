"""The image buttons (``bot/image_buttons.py``), registered with the bot so that they work on
every image posted, across restarts; and the Imagine from this menu, which draws from an
image of a message with a prompt asked for in a form."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands import caller_of, run_task
from bot.drawing import from_picture
from bot.image_buttons import ImageButton, image_buttons
from bot.localization import tr
from bot.reading import check_here
from bot.seeing import check_images, pictures_of
from handlers.base import InvalidInput
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]


def parse_strength(text: str) -> float | None:
    """A strength as typed in the form ("0.6", "0,6"); None when left empty."""
    text = text.strip().replace(",", ".")
    if not text:
        return None
    try:
        strength = float(text)
    except ValueError:
        raise InvalidInput("strength", f"{text!r} is not a number from 0.05 to 1") from None
    if not math.isfinite(strength) or not 0.05 <= strength <= 1:
        raise InvalidInput("strength", "must be a number from 0.05 to 1")
    return strength


class DrawFromForm(discord.ui.Modal):
    """What to draw from the image: the prompt, and how far to move from it."""

    def __init__(self, message: discord.Message, locale: str | None) -> None:
        super().__init__(title=tr("Imagine from this", locale), timeout=600)
        self.message = message
        self.prompt: discord.ui.TextInput[DrawFromForm] = discord.ui.TextInput(
            label=tr("What to draw", locale), max_length=1000, custom_id="prompt"
        )
        self.strength: discord.ui.TextInput[DrawFromForm] = discord.ui.TextInput(
            label=tr("Strength (0.05 to 1, empty: the default)", locale),
            required=False,
            max_length=8,
            custom_id="strength",
        )
        self.add_item(self.prompt)
        self.add_item(self.strength)

    async def on_submit(self, interaction: Interaction) -> None:  # type: ignore[override]
        bot = interaction.client
        try:
            caller = caller_of(interaction)
            max_bytes = bot.settings.imagine.max_image_bytes
            try:
                strength = parse_strength(self.strength.value)
                pictures = pictures_of(self.message, bot.http)
                if not pictures:
                    raise InvalidInput("message", "has no image")
                picture = pictures[0]  # the first image of the message
                check_images([picture], 1, max_bytes, caller.age_restricted)
            except InvalidInput as exc:
                bot.invoker.record_refusal("imagine", caller, exc)
                raise
            model = bot.invoker.image_model(interaction.guild_id, None)
            request = ImagineRequest(self.prompt.value, strength=strength, model=model)
            native = bot.executor.tasks["imagine"].native_for(model)  # type: ignore[attr-defined]

            async def read() -> ImagineRequest:
                await check_here(interaction, "message")
                return await from_picture(request, picture, native, max_bytes)

            await run_task(
                interaction, "imagine", read=read, final_view=image_buttons,
                spoiler=picture.spoiler,
            )  # fmt: skip
        except Exception as exc:  # a form has no command tree to report it
            await bot.report_error(interaction, exc)


class Images(commands.Cog):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(
            name="Imagine from this", callback=self.draw_from, extras={"task": "imagine"}
        )

    async def cog_load(self) -> None:
        self.bot.add_menu(self.menu)
        self.bot.add_dynamic_items(ImageButton)

    async def cog_unload(self) -> None:
        self.bot.remove_menu(self.menu)
        self.bot.remove_dynamic_items(ImageButton)

    async def draw_from(self, interaction: Interaction, message: discord.Message) -> None:
        """The form first: the message's image is read once the member says what to draw."""
        if not pictures_of(message, self.bot.http):
            error = InvalidInput("message", "has no image")
            self.bot.invoker.record_refusal("imagine", caller_of(interaction), error)
            raise error
        await interaction.response.send_modal(DrawFromForm(message, interaction.locale.value))


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Images(bot))
