"""Hearing on Discord through SimCord: /transcribe, the Transcribe menu, voice messages said to
the bot (answered by chat, and in speech where asked), auto-transcribe, and every refusal in
one line. The transcribe task is scripted (tests/test_discord.py); the handler itself is
tested with a tiny Whisper in tests/test_transcribe.py."""

from __future__ import annotations

import base64
import io
import sqlite3
from typing import Any

import discord
import numpy as np
import pytest
import soundfile

from handlers.chat import ChatTurn
from handlers.transcribe import TranscribeRequest
from tests.test_chat_discord import answers, mention, requests
from tests.test_config import manager
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    WAVEFORM,
    Harness,
    harness,
    scene,
    simcord_bot,
    stack,
)
from tests.test_trust import Clock

VOICE_FLAG = 1 << 13


def opus(seconds: float = 2.0) -> bytes:
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(int(16000 * seconds)) * 0.1).astype(np.float32)
    soundfile.write(buffer, tone, 16000, format="OGG", subtype="OPUS")
    return buffer.getvalue()


async def voice_message(
    h: Harness, author: Any, channel: Any, reply_to: discord.Message | None = None
) -> discord.Message | None:
    """A member's voice message as Discord's microphone button posts it: only the audio,
    flagged, with its length and waveform."""
    backend, channel_id = h.env.backend, channel.id
    (attachment,) = backend.store_attachments(channel_id, [("voice-message.ogg", opus())])
    attachment.update(content_type="audio/ogg", duration_secs=2.0, waveform="AAAA")
    reference = None
    if reply_to is not None:
        reference = backend.normalize_message_reference(
            channel_id, {"channel_id": str(channel_id), "message_id": str(reply_to.id)}
        )
    backend.create_message(
        channel_id, author.id, "", attachments=[attachment], flags=VOICE_FLAG, reference=reference
    )
    await h.env.settle()
    await h.finish()
    return next(iter(reversed(answers(h, channel))), None)


async def spoken_answers(h: Harness, channel: Any) -> list[discord.Message]:
    """The bot's voice messages, once every one that follows an answer has been sent."""
    cog = h.bot.get_cog("Conversations")
    assert cog is not None
    await cog.voice_replies.settle()  # type: ignore[attr-defined]
    await h.env.settle()
    return [m for m in answers(h, channel) if m.flags.voice]


def transcribed(h: Harness) -> list[TranscribeRequest]:
    return [request for run in h.tasks["transcribe"].runs for request in run]


async def test_transcribe_a_file(harness: Harness) -> None:
    s = await scene(harness)
    audio = opus()
    file = ("lecture.ogg", audio)
    result = await s.alice.slash(s.channel, "transcribe", file=file, language="German")
    await harness.finish()
    content = result.response.content
    assert "we meet on friday" in content and "German" in content and "0:02" in content
    (request,) = transcribed(harness)
    assert request.audio == audio and request.language == "de" and request.expected_seconds is None


async def test_transcribe_refuses_in_one_line_before_downloading(harness: Harness) -> None:
    s = await scene(harness)
    notes = ("notes.txt", b"hello")
    refused = await s.alice.slash(s.channel, "transcribe", file=notes)
    assert refused.ephemeral and "not an audio or video file" in refused.response.content
    both = await s.alice.slash(s.channel, "transcribe")
    assert both.ephemeral and "give a file" in both.response.content
    klingon = await s.alice.slash(
        s.channel, "transcribe", file=("a.ogg", opus()), language="klingon"
    )
    assert klingon.ephemeral and "unknown language" in klingon.response.content
    harness.bot.settings.transcribe.max_bytes = 100
    big = await s.alice.slash(s.channel, "transcribe", file=("a.ogg", opus()))
    assert big.ephemeral and "; the limit is 100 bytes" in big.response.content
    assert transcribed(harness) == []
    await harness.bot.usage.flush()
    statuses = [row["status"] for row in harness.rows() if row["task"] == "transcribe"]
    assert statuses == ["invalid"] * 4


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_link_to_a_voice_message_is_read_with_the_members_permissions(
    harness: Harness,
) -> None:
    s = await scene(harness)
    hidden = discord.PermissionOverwrite(view_channel=False)
    staff = s.guild.create_text_channel("staff", overwrites={s.alice: hidden})
    posted = await s.bob.send(staff, "", attachments=[("minutes.ogg", opus())])
    link = f"https://discord.com/channels/{s.guild.id}/{staff.id}/{posted.id}"
    refused = await s.alice.slash(s.channel, "transcribe", link=link)
    await harness.finish()
    assert "cannot read" in refused.response.content
    assert transcribed(harness) == []
    allowed = await s.bob.slash(s.channel, "transcribe", link=link)
    await harness.finish()
    assert "we meet on friday" in allowed.response.content
    assert len(transcribed(harness)) == 1


