"""Reroll, Variations and Delete under every generated image, working across restarts.

The buttons carry a key in their custom id; the request behind it is kept in SQLite
(``bot/image_requests.py``). ``bot/cogs/images.py`` registers them with the bot.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
from typing import TYPE_CHECKING, Any

import discord

from bot.commands import run_task
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)

LABELS = {"reroll": "Reroll", "vary": "Variations", "delete": "Delete"}
STYLES = {"reroll": discord.ButtonStyle.primary, "vary": discord.ButtonStyle.secondary,
          "delete": discord.ButtonStyle.danger}  # fmt: skip


class ImageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"img:(?P<action>reroll|vary|delete):(?P<key>[0-9a-f]{32})",
):
    def __init__(self, action: str, key: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=LABELS[action], style=STYLES[action], custom_id=f"img:{action}:{key}"
            )
        )
        self.action = action
        self.key = key

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ImageButton:
        return cls(match["action"], match["key"])

    async def callback(self, interaction: Interaction) -> None:
        bot = interaction.client
        try:
            if self.action == "delete":
                await self._delete(interaction)
                return
            count = 1 if self.action == "reroll" else bot.settings.imagine.max_count

            async def read() -> ImagineRequest:
                request, _ = await bot.image_requests.get(self.key)
                return dataclasses.replace(request, seed=None, count=count)

            await run_task(interaction, "imagine", read=read, final_view=image_buttons)
        except Exception as exc:  # a button has no command tree to report it
            await bot.report_error(interaction, exc)

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
    """Reroll, Variations and Delete; their request is stored first, so that a button
    never points at nothing. Without the database the images still come, buttonless."""
    try:
        key = await interaction.client.image_requests.save(
            request, interaction.user.id, interaction.guild_id
        )
    except sqlite3.Error as exc:
        log.warning("cannot store an image request, so no buttons: %s", exc)
        return None
    view = discord.ui.View(timeout=None)
    for action in LABELS:
        view.add_item(ImageButton(action, key))
    return view
