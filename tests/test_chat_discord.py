"""Conversations on Discord through SimCord: mentions, reply chains, threads, DMs, memory that
fits the model, personas and quotas. The chat task is scripted (it echoes) and records each
request, so the tests assert on what reached the model; the window is counted with the tiny
chat model's real tokenizer.

Unless a test says otherwise the bot runs without the Message Content intent, as most bots
do: what works here works without it.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from typing import Any

import discord
import pytest

from bot.conversations import TRUNCATED
from handlers.chat import ChatRequest, ChatTurn
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    Scene,
    harness,
    scene,
    simcord_bot,
    stack,
)


def requests(h: Harness) -> list[ChatRequest]:
    """Every chat request that reached the model, in order."""
    return [request for run in h.tasks["chat"].runs for request in run]


def mention(h: Harness, text: str) -> str:
    assert h.bot.user is not None
    return f"{h.bot.user.mention} {text}"


def answers(h: Harness, channel: Any) -> list[discord.Message]:
    """The bot's messages in a channel, oldest first."""
    return [m for m in channel.history() if h.bot.user and m.author.id == h.bot.user.id]


async def ask(h: Harness, member: Any, channel: Any, text: str, **kwargs: Any) -> discord.Message:
    """A member's message, then the bot's last message once every job has its reply."""
    await member.send(channel, text, **kwargs)
    await h.finish()
    return answers(h, channel)[-1]


async def test_a_mention_starts_a_conversation_answered_as_a_reply(harness: Harness) -> None:
    s = await scene(harness)
    question = await s.alice.send(s.channel, mention(harness, "what is osmosis?"))
    await harness.finish()
    (answer,) = answers(harness, s.channel)
    assert answer.content == "echo: what is osmosis?"
    assert answer.reference is not None and answer.reference.message_id == question.id
    assert not answer.mentions  # the reply does not ping
    posted = next(
        e.json["content"]
        for e in harness.env.http_requests
        if e.method == "POST" and e.path.endswith(f"/channels/{s.channel.id}/messages")
    )
    assert posted.startswith("⏳ /chat: number 1 in the queue")  # then edited into the answer
    (request,) = requests(harness)
    assert (request.message, request.name, request.history) == ("what is osmosis?", "alice", ())


async def test_replies_continue_the_chain_with_every_member_named(harness: Harness) -> None:
    s = await scene(harness)
    first = await ask(harness, s.alice, s.channel, mention(harness, "what is osmosis?"))
    second = await ask(harness, s.alice, s.channel, "and diffusion?", reply_to=first)
    assert second.reference is not None and second.content == "echo: and diffusion?"
    third = await ask(harness, s.bob, s.channel, "can I join?", reply_to=second)
    assert third.content == "echo: can I join?"
    *_, last = requests(harness)
    assert (last.message, last.name) == ("can I join?", "bob")
    assert last.history == (
        ChatTurn("user", "what is osmosis?", "alice"),
        ChatTurn("assistant", "echo: what is osmosis?"),
        ChatTurn("user", "and diffusion?", "alice"),
        ChatTurn("assistant", "echo: and diffusion?"),
    )
    await harness.bot.usage.flush()
    assert [(r["task"], r["status"], r["user_id"]) for r in harness.rows()] == [
        ("chat", "ok", str(s.alice.id)),
        ("chat", "ok", str(s.alice.id)),
        ("chat", "ok", str(s.bob.id)),
    ]


