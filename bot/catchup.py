""" "What did I miss": the channel's messages since the member last wrote there (or since a
time they name), read with their own permissions, as the text /catchup summarizes, with
links to the messages the channel reacted to most."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import discord

from bot.reading import Readable, check_read_access
from handlers.errors import InvalidInput

MAX_MESSAGES = 300
"""The most messages read back: a busy day's discussion, summarized in a few parts."""
LOOKBACK = datetime.timedelta(days=7)
"""How far back the member's own last message is looked for."""
KEY_MESSAGES = 3

_SPAN = re.compile(r"\s*(\d{1,4})\s*(m|min|h|d)\s*", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """``3h``, ``90m``, ``2d``, ``today`` or ``yesterday`` as a moment before ``now`` (UTC);
    ``InvalidInput("since")`` otherwise."""
    word = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "today":
        return midnight
    if word == "yesterday":
        return midnight - datetime.timedelta(days=1)
    match = _SPAN.fullmatch(word)
    if match is None:
        raise InvalidInput("since", "write a time like 3h, 90m, 2d, today or yesterday")
    span = datetime.timedelta(**{_UNITS[match[2].lower()]: int(match[1])})
    if span > LOOKBACK:
        raise InvalidInput("since", f"reaches back at most {LOOKBACK.days} days")
    return now - span


def newest_that_fit(lines: list[str], max_chars: int) -> list[str]:
    """The newest of ``lines`` (oldest first) whose text, joined by newlines, fits."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        used += len(line) + 1
        if used > max_chars + 1:
            break
        kept.append(line)
    return kept[::-1]


@dataclass(frozen=True)
class Missed:
    text: str
    """Each message as ``name: content``, oldest first."""
    count: int
    """Messages summarized: the newest that fit, when more were said."""
    since: datetime.datetime
    key_links: tuple[str, ...]
    """The messages with the most reactions, as links."""


async def read_missed(
    member: discord.abc.User,
    channel: discord.abc.Messageable,
    before: discord.abc.Snowflake,
    since: datetime.datetime | None,
    now: datetime.datetime,
    max_chars: int,
) -> Missed:
    """The messages after ``since`` (or after the member's last message here, within
    ``LOOKBACK``) and before ``before``, if the member may read this channel's history: the
    newest that fit in ``max_chars``."""
    if isinstance(channel, Readable):
        await check_read_access(member, channel, "since")
    elif not isinstance(channel, discord.DMChannel):
        raise InvalidInput("since", "this channel has no history I can read")
    floor = now - LOOKBACK
    messages: list[discord.Message] = []
    async for message in channel.history(limit=MAX_MESSAGES, before=before, after=since or floor,
                                         oldest_first=False):  # fmt: skip
        if since is None and message.author.id == member.id:
            break  # where the member last spoke: what came after is what they missed
        messages.append(message)
    messages.reverse()
    said = [m for m in messages if m.content and not m.author.bot]
    if not said:
        raise InvalidInput("since", "nothing was said here since then")
    lines = newest_that_fit([f"{m.author.display_name}: {m.content}" for m in said], max_chars)
    said = said[len(said) - len(lines) :]
    if not said:
        raise InvalidInput("since", "the newest message alone is longer than can be summarized")
    start = since or said[0].created_at
    liked = sorted(said, key=lambda m: sum(r.count for r in m.reactions), reverse=True)
    keys = tuple(m.jump_url for m in liked[:KEY_MESSAGES] if m.reactions)
    return Missed("\n".join(lines), len(said), start, keys)