async def test_the_transcribe_menu_hears_a_voice_message(harness: Harness) -> None:
    s = await scene(harness)
    await voice_message(harness, s.bob, s.channel)
    (message,) = [m for m in s.channel.history() if m.author.id == s.bob.id]
    result = await s.alice.context_menu(s.channel, "Transcribe", message)
    await harness.finish()
    assert "we meet on friday" in result.response.content
    (request,) = transcribed(harness)
    assert request.expected_seconds == 2.0 and request.language is None
    text = await s.bob.send(s.channel, "no audio here")
    none = await s.alice.context_menu(s.channel, "Transcribe", text)
    assert none.ephemeral and "has no voice message" in none.response.content


@pytest.mark.parametrize("stack", [{"direct_messages": "all"}], indirect=True)
async def test_a_voice_message_in_a_dm_is_answered_by_chat_with_its_transcript(
    harness: Harness,
) -> None:
    s = await scene(harness)
    await s.alice.send_dm("hello")
    await harness.finish()
    dm = s.alice.user.dm_channel
    answer = await voice_message(harness, s.alice, dm)
    assert answer.content.startswith("-# 🎙️\n> we meet on friday\n\necho: we meet on friday")
    *_, chat = requests(harness)
    assert chat.message == "we meet on friday"
    # Read back later, the voice message is its transcript and the answer is the model's own.
    await s.alice.send_dm("when?")
    await harness.finish()
    assert requests(harness)[-1].history[-2:] == (
        ChatTurn("user", "we meet on friday", "alice"),
        ChatTurn("assistant", "echo: we meet on friday"),
    )


