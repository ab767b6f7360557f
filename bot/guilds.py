"""Per-guild settings: what each community allows, kept in memory, written in one place."""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bot.usage import UsageLog, UsageUnavailable

PERSONA_MAX_CHARS = 1000
"""Longest persona (system prompt) a server may set: it takes room from every conversation."""

Persona = Annotated[str, StringConstraints(min_length=1, max_length=PERSONA_MAX_CHARS)]


class GuildSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled_commands: list[str] | None = None
    """Commands members may use; None allows every command."""
    allowed_channels: list[int] | None = None
    """Channels where commands work; None allows every channel."""
    ephemeral: bool = False
    """Reply so that only the member who asked sees the answer, its progress and its errors;
    a result that outlives the reply comes by DM, never in the channel."""
    nsfw: Literal["age_restricted_only", "allow"] = "age_restricted_only"
    """Where /imagine may post: only in age-restricted channels, or anywhere."""
    quotas: dict[str, int] = Field(default_factory=dict)
    """Per-task daily limits per member that replace the bot-wide ones."""
    cooldowns: dict[str, float] = Field(default_factory=dict)
    """Per-task seconds between a member's commands that replace the bot-wide ones."""
    exempt_roles: list[int] = Field(default_factory=list)
    """Roles free of quotas and cooldowns."""
    persona: Persona | None = None
    """What the chat model is told before every conversation here; None uses
    BOT_CHAT__SYSTEM_PROMPT."""
    channel_personas: dict[int, Persona] = Field(default_factory=dict)
    """Personas for single channels (and their threads), over the server's."""
    chat_threads: bool = False
    """Every /chat opens a thread for its conversation."""

    def persona_for(self, channel_id: int | None, parent_id: int | None = None) -> str | None:
        """The persona of a channel, of the channel a thread is in, or of the server."""
        for place in (channel_id, parent_id):
            if place is not None and place in self.channel_personas:
                return self.channel_personas[place]
        return self.persona


class GuildSettingsStore:
    """Every guild's settings in memory, read once at start-up, so that an interaction learns
    its rules (and whether its reply is private) before it is acknowledged."""

    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage
        self._settings: dict[int, GuildSettings] = {}

    async def load(self) -> None:
        try:
            rows = await self.usage.query("SELECT guild_id, settings FROM guild_settings")
        except sqlite3.Error as exc:  # defaults could make a private server's replies public
            raise UsageUnavailable(f"cannot read the servers' settings: {exc}") from exc
        self._settings = {
            row["guild_id"]: GuildSettings.model_validate_json(row["settings"]) for row in rows
        }

    def get(self, guild_id: int) -> GuildSettings:
        return self._settings.get(guild_id) or GuildSettings()

    async def update(self, guild_id: int, **changes: Any) -> GuildSettings:
        """The one way settings change: validated, written, then kept."""
        updated = GuildSettings.model_validate({**self.get(guild_id).model_dump(), **changes})
        await self.usage.write_now(
            "INSERT INTO guild_settings (guild_id, settings, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings, "
            "updated_at = excluded.updated_at",
            (guild_id, updated.model_dump_json(), self.usage.clock()),
        )
        self._settings[guild_id] = updated
        return updated
