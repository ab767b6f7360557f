"""/catchup through SimCord: what a member missed, read with their own permissions, summarized
for them alone (#31). The summarize task is scripted (tests/test_discord.py)."""

from __future__ import annotations

import datetime

import discord
import pytest

from bot.catchup import parse_since
from handlers.base import InvalidInput
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    scene,
    simcord_bot,
    stack,
)

READING = pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)


def summarized(h: Harness) -> list[str]:
    return [request.text for run in h.tasks["summarize"].runs for request in run]


@READING
async def test_catchup_summarizes_what_came_after_the_members_last_message(
    harness: Harness,
) -> None:
    s = await scene(harness)
    await s.bob.send(s.channel, "Before alice spoke.")
    await s.alice.send(s.channel, "I am off until tomorrow.")
    await s.bob.send(s.channel, "The exam moved to Friday.")
    await s.bob.send(s.channel, "Bring the lab notes.")
    result = await s.alice.slash(s.channel, "catchup")
    await harness.finish()
    assert summarized(harness) == ["bob: The exam moved to Friday.\nbob: Bring the lab notes."]
    assert result.ephemeral  # hers alone, whatever the server's reply setting
    assert "-# 2 message(s) since" in result.response.content


@READING
async def test_catchup_since_a_time_and_its_refusals(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.send(s.channel, "Hello all.")
    await s.bob.send(s.channel, "Chapter three tonight.")
    await s.alice.slash(s.channel, "catchup", since="3h")
    await harness.finish()
    assert summarized(harness) == ["alice: Hello all.\nbob: Chapter three tonight."]
    bad = await s.alice.slash(s.channel, "catchup", since="a while")
    assert bad.ephemeral and bad.response.content.startswith("**since**: write a time like 3h")
    quiet = s.guild.create_text_channel("quiet")
    await s.alice.send(quiet, "Anyone?")
    nothing = await s.alice.slash(quiet, "catchup")
    await harness.finish()
    assert "nothing was said here since then" in nothing.response.content
    hidden = discord.PermissionOverwrite(read_message_history=False)
    notes = s.guild.create_text_channel("notes", overwrites={s.alice: hidden})
    await s.bob.send(notes, "Answers to the quiz.")
    refused = await s.alice.slash(notes, "catchup", since="1h")
    await harness.finish()
    assert "cannot read" in refused.response.content
    assert len(summarized(harness)) == 1  # nothing read where she may not read


async def test_catchup_needs_reading_on(harness: Harness) -> None:
    s = await scene(harness)
    refused = await s.alice.slash(s.channel, "catchup")
    assert refused.ephemeral and "BOT_READ_MESSAGES" in refused.response.content


def test_times_a_member_writes() -> None:
    now = datetime.datetime(2026, 12, 4, 15, 30, tzinfo=datetime.UTC)
    assert parse_since("3h", now) == now - datetime.timedelta(hours=3)
    assert parse_since(" 90 min ", now) == now - datetime.timedelta(minutes=90)
    assert parse_since("today", now) == datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    assert parse_since("Yesterday", now) == datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
    with pytest.raises(InvalidInput, match="at most 7 days"):
        parse_since("9d", now)
