"""Reroll, Vary, Upscale and Delete under every generated image, working across restarts.

The buttons carry a key in their custom id; the request behind it is kept in SQLite
(``bot/image_requests.py``). Vary draws one image again from the image it is under, with
the same prompt and a new seed, a little (subtle) or a lot (strong), as Midjourney's
V buttons do; Upscale makes it 2x or 4x larger (the upscale task), guided by its prompt.
Each press is the presser's own request, with their quota. ``bot/cogs/images.py``
registers them with the bot.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
from typing import TYPE_CHECKING, Any

import discord

from bot.commands import WITHHELD, caller_of, run_task
from bot.seeing import attached, download, is_image
from handlers.base import InvalidInput
from handlers.imagine import ImagineRequest, parse_size
from handlers.upscale import UpscaleRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)

LABELS = {"reroll": "Reroll", "subtle": "Vary (subtle)", "strong": "Vary (strong)",
          "up2": "Upscale 2x", "up4": "Upscale 4x", "delete": "Delete"}  # fmt: skip
EACH = {"subtle": "Subtle", "strong": "Strong", "up2": "2x", "up4": "4x"}
"""A per-image button's label, numbered, when the message holds several images."""
ROWS = {"subtle": 1, "strong": 2, "up2": 3, "up4": 4}
"""Where each image's buttons go when there are several: one row per action."""
STYLES = {
    "reroll": discord.ButtonStyle.primary,
    "subtle": discord.ButtonStyle.secondary,
    "strong": discord.ButtonStyle.secondary,
    "up2": discord.ButtonStyle.success,
    "up4": discord.ButtonStyle.success,
    "delete": discord.ButtonStyle.danger,
}
FACTORS = {"up2": 2, "up4": 4}
STRENGTHS = {"subtle": 0.35, "strong": 0.75}
"""How far each Vary button moves from the image: a subtle one keeps its composition and
most details, a strong one keeps little more than its layout and colours."""


class ImageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"img:(?P<action>reroll|subtle|strong|vary|up2|up4|delete):(?P<key>[0-9a-f]{32})"
    r"(?::(?P<index>[0-9]))?",
):
    def __init__(self, action: str, key: str, index: int | None = None) -> None:
        # Vary and Upscale buttons for each image of the message, numbered.
        label = LABELS[action] if index is None else f"{EACH[action]} {index + 1}"
        suffix = "" if index is None else f":{index}"
        super().__init__(
            discord.ui.Button(
                label=label,
                style=STYLES[action],
                custom_id=f"img:{action}:{key}{suffix}",
                row=None if index is None else ROWS[action],
            )
        )
        self.action = action
        self.key = key
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ImageButton:
        index = match["index"]
        action = "strong" if match["action"] == "vary" else match["action"]  # posted before Vary
        return cls(action, match["key"], None if index is None else int(index))

    async def callback(self, interaction: Interaction) -> None:
        bot = interaction.client
        try:
            if self.action == "delete":
                await self._delete(interaction)
                return
            message = interaction.message
            spoiler = message is not None and any(a.is_spoiler() for a in message.attachments)
            if self.action in FACTORS:
                await self._upscale(interaction, spoiler)
                return
            source = None if self.action == "reroll" else self._source(interaction, "imagine")

            async def read() -> ImagineRequest:
                request, _ = await bot.image_requests.get(self.key)
                request = dataclasses.replace(request, seed=None, count=1)
                if source is None:
                    return request
                return await self._varied(interaction, request, source)

            await run_task(
                interaction, "imagine", read=read, final_view=image_buttons, spoiler=spoiler
            )
        except Exception as exc:  # a button has no command tree to report it
            await bot.report_error(interaction, exc)

    async def _upscale(self, interaction: Interaction, spoiler: bool) -> None:
        """The image this button is under, larger, guided by the prompt that drew it."""
        source = self._source(interaction, "upscale")

        async def read() -> UpscaleRequest:
            request, _ = await interaction.client.image_requests.get(self.key)
            (data,) = await download(
                [attached(source.id, source)], interaction.client.settings.imagine.max_image_bytes
            )
            return UpscaleRequest(image=data, factor=FACTORS[self.action], prompt=request.prompt)

        await run_task(interaction, "upscale", read=read, spoiler=spoiler)

    def _source(self, interaction: Interaction, task: str) -> discord.Attachment:
        """The image this button is under; refused (and recorded) at once when it is
        gone or is the notice of an image the safety filter withheld."""
        message = interaction.message
        files = [a for a in message.attachments if is_image(a)] if message is not None else []
        index = self.index or 0
        try:
            if index >= len(files):
                raise InvalidInput("image", "is no longer on this message")
            if files[index].filename.removeprefix("SPOILER_").startswith(WITHHELD):
                raise InvalidInput("image", "was withheld by the safety filter; pick another")
        except InvalidInput as exc:
            interaction.client.invoker.record_refusal(task, caller_of(interaction), exc)
            raise
        return files[index]

    async def _varied(
        self, interaction: Interaction, request: ImagineRequest, image: discord.Attachment
    ) -> ImagineRequest:
        """The stored request, drawn again from the image this button is under."""
        (data,) = await download(
            [attached(image.id, image)], interaction.client.settings.imagine.max_image_bytes
        )
        size = f"{image.width}x{image.height}" if image.width and image.height else None
        return dataclasses.replace(
            request, image=data, strength=STRENGTHS[self.action], size=size or request.size
        )

    async def _delete(self, interaction: Interaction) -> None:
        """The member who asked, the bot's owners, or whoever may manage messages in this
        channel (not just somewhere in the server)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        _, owner = await interaction.client.image_requests.get(self.key)
        user = str(interaction.user.id)
        allowed = (
            user == owner
            or user in interaction.client.settings.owner_ids
            or interaction.permissions.manage_messages
        )
        if not allowed or interaction.message is None:
            await interaction.followup.send(
                "Only the member who asked, or a moderator, can delete this.", ephemeral=True
            )
            return
        await interaction.message.delete()
        await interaction.followup.send("Deleted.", ephemeral=True)


async def image_buttons(
    interaction: Interaction, request: ImagineRequest
) -> discord.ui.View | None:
    """Reroll and Delete, and Vary and Upscale buttons for each image (Upscale only where
    upscaling is allowed and its result fits the task's size limit); their request is
    stored first, so that a button never points at nothing, with the model it is drawn by
    named, so that Reroll and Vary keep it whatever the server's default becomes. Without
    the database the images still come, buttonless."""
    bot = interaction.client
    drawing = bot.executor.tasks["imagine"]
    model = bot.invoker.image_model(interaction.guild_id, request.model)
    request = dataclasses.replace(request, model=model or drawing.default_name)  # type: ignore[attr-defined]
    try:
        key = await bot.image_requests.save(request, interaction.user.id, interaction.guild_id)
    except sqlite3.Error as exc:
        log.warning("cannot store an image request, so no buttons: %s", exc)
        return None
    actions = ["subtle", "strong"]
    if bot.invoker.allows("upscale", caller_of(interaction)):
        actions += upscales(bot, request)
    view = discord.ui.View(timeout=None)
    view.add_item(ImageButton("reroll", key))
    if request.count == 1:
        for action in actions:
            view.add_item(ImageButton(action, key))
    else:
        for action in actions:
            for index in range(request.count):
                view.add_item(ImageButton(action, key, index))
    view.add_item(ImageButton("delete", key))
    return view


def upscales(bot: AssistantBot, request: ImagineRequest) -> list[str]:
    """The Upscale buttons whose result fits the upscale task's limit; both when the
    image's size is not known yet (the press then says if one does not fit)."""
    task = bot.executor.tasks.get("upscale")
    if task is None:
        return []
    native = bot.executor.tasks["imagine"].native_for(request.model)  # type: ignore[attr-defined]
    side = max(parse_size(request.size)) if request.size else native
    return [
        action
        for action, factor in FACTORS.items()
        if side is None or side * factor <= task.max_side  # type: ignore[attr-defined]
    ]
