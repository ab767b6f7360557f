"""Reroll, Vary and Delete under every generated image, working across restarts.

The buttons carry a key in their custom id; the request behind it is kept in SQLite
(``bot/image_requests.py``). Vary draws one image again from the image it is under, with
the same prompt and a new seed, a little (subtle) or a lot (strong), as Midjourney's
V buttons do. ``bot/cogs/images.py`` registers them with the bot.
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
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)

LABELS = {"reroll": "Reroll", "subtle": "Vary (subtle)", "strong": "Vary (strong)",
          "delete": "Delete"}  # fmt: skip
EACH = {"subtle": "Subtle", "strong": "Strong"}
"""A Vary button's label, numbered, when the message holds several images."""
STYLES = {
    "reroll": discord.ButtonStyle.primary,
    "subtle": discord.ButtonStyle.secondary,
    "strong": discord.ButtonStyle.secondary,
    "delete": discord.ButtonStyle.danger,
}
STRENGTHS = {"subtle": 0.35, "strong": 0.75}
"""How far each Vary button moves from the image: a subtle one keeps its composition and
most details, a strong one keeps little more than its layout and colours."""


class ImageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"img:(?P<action>reroll|subtle|strong|vary|delete):(?P<key>[0-9a-f]{32})"
    r"(?::(?P<index>[0-9]))?",
):
    def __init__(self, action: str, key: str, index: int | None = None) -> None:
        # One pair of Vary buttons for each image of the message, numbered.
        label = LABELS[action] if index is None else f"{EACH[action]} {index + 1}"
        suffix = "" if index is None else f":{index}"
        super().__init__(
            discord.ui.Button(
                label=label,
                style=STYLES[action],
                custom_id=f"img:{action}:{key}{suffix}",
                row=None if index is None else (1 if action == "subtle" else 2),
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
            source = None if self.action == "reroll" else self._source(interaction)

            async def read() -> ImagineRequest:
                request, _ = await bot.image_requests.get(self.key)
                request = dataclasses.replace(request, seed=None, count=1)
                if source is None:
                    return request
                return await self._varied(interaction, request, source)

            message = interaction.message
            spoiler = message is not None and any(a.is_spoiler() for a in message.attachments)
            await run_task(
                interaction, "imagine", read=read, final_view=image_buttons, spoiler=spoiler
            )
        except Exception as exc:  # a button has no command tree to report it
            await bot.report_error(interaction, exc)

    def _source(self, interaction: Interaction) -> discord.Attachment:
        """The image this Vary button is under; refused (and recorded) at once when it is
        gone or is the notice of an image the safety filter withheld."""
        message = interaction.message
        files = [a for a in message.attachments if is_image(a)] if message is not None else []
        index = self.index or 0
        try:
            if index >= len(files):
                raise InvalidInput("image", "is no longer on this message")
            if files[index].filename.removeprefix("SPOILER_").startswith(WITHHELD):
                raise InvalidInput("image", "was withheld by the safety filter; vary another")
        except InvalidInput as exc:
            interaction.client.invoker.record_refusal("imagine", caller_of(interaction), exc)
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
    """Reroll and Delete, and a pair of Vary buttons for each image; their request is
    stored first, so that a button never points at nothing. Without the database the images
    still come, buttonless."""
    try:
        key = await interaction.client.image_requests.save(
            request, interaction.user.id, interaction.guild_id
        )
    except sqlite3.Error as exc:
        log.warning("cannot store an image request, so no buttons: %s", exc)
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(ImageButton("reroll", key))
    if request.count == 1:
        view.add_item(ImageButton("subtle", key))
        view.add_item(ImageButton("strong", key))
    else:
        for action in ("subtle", "strong"):
            for index in range(request.count):
                view.add_item(ImageButton(action, key, index))
    view.add_item(ImageButton("delete", key))
    return view
