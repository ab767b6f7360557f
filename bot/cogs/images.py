"""The image buttons (``bot/image_buttons.py``), registered with the bot so that they work on
every image posted, across restarts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.image_buttons import ImageButton

if TYPE_CHECKING:
    from bot.client import AssistantBot


async def setup(bot: AssistantBot) -> None:
    bot.add_dynamic_items(ImageButton)


async def teardown(bot: AssistantBot) -> None:
    bot.remove_dynamic_items(ImageButton)
