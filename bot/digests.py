"""Daily digests of a channel's discussion, scheduled by its server's managers (/digest).

The schedule is kept in SQLite (table ``digests``), so it survives a restart. ``due`` is pure:
a digest is due once its local time of day has passed on a local date after the last one it
ran for, so one missed while the bot was down runs once when it is back (not once per missed
day). A quiet day (nobody wrote) is skipped, and counts as run. ``compose`` builds the post:
the summary of the day, then its decisions (pinned messages, and those that read as one:
"we decided", "agreed", "we'll"...), open questions, the links shared and the messages
reacted to most, each found in the messages themselves rather than asked of the model.
"""

from __future__ import annotations

import datetime
import re
import sqlite3
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.markdown import MESSAGE_LIMIT, clip, neutralize
from bot.usage import UsageLog
from handlers.errors import InvalidInput

_TIME = re.compile(r"\s*(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\s*", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s<>)\]]+")
LISTED = 3
"""Decisions, questions, links and reacted-to messages listed in a digest, each."""
DECIDED = re.compile(
    r"\b(?:decided|decision|agreed|we(?: wi|['\u2019])ll|let['\u2019]?s go with|settled on|"
    r"final answer)\b",
    re.IGNORECASE,
)
"""How a decision reads in a study group's chat (besides being pinned)."""
DECISION_CHARS = 150
_SPOILER = re.compile(r"\|\|.+?\|\|", re.DOTALL)
"""A spoiler is not quoted: cut short, its closing bars would go and show it."""


def parse_time(text: str) -> int:
    """``18:30``, ``9``, ``7pm`` as minutes after midnight; ``InvalidInput("time")``."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise InvalidInput("time", "write a time of day like 18:30 or 7pm")
    hour, minute, half = int(match[1]), int(match[2] or 0), (match[3] or "").lower()
    if half:
        if not 1 <= hour <= 12:
            raise InvalidInput("time", "with am or pm, the hour is 1 to 12")
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59:
        raise InvalidInput("time", "write a time of day like 18:30 or 7pm")
    return hour * 60 + minute


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        said = f"{name!r} is not a time zone, e.g. Europe/Paris or UTC"
        raise InvalidInput("timezone", said) from None


@dataclass(frozen=True)
class Schedule:
    channel_id: int
    guild_id: int
    at_minute: int
    timezone: str
    created_by: str
    last_day: str | None

    def time(self) -> str:
        return f"{self.at_minute // 60:02d}:{self.at_minute % 60:02d} {self.timezone}"


def due(schedule: Schedule, now: datetime.datetime) -> str | None:
    """The local date to run ``schedule`` for at ``now`` (UTC), or None: the latest local
    date whose time of day has passed, when it is after the last one run."""
    local = now.astimezone(ZoneInfo(schedule.timezone))
    day = local.date()
    if local.hour * 60 + local.minute < schedule.at_minute:
        day -= datetime.timedelta(days=1)  # today's is still to come
    if schedule.last_day is not None and day.isoformat() <= schedule.last_day:
        return None
    return day.isoformat()


@dataclass(frozen=True)
class Said:
    """One message of the day, as the digest needs it."""

    author: str
    content: str
    link: str
    reactions: int
    answered: bool
    """Someone replied to it."""
    pinned: bool = False


def scheduled_at(schedule: Schedule, day: str) -> datetime.datetime:
    """When ``schedule``'s digest of local date ``day`` was due, in UTC."""
    midnight = datetime.datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(schedule.timezone))
    return (midnight + datetime.timedelta(minutes=schedule.at_minute)).astimezone(datetime.UTC)


def _quoted(content: str) -> str:
    """A message quoted in a digest: spoilers hidden, cut short, shown as typed."""
    return clip(neutralize(_SPOILER.sub("(a spoiler)", content)), DECISION_CHARS)


def compose(summary: str, messages: list[Said]) -> str:
    """The digest's post: the summary (what members wrote shown as typed, never as the
    bot's own links or notes), then what the messages themselves show; the summary is cut
    first when it is all too long for one message."""
    sections = []
    decided = [m for m in messages if m.pinned or DECIDED.search(m.content)]
    if decided:
        sections.append("**Decisions**\n" + "\n".join(
            f"- {neutralize(m.author)}: {_quoted(m.content)} {m.link}" for m in decided[-LISTED:]
        ))  # fmt: skip
    questions = [m for m in messages if m.content.rstrip().endswith("?") and not m.answered]
    if questions:
        sections.append("**Open questions**\n" + "\n".join(
            f"- {neutralize(m.author)}: {m.link}" for m in questions[-LISTED:]
        ))  # fmt: skip
    links = list(dict.fromkeys(url for m in messages for url in _URL.findall(m.content)))
    if links:
        sections.append("**Links shared**\n" + "\n".join(f"- <{u}>" for u in links[:LISTED]))
    liked = sorted((m for m in messages if m.reactions), key=lambda m: -m.reactions)
    if liked:
        sections.append("**Most reacted to**\n" + "\n".join(
            f"- {neutralize(m.author)} ({m.reactions}): {m.link}" for m in liked[:LISTED]
        ))  # fmt: skip
    head = f"**Digest of the last day** ({len(messages)} messages)"
    tail = "\n\n".join(sections)
    room = MESSAGE_LIMIT - len(head) - len(tail) - 4
    summary = clip(neutralize(summary.strip()), max(room, 1))
    return "\n\n".join(part for part in (head, summary, tail) if part)


class Digests:
    """The stored schedules."""

    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage

    async def put(self, schedule: Schedule, created_at: float) -> None:
        await self.usage.write_now(
            "INSERT INTO digests (channel_id, guild_id, at_minute, timezone, created_by, "
            "last_day, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id) DO "
            "UPDATE SET at_minute = excluded.at_minute, timezone = excluded.timezone, "
            "created_by = excluded.created_by, last_day = excluded.last_day",
            (schedule.channel_id, schedule.guild_id, schedule.at_minute, schedule.timezone,
             schedule.created_by, schedule.last_day, created_at),
        )  # fmt: skip

    async def of_guild(self, guild_id: int) -> list[Schedule]:
        return [Schedule(**dict(row)) for row in await self.usage.query(
            "SELECT channel_id, guild_id, at_minute, timezone, created_by, last_day "
            "FROM digests WHERE guild_id = ? ORDER BY channel_id", (guild_id,)
        )]  # fmt: skip

    async def every(self) -> list[Schedule]:
        try:
            rows = await self.usage.query(
                "SELECT channel_id, guild_id, at_minute, timezone, created_by, last_day "
                "FROM digests"
            )
        except sqlite3.Error:
            return []
        return [Schedule(**dict(row)) for row in rows]

    async def remove(self, channel_id: int) -> bool:
        found = await self.usage.query("SELECT 1 FROM digests WHERE channel_id = ?", (channel_id,))
        await self.usage.write_now("DELETE FROM digests WHERE channel_id = ?", (channel_id,))
        return bool(found)

    async def ran(self, channel_id: int, day: str) -> None:
        await self.usage.write_now(
            "UPDATE digests SET last_day = ? WHERE channel_id = ?", (day, channel_id)
        )
