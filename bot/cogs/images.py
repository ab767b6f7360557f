"""Reroll, Variations and Delete under every generated image, working across restarts.

The buttons carry a key in their custom id; the request behind it is kept in SQLite.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import discord

from bot.usage import UsageLog
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

LABELS = {"reroll": "Reroll", "vary": "Variations", "delete": "Delete"}
STYLES = {"reroll": discord.ButtonStyle.primary, "vary": discord.ButtonStyle.secondary,
          "delete": discord.ButtonStyle.danger}  # fmt: skip


class ImageRequests:
    """The stored options of posted images, by key."""

    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage

    async def save(self, request: ImagineRequest, user_id: int, guild_id: int | None) -> str:
        key = uuid.uuid4().hex
        await self.usage.write_now(
            "INSERT INTO image_requests (id, guild_id, user_id, request, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, guild_id, str(user_id), json.dumps(dataclasses.asdict(request)), time.time()),
        )
        return key

    async def get(self, key: str) -> tuple[ImagineRequest, str] | None:
        rows = await self.usage.query(
            "SELECT request, user_id FROM image_requests WHERE id = ?", (key,)
        )
        if not rows:
            return None
        return ImagineRequest(**json.loads(rows[0]["request"])), rows[0]["user_id"]


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
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ImageButton:
        return cls(match["action"], match["key"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: AssistantBot = interaction.client  # type: ignore[assignment]
        stored = await bot.image_requests.get(self.key)
        if stored is None:
            await interaction.response.send_message(
                "This image is too old for its buttons.", ephemeral=True
            )
            return
        request, owner = stored
        if self.action == "delete":
            await self._delete(interaction, bot, owner)
            return
        count = 1 if self.action == "reroll" else bot.settings.imagine.max_count
        again = dataclasses.replace(request, seed=None, count=count)
        tasks = bot.get_cog("Tasks")
        await tasks.run(interaction, "imagine", again)  # type: ignore[union-attr]

    @staticmethod
    async def _delete(interaction: discord.Interaction, bot: AssistantBot, owner: str) -> None:
        user = interaction.user
        allowed = (
            str(user.id) == owner
            or str(user.id) in bot.settings.owner_ids
            or (isinstance(user, discord.Member) and user.guild_permissions.manage_messages)
        )
        if not allowed or interaction.message is None:
            await interaction.response.send_message(
                "Only the member who asked, or a moderator, can delete this.", ephemeral=True
            )
            return
        await interaction.message.delete()
        await interaction.response.send_message("Deleted.", ephemeral=True)


def image_buttons(key: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in LABELS:
        view.add_item(ImageButton(action, key))
    return view


async def setup(bot: AssistantBot) -> None:
    bot.add_dynamic_items(ImageButton)


async def teardown(bot: AssistantBot) -> None:
    bot.remove_dynamic_items(ImageButton)