async def test_a_voice_message_in_a_text_only_dm_is_refused_in_one_line(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.send_dm("hello")
    await harness.finish()
    refusal = await voice_message(harness, s.alice, s.alice.user.dm_channel)
    assert "servers only" in refusal.content and transcribed(harness) == []


@pytest.mark.parametrize("stack", [{"direct_messages": "all"}], indirect=True)
async def test_spoken_answers_are_real_voice_messages_when_asked_for(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.send_dm("hello")
    await harness.finish()
    dm = s.alice.user.dm_channel
    await voice_message(harness, s.alice, dm)
    assert harness.tasks["speak"].runs == []  # off by default
    turned_on = await s.alice.user.slash("voice replies", on=True)
    await harness.finish()
    assert "now answered with a voice message" in turned_on.response.content
    await voice_message(harness, s.alice, dm)
    await harness.finish()
    (spoken,) = await spoken_answers(harness, dm)
    ((speech,),) = harness.tasks["speak"].runs
    assert speech.text == "echo: we meet on friday"
    (attachment,) = spoken.attachments
    assert attachment.filename == "voice-message.ogg" and spoken.content == ""
    (post,) = [
        e for e in harness.env.http_requests
        if e.method == "POST" and e.path.endswith(f"/channels/{dm.id}/messages")
        and isinstance(e.json, dict) and e.json.get("flags", 0) & VOICE_FLAG
    ]  # fmt: skip
    (sent,) = post.json["attachments"]
    assert sent["duration_secs"] == 0.1 and base64.b64decode(sent["waveform"]) == WAVEFORM


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_auto_transcribe_is_set_per_channel_by_managers(harness: Harness) -> None:
    s = await scene(harness)
    owner = await manager(harness, s.guild)
    await voice_message(harness, s.bob, s.channel)
    assert transcribed(harness) == []  # off by default
    await owner.slash(s.channel, "config auto_transcribe", channel=s.channel, on=True)
    await harness.finish()
    transcript = await voice_message(harness, s.bob, s.channel)
    assert "we meet on friday" in transcript.content
    (request,) = transcribed(harness)
    assert request.expected_seconds == 2.0
    await harness.bot.usage.flush()
    rows = [row for row in harness.rows() if row["task"] == "transcribe"]
    assert [(row["user_id"], row["status"]) for row in rows] == [(str(s.bob.id), "ok")]
    assert transcript is not None
    # The speaker, and only they, can hear it again in the language they spoke.
    stranger = await s.alice.click(transcript, label="Another language")
    assert stranger.ephemeral and "Only the member who spoke" in stranger.response.content
    form = await s.bob.click(transcript, label="Another language")
    again = await s.bob.submit_modal(form, {"language": "German"})
    await harness.finish()
    assert "German" in again.response.content and "we meet on friday" in again.response.content
    assert [r.language for r in transcribed(harness)] == [None, "de"]
    wrong = await s.bob.submit_modal(
        await s.bob.click(transcript, label="Another language"), {"language": "klingon"}
    )
    assert wrong.ephemeral and "unknown language" in wrong.response.content
    shown = await owner.slash(s.channel, "config show")
    assert f"transcribed in: <#{s.channel.id}>" in shown.response.content
    await owner.slash(s.channel, "config auto_transcribe", channel=s.channel, on=False)
    await harness.finish()
    await voice_message(harness, s.bob, s.channel)
    assert len(transcribed(harness)) == 2


@pytest.mark.parametrize(
    "stack", [{"direct_messages": "all", "quotas": {"chat": 1}}], indirect=True
)
async def test_a_voice_message_past_the_chat_quota_is_not_transcribed(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.send_dm("hello")
    await harness.finish()
    refusal = await voice_message(harness, s.alice, s.alice.user.dm_channel)
    assert refusal is not None and "used all 1 chat requests" in refusal.content
    assert transcribed(harness) == [] and len(requests(harness)) == 1


async def test_a_voice_reply_to_an_answer_continues_the_conversation(harness: Harness) -> None:
    """Without the Message Content intent: a reply to the bot reaches it whole."""
    s = await scene(harness)
    await s.alice.send(s.channel, mention(harness, "what is osmosis?"))
    await harness.finish()
    (first,) = answers(harness, s.channel)
    answer = await voice_message(harness, s.alice, s.channel, reply_to=first)
    assert answer is not None and answer.content.startswith("-# 🎙️\n> we meet on friday\n\n")
    assert requests(harness)[-1].history == (
        ChatTurn("user", "what is osmosis?", "alice"),
        ChatTurn("assistant", "echo: what is osmosis?"),
    )


@pytest.mark.parametrize("stack", [{"direct_messages": "all"}], indirect=True)
async def test_a_transcript_is_forgotten_with_its_conversation(harness: Harness) -> None:
    s = await scene(harness)
    usage = harness.bot.usage
    clock = Clock(usage.clock())
    usage.clock = clock
    await s.alice.send_dm("hello")
    await harness.finish()
    await voice_message(harness, s.alice, s.alice.user.dm_channel)
    with sqlite3.connect(harness.db) as db:
        assert db.execute("SELECT text FROM transcripts").fetchall() == [("we meet on friday",)]
    clock.now += usage.conversations_ttl_s + 1
    await usage.apply_retention()
    with sqlite3.connect(harness.db) as db:
        assert db.execute("SELECT * FROM transcripts").fetchall() == []


async def test_spoken_answers_in_a_server_need_its_managers_and_the_member(
    harness: Harness,
) -> None:
    s = await scene(harness)
    owner = await manager(harness, s.guild)
    chosen = await s.alice.slash(s.channel, "voice replies", on=True)
    assert "this server answers voice messages in text only" in chosen.response.content
    await s.alice.send(s.channel, mention(harness, "hello"))
    await harness.finish()
    (first,) = answers(harness, s.channel)
    await voice_message(harness, s.alice, s.channel, reply_to=first)
    assert harness.tasks["speak"].runs == []  # the server has not allowed it
    await owner.slash(s.channel, "config voice_replies", on=True)
    await harness.finish()
    await voice_message(harness, s.alice, s.channel, reply_to=first)
    (spoken,) = await spoken_answers(harness, s.channel)
    (written,) = [m for m in answers(harness, s.channel) if m.content.startswith("-# 🎙️")][1:]
    assert spoken.reference is not None and spoken.reference.message_id == written.id
    # A reply to the spoken answer goes on with the conversation.
    await voice_message(harness, s.alice, s.channel, reply_to=spoken)
    assert len(requests(harness)) == 4
    assert requests(harness)[-1].history[-1] == ChatTurn("assistant", "echo: we meet on friday")


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_auto_transcribe_stays_out_of_conversations_and_private_servers(
    harness: Harness,
) -> None:
    s = await scene(harness)
    owner = await manager(harness, s.guild)
    await owner.slash(s.channel, "config auto_transcribe", channel=s.channel, on=True)
    await s.alice.send(s.channel, mention(harness, "hello"))
    await harness.finish()
    (answer,) = answers(harness, s.channel)
    await voice_message(harness, s.alice, s.channel, reply_to=answer)
    assert len(transcribed(harness)) == 1 and len(requests(harness)) == 2  # heard once, by chat
    transcript = await voice_message(harness, s.bob, s.channel)
    assert transcript is not None and len(requests(harness)) == 2
    await voice_message(harness, s.alice, s.channel, reply_to=transcript)
    assert len(transcribed(harness)) == 3 and len(requests(harness)) == 2  # a transcript, no chat
    private = await owner.slash(s.channel, "config replies", visibility="private")
    await harness.finish()
    assert private is not None
    before = len(answers(harness, s.channel))
    await voice_message(harness, s.bob, s.channel)
    assert len(transcribed(harness)) == 3 and len(answers(harness, s.channel)) == before


async def test_the_transcribe_menu_reads_with_the_members_permissions(harness: Harness) -> None:
    s = await scene(harness)
    no_history = discord.PermissionOverwrite(read_message_history=False)
    notes = s.guild.create_text_channel("notes", overwrites={s.alice: no_history})
    await voice_message(harness, s.bob, notes)
    (message,) = [m for m in notes.history() if m.author.id == s.bob.id]
    refused = await s.alice.context_menu(notes, "Transcribe", message)
    await harness.finish()
    assert "cannot read" in refused.response.content and transcribed(harness) == []
