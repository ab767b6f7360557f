"""Per-guild settings: what each community allows, read through a cache, written in one place."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.usage import UsageLog

log = logging.getLogger(__name__)


class GuildSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled_commands: list[str] | None = None
    """Commands members may use; None allows every command."""
    allowed_channels: list[int] | None = None
    """Channels where commands work; None allows every channel."""
    ephemeral: bool = False
    """Reply so that only the member who asked sees the answer."""
    nsfw: Literal["age_restricted_only", "allow"] = "age_restricted_only"
    """Where /imagine may post: only in age-restricted channels, or anywhere."""
    quotas: dict[str, int] = Field(default_factory=dict)
    """Per-task daily limits per member that replace the bot-wide ones."""
    cooldowns: dict[str, float] = Field(default_factory=dict)
    """Per-task seconds between a member's commands that replace the bot-wide ones."""
    exempt_roles: list[int] = Field(default_factory=list)
    """Roles free of quotas and cooldowns."""


class GuildSettingsStore:
    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage
        self._cache: dict[int, GuildSettings] = {}

    async def get(self, guild_id: int) -> GuildSettings:
        """The guild's settings; defaults (uncached) while the database is unavailable."""
        cached = self._cache.get(guild_id)
        if cached is not None:
            return cached
        try:
            rows = await self.usage.query(
                "SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,)
            )
        except sqlite3.Error as exc:
            log.warning("guild settings unavailable (%s); using defaults for now", exc)
            return GuildSettings()
        settings = GuildSettings.model_validate_json(rows[0]["settings"]) if rows else None
        self._cache[guild_id] = settings or GuildSettings()
        return self._cache[guild_id]

    async def update(self, guild_id: int, **changes: Any) -> GuildSettings:
        """The one way settings change: validated, written, then cached."""
        current = await self.get(guild_id)
        updated = GuildSettings.model_validate({**current.model_dump(), **changes})
        await self.usage.write_now(
            "INSERT INTO guild_settings (guild_id, settings, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings, "
            "updated_at = excluded.updated_at",
            (guild_id, updated.model_dump_json(), self.usage.clock()),
        )
        self._cache[guild_id] = updated
        return updated
