"""Whether this machine can join a voice channel.

Speech for a call is rendered where the model runs (``SpeakRequest.for_call``: 48 kHz
stereo 16-bit PCM); the bot only hands its frames over (``bot.calls.pcm_source``).
"""

from __future__ import annotations

import contextlib
import importlib.util

VOICE_LIBRARIES = ("nacl", "davey")
"""What discord.py's voice needs beside libopus: encryption, and Discord's end-to-end (DAVE)."""


def missing_voice_support() -> str | None:
    """What this machine lacks for voice, in one line, or None when it has everything."""
    missing = [name for name in VOICE_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        return f"voice needs the Python packages {', '.join(missing)}: `pip install -e .`"
    import discord

    if not discord.opus.is_loaded():
        with contextlib.suppress(Exception):  # a broken library: as good as a missing one
            discord.opus._load_default()
        if not discord.opus.is_loaded():
            return "voice needs libopus: `apt install libopus0` (or your system's package)"
    return None
