"""Voice messages through SimCord: ``bot.voice_messages.send_voice_message`` against a plain
discord.py client. What reached Discord is read from SimCord's HTTP log (the parsed
``payload_json``), what Discord kept from its message store, fetched back through the bot."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import discord
import numpy as np
import pytest
import simcord
import soundfile

from bot.voice_messages import VOICE_MESSAGE_FILENAME, send_voice_message

VOICE_FLAG = 1 << 13
WAVEFORM = bytes([0, 17, 128, 255, 64, 3] * 10)


def ogg(seconds: float = 0.25) -> bytes:
    """A real Ogg/Opus file: a quiet 440 Hz tone."""
    t = np.arange(int(16000 * seconds), dtype=np.float32) / 16000
    buffer = io.BytesIO()
    samples = 0.2 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    soundfile.write(buffer, samples, 16000, format="OGG", subtype="OPUS")
    return buffer.getvalue()


@pytest.fixture
def simcord_bot() -> discord.Client:
    """A plain discord.py client: the function needs nothing of the assistant bot."""
    return discord.Client(intents=discord.Intents.default())


def posts(env: simcord.Env) -> list[simcord.types.HttpLogEntry]:
    return [
        entry
        for entry in env.http_requests
        if entry.method == "POST"
        and entry.path.startswith("/channels/")
        and entry.path.endswith("/messages")
    ]


async def test_a_reply_reaches_discord_as_a_voice_message(simcord_env: simcord.Env) -> None:
    guild = simcord_env.create_guild()
    room = guild.create_text_channel("study")
    alice = guild.add_member(simcord_env.create_user("alice"))
    asked = await alice.send(room, "say it out loud")
    channel = simcord_env.bot.get_channel(room.id)
    audio = ogg()

    sent = await send_voice_message(channel, audio, 1.5, WAVEFORM, asked)

    # What reached Discord: Discord's documented voice message payload.
    [post] = posts(simcord_env)
    assert post.path == f"/channels/{room.id}/messages"
    body: dict[str, Any] = post.json
    assert body["flags"] & VOICE_FLAG
    assert "content" not in body and "embeds" not in body
    [entry] = body["attachments"]
    assert entry["filename"] == VOICE_MESSAGE_FILENAME
    assert entry["duration_secs"] == 1.5
    assert base64.b64decode(entry["waveform"]) == WAVEFORM
    assert body["message_reference"]["message_id"] == asked.id
    assert body["allowed_mentions"]["replied_user"] is False

    # What Discord kept, fetched back through the bot.
    stored = await channel.fetch_message(sent.id)
    assert stored.flags.voice
    assert stored.content == "" and stored.embeds == []
    [attachment] = stored.attachments
    assert attachment.filename == VOICE_MESSAGE_FILENAME
    assert attachment.content_type == "audio/ogg"
    assert await attachment.read() == audio
    assert stored.reference is not None and stored.reference.message_id == asked.id
    assert stored.author.id == simcord_env.bot.user.id
    # The returned message is the one Discord stored.
    assert sent.id == stored.id and sent.flags.voice and sent.channel.id == room.id
    assert [a.filename for a in sent.attachments] == [VOICE_MESSAGE_FILENAME]


async def test_the_file_is_uploaded_as_audio_ogg(
    simcord_env: simcord.Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SimCord's log keeps only the JSON; the multipart form itself is seen at the client."""
    forms: list[list[dict[str, Any]]] = []
    http = simcord_env.bot.http
    request = http.request

    async def recording(route: Any, **kwargs: Any) -> Any:
        forms.append(list(kwargs.get("form") or []))
        return await request(route, **kwargs)

    monkeypatch.setattr(http, "request", recording)
    room = simcord_env.create_guild().create_text_channel("study")

    await send_voice_message(simcord_env.bot.get_channel(room.id), ogg(), 0.25, b"\x10" * 256)

    [form] = forms
    [file_part] = [part for part in form if "filename" in part]
    assert file_part["filename"] == VOICE_MESSAGE_FILENAME
    assert file_part["content_type"] == "audio/ogg"
    [entry] = posts(simcord_env)[0].json["attachments"]
    assert base64.b64decode(entry["waveform"]) == b"\x10" * 256


async def test_a_voice_message_in_a_thread_and_without_a_reply(simcord_env: simcord.Env) -> None:
    room = simcord_env.create_guild().create_text_channel("study")
    thread = await simcord_env.bot.get_channel(room.id).create_thread(
        name="spoken", type=discord.ChannelType.public_thread
    )
    audio = ogg(0.5)

    sent = await send_voice_message(thread, audio, 0.5, b"")

    [post] = posts(simcord_env)
    assert post.path == f"/channels/{thread.id}/messages"
    assert "message_reference" not in post.json
    [entry] = post.json["attachments"]
    assert entry["duration_secs"] == 0.5 and entry["waveform"] == ""
    stored = await thread.fetch_message(sent.id)
    assert stored.flags.voice and stored.reference is None
    assert await stored.attachments[0].read() == audio


async def test_a_member_is_sent_one_in_direct_messages(simcord_env: simcord.Env) -> None:
    """A member is Messageable too: the message goes to their DM channel, as ``send`` does."""
    guild = simcord_env.create_guild()
    alice = guild.add_member(simcord_env.create_user("alice"))
    member = await simcord_env.bot.get_guild(guild.id).fetch_member(alice.id)
    audio = ogg()

    sent = await send_voice_message(member, audio, 2.0, WAVEFORM)

    assert isinstance(sent.channel, discord.DMChannel)
    [post] = posts(simcord_env)
    assert post.path == f"/channels/{sent.channel.id}/messages"
    assert post.json["flags"] & VOICE_FLAG
    stored = await sent.channel.fetch_message(sent.id)
    assert stored.flags.voice and await stored.attachments[0].read() == audio


@pytest.mark.parametrize(
    ("audio", "seconds", "waveform", "complaint"),
    [
        (b"", 1.0, WAVEFORM, "empty"),
        (b"OggS", 0.0, WAVEFORM, "positive"),
        (b"OggS", -1.0, WAVEFORM, "positive"),
        (b"OggS", math.nan, WAVEFORM, "positive"),
        (b"OggS", math.inf, WAVEFORM, "positive"),
        (b"OggS", 1.0, bytes(257), "at most 256"),
    ],
    ids=["empty-ogg", "zero-seconds", "negative-seconds", "nan-seconds", "endless", "wide"],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    simcord_env: simcord.Env, audio: bytes, seconds: float, waveform: bytes, complaint: str
) -> None:
    room = simcord_env.create_guild().create_text_channel("study")
    with pytest.raises(ValueError, match=complaint):
        await send_voice_message(simcord_env.bot.get_channel(room.id), audio, seconds, waveform)
    assert posts(simcord_env) == []
