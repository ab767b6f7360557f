"""Per-guild settings: what each community allows, kept in memory, written in one place."""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bot.usage import UsageLog, UsageUnavailable

PERSONA_MAX_CHARS = 1000
"""Longest persona (system prompt) a server may set: it takes room from every conversation."""

Persona = Annotated[str, StringConstraints(min_length=1, max_length=PERSONA_MAX_CHARS)]

NEGATIVE_PROMPT_MAX_CHARS = 300
"""Longest negative prompt a server adds to every /imagine: it shares the member's room."""

BLOCKED_TERM_MAX_CHARS = 50
BLOCKED_TERMS_MAX = 100

CLASSROOM_NEGATIVE_PROMPT = "nsfw, nudity, sexual content, gore, blood, violence, weapons, drugs"
"""What a classroom-safe server asks every image to avoid, beside its own negative prompt."""

CLASSROOM_BLOCKED_TERMS = (
    "nsfw", "nude", "nudes", "naked", "nudity", "porn", "porno", "pornographic", "sex",
    "sexual", "sexy", "erotic", "hentai", "lingerie", "topless", "gore", "gory",
)  # fmt: skip
"""Words a classroom-safe server refuses in /imagine prompts, beside its own list."""

BlockedTerm = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=BLOCKED_TERM_MAX_CHARS)
]


class GuildSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    enabled_commands: list[str] | None = None
    """Commands members may use; None allows every command."""
    disabled_commands: list[str] = Field(default_factory=list)
    """Commands built on a task (/catchup, /digest, /quiz) turned off here while their task
    is on; each also stops with its task."""
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
    blocked_terms: list[BlockedTerm] = Field(default_factory=list, max_length=BLOCKED_TERMS_MAX)
    """Words or phrases refused in /imagine prompts here, beside BOT_IMAGINE__BLOCKED_TERMS."""
    negative_prompt: (
        Annotated[str, StringConstraints(min_length=1, max_length=NEGATIVE_PROMPT_MAX_CHARS)] | None
    ) = None
    """Added to every /imagine's negative prompt here."""
    member_voices: dict[int, str] = Field(default_factory=dict)
    """Each member's chosen voice here (/voice myvoice): for read-aloud, and /speak without
    a voice."""
    read_aloud_max_chars: int | None = Field(default=None, ge=20, le=2000)
    """Longest part of a message read aloud here (/voice read max_chars); None uses
    BOT_VOICE__MAX_CHARS."""
    voice_replies: bool = False
    """Members who ask for it (/voice replies) get a voice message back when they talk to
    the bot in voice messages here."""
    voice_reply_members: list[int] = Field(default_factory=list)
    """Members who asked for spoken answers to their voice messages (/voice replies)."""
    auto_transcribe_channels: list[int] = Field(default_factory=list)
    """Channels (and their threads) where every voice message gets its transcript."""
    image_model: str | None = None
    """The image model /imagine draws with here when a member picks none (/config
    image_model); None, or one no longer installed: the bot's default."""
    classroom_safe: bool = False
    """One switch for a school's server: images only in age-restricted channels, each one
    screened by the safety classifier, a default negative prompt and a list of refused
    words, over whatever the other settings say."""

    @property
    def images_where(self) -> Literal["age_restricted_only", "allow"]:
        return "age_restricted_only" if self.classroom_safe else self.nsfw

    def refused_terms(self) -> list[str]:
        """The words /imagine refuses here: the server's own, and the classroom list."""
        return [*self.blocked_terms, *(CLASSROOM_BLOCKED_TERMS if self.classroom_safe else ())]

    def negative_prompt_with(self, member_negative: str) -> str:
        """A member's negative prompt with what the server asks every image to avoid."""
        parts = [member_negative.strip(), self.negative_prompt or ""]
        if self.classroom_safe:
            parts.append(CLASSROOM_NEGATIVE_PROMPT)
        return ", ".join(p for p in parts if p)

    def persona_for(self, channel_id: int | None, parent_id: int | None = None) -> str | None:
        """The persona of a channel, of the channel a thread is in, or of the server."""
        for place in (channel_id, parent_id):
            if place is not None and place in self.channel_personas:
                return self.channel_personas[place]
        return self.persona


DIRECT_MESSAGES = 0
"""Where the choices members make in direct messages with the bot are kept: no server's
rules apply there, so only members' own choices (``voice_reply_members``) are read."""


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
