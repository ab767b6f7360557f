"""Reroll, Variations and Delete under every generated image, working across restarts.

The buttons carry a key in their custom id; the request behind it is kept in SQLite.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import discord

from bot.usage import UsageLog
from handlers.base import HandlerError
from handlers.imagine import ImagineRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

LABELS = {"reroll": "Reroll", "vary": "Variations", "delete": "Delete"}
STYLES = {"reroll": discord.ButtonStyle.primary, "vary": discord.ButtonStyle.secondary,
          "delete": discord.ButtonStyle.danger}  # fmt: skip


class ImageRequests:
    """The stored options of posted images, by key, for as long as their buttons work."""

    def __init__(self, usage: UsageLog, ttl_s: float) -> None:
        self.usage = usage
        self.ttl_s = ttl_s

    async def save(self, request: ImagineRequest, user_id: int, guild_id: int | None) -> str:
        key = uuid.uuid4().hex
        await self.usage.write_now(
            "INSERT INTO image_requests (id, guild_id, user_id, request, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, guild_id, str(user_id), json.dumps(dataclasses.asdict(request)),
             self.usage.clock()),
        )  # fmt: skip
        return key

    async def get(self, key: str) -> tuple[ImagineRequest, str]:
        """(request, owner's user id); ``HandlerError`` once the buttons have expired (the
        usage log's retention deletes the row soon after)."""
        rows = await self.usage.query(
            "SELECT request, user_id FROM image_requests WHERE id = ? AND created_at >= ?",
            (key, self.usage.clock() - self.ttl_s),
        )
        if not rows:
            hours = self.ttl_s / 3600
            raise HandlerError(
                f"this image is too old for its buttons (they work for {hours:g} hours)"
            )
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

            from bot.cogs.tasks import Tasks  # tasks imports this module for its buttons

            tasks = bot.get_cog("Tasks")
            assert isinstance(tasks, Tasks)
            await tasks.run(interaction, "imagine", read=read)
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


def image_buttons(key: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in LABELS:
        view.add_item(ImageButton(action, key))
    return view


async def setup(bot: AssistantBot) -> None:
    bot.add_dynamic_items(ImageButton)


async def teardown(bot: AssistantBot) -> None:
    bot.remove_dynamic_items(ImageButton)