async def test_a_slash_chat_continues_by_reply_with_its_question(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "chat", message="name a river")
    await harness.finish()
    answer = result.response.message
    assert answer.content == "echo: name a river"
    # Replies to a command's answer reach a bot without the intent only with a mention.
    await ask(harness, s.alice, s.channel, mention(harness, "a longer one?"), reply_to=answer)
    *_, last = requests(harness)
    assert last.history == (
        ChatTurn("user", "name a river", "alice"),
        ChatTurn("assistant", "echo: name a river"),
    )


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_thread_the_bot_opened_continues_without_mentions(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(
        s.channel, "chat", message="Plan our biology revision", thread=True
    )
    await harness.finish()
    (room,) = s.channel.threads
    assert room.mention in result.response.content
    assert room.name == "Plan our biology revision"
    *_, answer = answers(harness, room)
    assert answer.content == "echo: Plan our biology revision"
    # A thread follows its channel's rules.
    await harness.bot.guild_settings.update(s.guild.id, allowed_channels=[s.channel.id])
    await s.bob.send(room, "start with cells")
    await harness.finish()
    *_, last = requests(harness)
    assert (last.message, last.name) == ("start with cells", "bob")
    assert last.history == (
        ChatTurn("user", "Plan our biology revision", "alice"),
        ChatTurn("assistant", "echo: Plan our biology revision"),
    )
    assert answers(harness, room)[-1].content == "echo: start with cells"
    # Outside the thread, a message without a mention is nobody's business.
    await s.bob.send(s.channel, "lunch?")
    await harness.finish()
    assert len(requests(harness)) == 2


async def test_a_server_may_open_a_thread_for_every_chat(harness: Harness) -> None:
    s = await scene(harness)
    await harness.bot.guild_settings.update(s.guild.id, chat_threads=True)
    await s.alice.slash(s.channel, "chat", message="Chemistry questions")
    await harness.finish()
    (room,) = s.channel.threads
    assert answers(harness, room)[-1].content == "echo: Chemistry questions"
    inline = await s.alice.slash(s.channel, "chat", message="just this once", thread=False)
    await harness.finish()
    assert inline.response.content == "echo: just this once" and len(s.channel.threads) == 1


async def test_no_thread_where_answers_are_private(harness: Harness) -> None:
    s = await scene(harness)
    await harness.bot.guild_settings.update(s.guild.id, ephemeral=True)
    refused = await s.alice.slash(s.channel, "chat", message="hi", thread=True)
    assert refused.ephemeral and refused.response.content.startswith("**thread**:")
    assert not s.channel.threads and requests(harness) == []


async def test_a_dm_is_a_conversation_without_mentions(harness: Harness) -> None:
    s = await scene(harness)
    dm = s.alice.user.dm_channel
    await s.alice.send_dm("hello")
    await harness.finish()
    await s.alice.send_dm("what did I say?")
    await harness.finish()
    assert [m.content for m in answers(harness, dm)] == ["echo: hello", "echo: what did I say?"]
    *_, last = requests(harness)
    assert last.history == (
        ChatTurn("user", "hello", "alice"),
        ChatTurn("assistant", "echo: hello"),
    )
    await s.alice.send_dm("reset")
    await harness.finish()
    assert answers(harness, dm)[-1].content.startswith("🧹 Conversation reset")
    await s.alice.send_dm("anyone there?")
    await harness.finish()
    assert requests(harness)[-1].history == ()


@pytest.mark.parametrize("stack", [{"direct_messages": "off"}], indirect=True)
async def test_dms_follow_the_direct_message_policy(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.send_dm("hello")
    await harness.finish()
    (refusal,) = answers(harness, s.alice.user.dm_channel)
    assert "servers only" in refusal.content and requests(harness) == []


async def test_bots_and_webhooks_are_ignored(harness: Harness) -> None:
    s = await scene(harness)
    other = s.guild.add_member(harness.env.create_user("otherbot", bot=True))
    await other.send(s.channel, mention(harness, "echo this forever"))
    hook = s.guild.create_webhook(s.channel)
    await hook.send(mention(harness, "and this"))
    await harness.finish()
    assert answers(harness, s.channel) == [] and requests(harness) == []


@pytest.mark.parametrize("stack", [{"chat_context": 256, "chat_answer": 16}], indirect=True)
async def test_a_long_chain_reaches_the_model_as_summary_and_recent_turns(
    harness: Harness,
) -> None:
    s = await scene(harness)
    window = harness.tasks["chat"].window(harness.bot.executor.default_models["chat"])
    latest = await ask(
        harness, s.alice, s.channel, mention(harness, "we read about rivers and mountains")
    )
    for n in range(10):
        member = (s.alice, s.bob)[n % 2]
        latest = await ask(
            harness, member, s.channel, f"tell me more about the old city, part {n}",
            reply_to=latest,
        )  # fmt: skip
    folds = [r.text for run in harness.tasks["summarize"].runs for r in run]
    assert folds and folds[0].startswith("alice: we read about rivers and mountains")
    *_, last = requests(harness)
    assert last.summary.startswith("summary: ")
    assert last.message == "tell me more about the old city, part 9" and last.name == "bob"
    assert window.prompt_tokens(last) <= window.budget(last)
    assert last.history and last.history[-1] == ChatTurn(
        "assistant", "echo: tell me more about the old city, part 8"
    )
    # Nothing folded was read again: each fold starts after the one before.
    for earlier, later in itertools.pairwise(folds):
        assert later.startswith("Summary so far: ")
        assert earlier.splitlines()[-1] not in later
    reply = await ask(harness, s.alice, s.channel, "memory", reply_to=latest)
    assert reply.content.startswith("Summary of the earlier conversation: summary: ")


async def test_the_persona_set_by_config_reaches_the_prompt(harness: Harness) -> None:
    s = await scene(harness)
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    await carol.slash(s.channel, "config persona", text="You are a patient chemistry tutor.")
    other = s.guild.create_text_channel("french")
    await carol.slash(s.channel, "config persona", text="Réponds en français.", channel=other)
    await ask(harness, s.alice, s.channel, mention(harness, "what is a mole?"))
    await ask(harness, s.alice, other, mention(harness, "bonjour"))
    await s.alice.slash(s.channel, "chat", message="and an ion?")
    await harness.finish()
    assert [r.system for r in requests(harness)] == [
        "You are a patient chemistry tutor.",
        "Réponds en français.",
        "You are a patient chemistry tutor.",
    ]
    await carol.slash(s.channel, "config persona", clear=True)
    await ask(harness, s.alice, s.channel, mention(harness, "and now?"))
    assert requests(harness)[-1].system is None  # the bot's default persona


@pytest.mark.parametrize("stack", [{"quotas": {"chat": 2}}], indirect=True)
async def test_quotas_apply_to_conversations(harness: Harness) -> None:
    s = await scene(harness)
    first = await ask(harness, s.alice, s.channel, mention(harness, "one"))
    second = await ask(harness, s.alice, s.channel, "two", reply_to=first)
    refusal = await ask(harness, s.alice, s.channel, "three", reply_to=second)
    assert "daily limit" in refusal.content or "quota" in refusal.content.lower()
    assert [r.message for r in requests(harness)] == ["one", "two"]
    await harness.bot.usage.flush()
    assert [r["status"] for r in harness.rows()] == ["ok", "ok", "refused_quota"]


async def test_a_busy_member_is_told_and_nothing_is_queued(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["chat"]
    task.hold = True
    for text in ("first", "second"):  # the per-member cap is 2
        await s.alice.send(s.channel, mention(harness, text))
    await asyncio.to_thread(task.entered.wait, 10)
    await s.alice.send(s.channel, mention(harness, "third"))
    await harness.env.settle()
    assert "Nothing was queued" in answers(harness, s.channel)[-1].content
    task.gate.set()
    await harness.finish()
    assert sorted(r.message for r in requests(harness)) == ["first", "second"]


async def test_a_text_file_in_the_conversation_is_read(harness: Harness) -> None:
    s = await scene(harness)
    text = "Mitochondria make energy. " * 120  # longer than a message may be
    notes = ("notes.txt", text.encode())
    await ask(harness, s.alice, s.channel, mention(harness, "explain"), attachments=[notes])
    (request,) = requests(harness)
    assert request.message.startswith("explain\n\n[file notes.txt]\nMitochondria make energy.")
    window = harness.tasks["chat"].window(harness.bot.executor.default_models["chat"])
    assert window.prompt_tokens(request) <= window.budget(request)  # cut to fit, saying so
    assert request.message.endswith(TRUNCATED)


async def test_a_reply_to_an_earlier_answer_starts_a_branch(harness: Harness) -> None:
    """Reply chains are trees: a branch keeps its own memory, so a reset (or a summary) in
    one branch does not reach another."""
    s = await scene(harness)
    first = await ask(harness, s.alice, s.channel, mention(harness, "what is osmosis?"))
    second = await ask(harness, s.alice, s.channel, "and diffusion?", reply_to=first)
    reset = await ask(harness, s.alice, s.channel, "reset", reply_to=second)
    await ask(harness, s.bob, s.channel, "what about plants?", reply_to=first)
    assert requests(harness)[-1].history == (
        ChatTurn("user", "what is osmosis?", "alice"),
        ChatTurn("assistant", "echo: what is osmosis?"),
    )
    await ask(harness, s.alice, s.channel, "new topic: stars", reply_to=reset)
    assert requests(harness)[-1].history == ()


async def test_a_reply_to_an_answer_still_being_written_continues(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["chat"]
    task.hold = True
    await s.alice.send(s.channel, mention(harness, "a long essay please"))
    await asyncio.to_thread(task.entered.wait, 10)
    (streaming,) = answers(harness, s.channel)
    await s.bob.send(s.channel, "quick question meanwhile", reply_to=streaming)
    task.gate.set()
    await harness.finish()
    assert [r.message for r in requests(harness)] == [
        "a long essay please",
        "quick question meanwhile",
    ]
    assert requests(harness)[-1].history == (ChatTurn("user", "a long essay please", "alice"),)


async def test_a_bare_mention_gets_a_hint(harness: Harness) -> None:
    s = await scene(harness)
    reply = await ask(harness, s.alice, s.channel, mention(harness, ""))
    assert "Ask me something" in reply.content and requests(harness) == []


async def test_a_reply_reset_starts_the_chain_afresh(harness: Harness) -> None:
    s = await scene(harness)
    first = await ask(harness, s.alice, s.channel, mention(harness, "what is osmosis?"))
    reset = await ask(harness, s.alice, s.channel, "reset", reply_to=first)
    assert reset.content.startswith("🧹")
    await ask(harness, s.alice, s.channel, "new topic: stars", reply_to=reset)
    assert requests(harness)[-1].history == ()
    rows = sqlite3.connect(harness.db).execute("SELECT reset_after FROM conversations").fetchall()
    assert rows and rows[0][0] > 0


async def test_a_reset_while_the_database_is_locked_says_so(harness: Harness) -> None:
    s = await scene(harness)
    first = await ask(harness, s.alice, s.channel, mention(harness, "what is osmosis?"))
    locker = sqlite3.connect(harness.db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        refused = await ask(harness, s.alice, s.channel, "reset", reply_to=first)
        # The chain is still answered from what Discord holds.
        answered = await ask(harness, s.alice, s.channel, mention(harness, "go on"), reply_to=first)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert "nothing was reset" in refused.content
    assert answered.content == "echo: go on"
    assert requests(harness)[-1].history == (
        ChatTurn("user", "what is osmosis?", "alice"),
        ChatTurn("assistant", "echo: what is osmosis?"),
    )


async def test_a_pdf_in_the_conversation_is_read_too(harness: Harness) -> None:
    from tests.test_documents import make_pdf

    s = await scene(harness)
    notes = ("notes.pdf", make_pdf(["Mitochondria make energy."]))
    await ask(harness, s.alice, s.channel, mention(harness, "explain"), attachments=[notes])
    (request,) = requests(harness)
    assert request.message == "explain\n\n[file notes.pdf]\nMitochondria make energy."
