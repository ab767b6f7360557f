"""/catchup through SimCord: what a member missed, read with their own permissions, summarized
for them alone (#31). The summarize task is scripted (tests/test_discord.py)."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import discord
import pytest

from bot.app import Services
from bot.catchup import parse_since
from bot.client import AssistantBot
from bot.digests import Said, Schedule, compose, due, parse_time
from bot.quizzes import MalformedQuiz, Question, parse_quiz
from handlers.base import InvalidInput
from handlers.chat import ChatResult
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    Stack,
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


# Daily digests


def schedule(at: str = "18:00", zone: str = "UTC", last_day: str | None = None) -> Schedule:
    return Schedule(1, 2, parse_time(at), zone, "3", last_day)


def test_a_digest_is_due_once_after_its_time_however_many_days_it_missed() -> None:
    at = datetime.datetime(2026, 12, 4, 17, 59, tzinfo=datetime.UTC)
    assert due(schedule(last_day="2026-12-03"), at) is None  # today's time is still to come
    after = at + datetime.timedelta(minutes=2)
    assert due(schedule(last_day="2026-12-03"), after) == "2026-12-04"
    assert due(schedule(last_day="2026-12-04"), after) is None  # ran today
    assert due(schedule(last_day="2026-11-28"), after) == "2026-12-04"  # once, not six times
    paris = schedule("18:30", "Europe/Paris", "2026-12-03")  # 17:30 UTC in winter
    assert due(paris, datetime.datetime(2026, 12, 4, 17, 31, tzinfo=datetime.UTC)) == "2026-12-04"
    assert (parse_time("7pm"), parse_time(" 9 "), parse_time("00:05")) == (1140, 540, 5)
    for bad in ("25:00", "13pm", "noonish"):
        with pytest.raises(InvalidInput, match="time"):
            parse_time(bad)


def test_a_digest_lists_what_the_messages_show() -> None:
    said = [
        Said("bob", "Does anyone have the lab notes?", "https://d/1", 0, answered=False),
        Said("ann", "The slides: https://example.com/slides.pdf", "https://d/2", 3, True),
        Said("bob", "Is the exam on Friday?", "https://d/3", 0, answered=True),
        Said("cy", "OK, we decided: we meet on Thursday at 6.", "https://d/4", 0, False),
        Said("ann", "Chapter 4 for next week", "https://d/5", 0, False, pinned=True),
        Said("bo", "We\u2019ll meet ||at the cafe, to surprise Cy||", "https://d/6", 0, False),
    ]
    assert compose("summary: lab and exam", said) == (
        "**Digest of the last day** (6 messages)\n\nsummary: lab and exam\n\n"
        "**Decisions**\n- cy: OK, we decided: we meet on Thursday at 6. https://d/4\n"
        "- ann: Chapter 4 for next week https://d/5\n"
        "- bo: We\u2019ll meet (a spoiler) https://d/6\n\n"
        "**Open questions**\n- bob: https://d/1\n\n"
        "**Links shared**\n- <https://example.com/slides.pdf>\n\n"
        "**Most reacted to**\n- ann (3): https://d/2"
    )


async def manager(h: Harness, guild: Any) -> Any:
    mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    return guild.add_member(h.env.create_user("carol"), roles=[mods])


def study(h: Harness, now: datetime.datetime) -> Any:
    """The study cog with its background round stopped and its clock at ``now``."""
    cog = h.bot.get_cog("Study")  # the extension's own module: not tests' Study class
    assert cog is not None and type(cog).__name__ == "Study"
    if cog._digesting is not None:
        cog._digesting.cancel()
    cog.clock = lambda: now
    return cog


def posted(channel: Any, h: Harness) -> list[str]:
    return [m.content for m in channel.history() if m.author.id == h.bot.user.id]


@READING
async def test_a_digest_scheduled_posts_once_at_its_time_after_a_restart(
    harness: Harness, stack: Stack
) -> None:
    """Messages carry real times, so the fake clock is set around them: the digest's time of
    day is an hour before now, so its first is tomorrow's, with today's messages."""
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    now = discord.utils.utcnow().replace(second=0, microsecond=0)
    at = now - datetime.timedelta(hours=1)
    cog = study(harness, now)
    done = await carol.slash(s.channel, "digest schedule", time=f"{at:%H:%M}")
    await harness.env.settle()
    assert done.ephemeral and f"daily at {at:%H:%M} UTC" in done.response.content
    await s.bob.send(s.channel, "Does anyone have the lab notes?")
    await s.alice.send(s.channel, "Slides: https://example.com/slides.pdf")
    assert await cog.run_due_digests() == (0, 0)  # today's time has passed: none at once

    fresh = AssistantBot(
        Services(stack.bot.executor, stack.bot.usage, stack.bot.invoker), stack.bot.settings
    )
    await harness.env.restart_bot(fresh)
    harness.bot = fresh
    tomorrow = now + datetime.timedelta(hours=23, minutes=1)
    cog = study(harness, tomorrow)  # the schedule, read back from the database
    assert await cog.run_due_digests() == (1, 0)
    assert await cog.run_due_digests() == (0, 0)  # once
    (digest,) = posted(s.channel, harness)
    assert digest.startswith("**Digest of the last day** (2 messages)\n\nsummary: bob: Does")
    assert "**Open questions**" in digest and "<https://example.com/slides.pdf>" in digest
    await harness.bot.usage.flush()
    digests = [r["user_id"] for r in harness.rows() if r["task"] == "summarize"]
    assert digests == [f"digest:{s.channel.id}"]

    later = tomorrow + datetime.timedelta(days=3)  # three days missed while down
    cog.clock = lambda: later
    assert await cog.run_due_digests() == (0, 0)  # due once; a quiet day: skipped
    (stored,) = await cog.digests.every()
    assert stored.last_day == later.date().isoformat()  # the days between are not owed
    assert await cog.run_due_digests() == (0, 0)


@READING
async def test_a_quiet_day_is_skipped_and_digests_are_listed_and_removed(
    harness: Harness,
) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    today = discord.utils.utcnow().replace(hour=6, minute=0, second=0, microsecond=0)
    cog = study(harness, today)
    quiet = s.guild.create_text_channel("quiet")
    await carol.slash(quiet, "digest schedule", time="7am", timezone="Europe/Paris")
    await harness.env.settle()
    cog.clock = lambda: today + datetime.timedelta(hours=1)
    assert await cog.run_due_digests() == (0, 0) and posted(quiet, harness) == []
    listed = await carol.slash(s.channel, "digest list")
    assert listed.response.content == f"- <#{quiet.id}> at 07:00 Europe/Paris"
    bad = await carol.slash(s.channel, "digest schedule", time="18:00", timezone="Mars/Base")
    assert "**timezone**: 'Mars/Base' is not a time zone" in bad.response.content
    removed = await carol.slash(s.channel, "digest remove", channel=quiet)
    assert removed.response.content == "The daily digest there is stopped."
    listed = await carol.slash(s.channel, "digest list")
    assert listed.response.content == "No daily digest here."


@READING
async def test_a_failed_digest_is_tried_again_then_its_day_given_up(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    now = discord.utils.utcnow().replace(second=0, microsecond=0)
    cog = study(harness, now)
    await carol.slash(s.channel, "digest schedule", time=f"{now:%H:%M}")
    await harness.env.settle()
    monkeypatch.setattr(cog.bot, "get_channel", lambda channel_id: None)  # out of reach
    cog.clock = lambda: now + datetime.timedelta(days=1, minutes=1)
    assert await cog.run_due_digests() == (0, 1)
    assert await cog.run_due_digests() == (0, 1)  # still owed: tried again
    cog.clock = lambda: now + datetime.timedelta(days=1, hours=3, minutes=1)
    assert await cog.run_due_digests() == (0, 1)  # past three hours: given up
    assert await cog.run_due_digests() == (0, 0)


@READING
async def test_a_digest_needs_the_managers_own_reading_and_the_servers_rules(
    harness: Harness,
) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    study(harness, discord.utils.utcnow())
    hidden = discord.PermissionOverwrite(read_message_history=False)
    staff = s.guild.create_text_channel("staff", overwrites={carol: hidden})
    refused = await carol.slash(s.channel, "digest schedule", time="18:00", channel=staff)
    assert "you cannot read that channel's history yourself" in refused.response.content
    await carol.slash(s.channel, "config command", name="summarize", enabled=False)
    await harness.env.settle()
    off = await carol.slash(s.channel, "digest schedule", time="18:00")
    assert "no digest there: /summarize is turned off in this server" in off.response.content


QUIZ = [
    {"question": "When is the exam?", "choices": ["Monday", "Friday", "Never", "Today"],
     "answer": 1},
    {"question": "What to bring?", "choices": ["Lab notes", "A cake"], "answer": "A"},
]  # fmt: skip


def quiz_json(questions: list[dict[str, Any]]) -> str:
    return json.dumps({"questions": questions})


def test_a_quiz_is_parsed_strictly() -> None:
    fenced = "Here is your quiz:\n```json\n" + quiz_json(QUIZ) + "\n```"
    first, second = parse_quiz(fenced, 2)
    assert first == Question("When is the exam?", ("Monday", "Friday", "Never", "Today"), 1)
    assert second.answer == 0 and second.verdict(1) == "❌ The answer is **A.** Lab notes"
    assert len(parse_quiz(quiz_json(QUIZ), 1)) == 1  # more than asked: the first kept
    broken = {
        "no object": ("I cannot.", "holds no JSON object"),
        "a bare list": (json.dumps(QUIZ), "not valid JSON"),
        "cut off": (quiz_json(QUIZ)[:-20], "not valid JSON"),
        "no questions": (json.dumps({"quiz": QUIZ}), 'holds no list of "questions"'),
        "too few": (quiz_json(QUIZ[:1]), "1 question(s) of the 2 asked"),
        "no answer": (quiz_json([QUIZ[0] | {"answer": 4}, QUIZ[1]]), "question 1 has no right"),
        "a letter too far": (quiz_json([QUIZ[0], QUIZ[1] | {"answer": "C"}]), "question 2"),
        "repeats": (quiz_json([QUIZ[0] | {"choices": ["a", "A"]}, QUIZ[1]]), "repeats a choice"),
        "one choice": (quiz_json([QUIZ[0] | {"choices": ["a"]}, QUIZ[1]]), "needs 2 to 5"),
        "empty": (quiz_json([QUIZ[0] | {"question": " "}, QUIZ[1]]), "has no question"),
        "true": (quiz_json([QUIZ[0] | {"answer": True}, QUIZ[1]]), "has no right choice"),
    }
    for name, (text, why) in broken.items():
        with pytest.raises(MalformedQuiz, match=re.escape(why)):
            parse_quiz(text, 2)
            pytest.fail(name)


def quiz_model(h: Harness, *answers: str) -> list[Any]:
    """The chat model answering quiz prompts with ``answers`` in turn; the requests."""
    asked: list[Any] = []

    def respond(request: Any) -> ChatResult:
        asked.append(request)
        return ChatResult(answers[min(len(asked), len(answers)) - 1], 50, True)

    h.tasks["chat"].respond = respond
    return asked


def choices(message: Any) -> list[str]:
    return [c["label"] for row in message.components for c in row["components"]]


async def test_a_quiz_is_posted_answered_by_two_members_and_scored(harness: Harness) -> None:
    s = await scene(harness)
    asked = quiz_model(harness, quiz_json(QUIZ))
    made = await s.alice.slash(s.channel, "quiz make", source="The exam is on Friday. Bring the "
                               "lab notes.", questions=2)  # fmt: skip
    await harness.env.settle()
    assert "The exam is on Friday" in asked[0].message and asked[0].temperature == 0
    assert made.response.content.startswith("📝 **Quiz**: 2 question(s)")
    first, second = made.followups
    assert first.content == (
        "**Question 1 of 2**\nWhen is the exam?\n**A.** Monday\n**B.** Friday\n**C.** Never\n"
        "**D.** Today"
    )
    assert choices(first) == ["A", "B", "C", "D"] and choices(second) == ["A", "B"]
    right = await s.alice.click(first, label="B")
    assert right.ephemeral and right.response.content == (
        "✅ Right: **B.** Friday\n-# Your score: 1 right of 1"
    )
    await s.alice.click(second, label="A")
    wrong = await s.bob.click(first, label="A")
    assert wrong.response.content.startswith("❌ The answer is **B.** Friday")
    again = await s.bob.click(first, label="B")  # the first answer counts
    assert again.response.content.startswith("You answered **A** already. ❌")
    scores = await s.bob.slash(s.channel, "quiz scores")
    assert scores.response.content == (
        f"**Quiz scores**\n1. <@{s.alice.id}>: 2 right of 2\n2. <@{s.bob.id}>: 0 right of 1"
    )
    await harness.bot.usage.flush()
    quiz_rows = [json.loads(r["options"] or "{}").get("command") for r in harness.rows()
                 if r["task"] in ("chat", "quiz")]  # fmt: skip
    assert quiz_rows == ["quiz", None]  # the quiz's chat job, then /quiz scores


async def test_a_malformed_quiz_is_written_again_once_then_refused(harness: Harness) -> None:
    s = await scene(harness)
    asked = quiz_model(harness, "Sure! 1. When is the exam?", quiz_json(QUIZ))
    made = await s.alice.slash(s.channel, "quiz make", source="Exam on Friday.", questions=2)
    await harness.env.settle()
    assert len(made.followups) == 2 and asked[1].temperature > 0  # the retry, sampled
    asked = quiz_model(harness, "No.", quiz_json(QUIZ[:1]))
    refused = await s.alice.slash(s.channel, "quiz make", source="Exam on Friday.", questions=2)
    await harness.env.settle()
    assert len(asked) == 2 and refused.followups == []
    assert refused.response.content.startswith(
        "**source**: the model could not write a whole quiz from this, twice (1 question(s) of "
        "the 2 asked)"
    )


@READING
async def test_a_quiz_reads_only_what_the_member_may_read_and_can_be_turned_off(
    harness: Harness,
) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    asked = quiz_model(harness, quiz_json(QUIZ))
    hidden = discord.PermissionOverwrite(read_message_history=False)
    staff = s.guild.create_text_channel("staff", overwrites={s.alice: hidden})
    answers = await carol.send(staff, "The exam is on Friday.")
    refused = await s.alice.slash(s.channel, "quiz make", source=answers.jump_url, questions=2)
    await harness.env.settle()
    assert "**source**: points to messages you cannot read" in refused.response.content
    made = await carol.slash(s.channel, "quiz make", source=answers.jump_url, questions=2)
    await harness.env.settle()
    assert asked[-1].message.count("The exam is on Friday.") == 1 and made.followups
    neither = await s.alice.slash(s.channel, "quiz make")
    assert "**source**: give a text or a message link, or attach a file" in (
        neither.response.content
    )

    await carol.slash(s.channel, "config command", name="quiz", enabled=False)
    await carol.slash(s.channel, "config command", name="catchup", enabled=False)
    await harness.env.settle()
    off = await s.alice.slash(s.channel, "quiz make", source="Exam on Friday.", questions=2)
    assert off.response.content == "/quiz is turned off in this server"
    pressed = await s.bob.click(made.followups[0], label="B")
    assert pressed.response.content == "/quiz is turned off in this server"
    caught = await s.alice.slash(s.channel, "catchup", since="1h")
    assert caught.response.content == "/catchup is turned off in this server"
    shown = await carol.slash(s.channel, "config show")
    assert "off: /catchup, /quiz" in shown.response.content
    assert len(asked) == 1  # nothing more reached the model
    await harness.bot.usage.flush()
    refusals = [(json.loads(r["options"])["command"], r["status"]) for r in harness.rows()
                if r["task"] in ("chat", "summarize")][-2:]  # fmt: skip
    assert refusals == [("quiz", "invalid"), ("catchup", "invalid")]


async def test_a_quiz_in_direct_messages_follows_the_direct_message_policy(
    harness: Harness,
) -> None:
    """Quizzes are a text command: in DMs as BOT_DIRECT_MESSAGES allows (text-only here),
    answered there, with no server's scores to show."""
    s = await scene(harness)
    asked = quiz_model(harness, quiz_json(QUIZ))
    made = await s.alice.user.slash("quiz make", source="Exam on Friday.", questions=2)
    await harness.env.settle()
    assert len(asked) == 1 and len(made.followups) == 2
    answered = await s.alice.user.click(made.followups[0], label="B")
    assert answered.response.content.startswith("\u2705 Right: **B.** Friday")
    scores = await s.alice.user.slash("quiz scores")
    assert "**scores**: are kept for each server; ask in one" in scores.response.content


@pytest.mark.parametrize("stack", [{"direct_messages": "off"}], indirect=True)
async def test_no_quiz_in_direct_messages_when_they_are_off(harness: Harness) -> None:
    """Discord does not offer it there at all."""
    quiz = harness.bot.tree.get_command("quiz")
    assert quiz is not None and quiz.allowed_contexts is not None
    assert quiz.allowed_contexts.dm_channel is False and quiz.allowed_contexts.guild is True
