"""Hearing members: the sound a message carries, turned into a transcribe request.

/transcribe, the Transcribe menu, auto-transcribe and voice messages in conversations all
take their audio here, so that every one refuses the same files with the same line, and
none downloads more than ``BOT_TRANSCRIBE__MAX_BYTES``. Decoding happens in the worker.
"""

from __future__ import annotations

from pathlib import PurePath

import discord

from bot.delivery import Reply
from bot.markdown import neutralize
from handlers.audio import clock, over
from handlers.base import InvalidInput
from handlers.languages import LANGUAGES
from handlers.transcribe import TranscribeRequest, TranscribeResult

SOUND_TYPES = ("audio/", "video/")
SOUND_SUFFIXES = frozenset(
    {".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3", ".m4a", ".aac", ".mp4", ".m4v", ".mov",
     ".webm", ".mkv", ".aif", ".aiff"}
)  # fmt: skip
"""What a file with no content type is taken to be sound by."""
QUOTE_CHARS = 1000
"""Most of a transcript quoted above a conversation's answer; the model hears all of it."""


def has_sound(attachment: discord.Attachment) -> bool:
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type:
        return content_type.startswith(SOUND_TYPES)
    return PurePath(attachment.filename).suffix.lower() in SOUND_SUFFIXES


def sound_of(message: discord.Message) -> discord.Attachment | None:
    """The message's voice message, or its first audio or video file."""
    return next((a for a in message.attachments if has_sound(a)), None)


def is_voice_message(message: discord.Message) -> bool:
    """Recorded with Discord's microphone button: only the audio, flagged as such."""
    return message.flags.voice and sound_of(message) is not None


def check_sound(attachment: discord.Attachment, max_bytes: int) -> None:
    """Refuse, before downloading, what is not sound or is too large to fetch."""
    if not has_sound(attachment):
        raise InvalidInput("file", "is not an audio or video file")
    if attachment.size > max_bytes:
        raise InvalidInput("file", over(attachment.size, max_bytes))


async def read_sound(
    attachment: discord.Attachment,
    max_bytes: int,
    language: str | None = None,
    timestamps: bool = False,
) -> TranscribeRequest:
    """The request for an attachment: checked, then downloaded (never decoded here)."""
    check_sound(attachment, max_bytes)
    try:
        audio = await attachment.read()
    except discord.HTTPException as exc:
        raise InvalidInput("file", "could not be downloaded from Discord; try again") from exc
    expected = attachment.duration if attachment.is_voice_message() else None
    return TranscribeRequest(audio, language, timestamps, expected)


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)


def render_transcript(result: TranscribeResult) -> Reply:
    """A transcript as /transcribe shows it: the words (or a line per segment with its
    times), then the language and length heard."""
    note = f"-# 🎙️ {language_name(result.language)} · {clock(result.seconds)}"
    if result.skipped:
        note += f" · {result.skipped} silent part(s) left out"
    return Reply(result.timed() if result.timestamps else result.text, note)


HEARD = "-# 🎙️"
"""The first line of a conversation's answer to a voice message; the quoted transcript
follows, then an empty line, then the answer."""


def heard_heading(text: str) -> str:
    """What a conversation's answer starts with, so the member sees what was heard: the
    transcript quoted and shortened (the model hears all of it)."""
    shown = text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"
    quoted = "\n".join(f"> {line}" for line in neutralize(shown).splitlines() if line.strip())
    return f"{HEARD}\n{quoted}\n"
