"""Discord voice messages, which discord.py 2.7 has no method to post.

A voice message is the playable bubble with a waveform, not an ``.ogg`` file attachment. Discord
documents its payload: the IS_VOICE_MESSAGE flag, no content or embeds, and one audio/ogg
(Opus) attachment whose entry in ``attachments`` carries ``duration_secs`` and a base64
``waveform``. This builds the message as discord.py's own ``Messageable.send`` does, adds
those two fields, and sends it through discord.py's HTTP route, so rate limits, retries and
the returned ``discord.Message`` stay discord.py's.
"""

from __future__ import annotations

import base64
import io
import json
import math

import discord
from discord.http import handle_message_parameters

VOICE_MESSAGE_FILENAME = "voice-message.ogg"
MAX_WAVEFORM_BYTES = 256
"""Discord draws at most 256 amplitude samples (one byte each, 0-255) under the bubble."""


async def send_voice_message(
    channel: discord.abc.Messageable,
    ogg: bytes,
    seconds: float,
    waveform: bytes,
    reference: discord.Message | None = None,
) -> discord.Message:
    """Post ``ogg`` (an Ogg/Opus file lasting ``seconds``) to ``channel`` as a voice message
    showing ``waveform``, replying to ``reference`` without pinging its author."""
    if not ogg:
        raise ValueError("a voice message needs audio: the ogg file is empty")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a voice message lasts a positive number of seconds, not {seconds}")
    if len(waveform) > MAX_WAVEFORM_BYTES:
        raise ValueError(f"a waveform has at most {MAX_WAVEFORM_BYTES} bytes, not {len(waveform)}")
    target = await channel._get_channel()
    state = target._state
    params = handle_message_parameters(
        file=discord.File(io.BytesIO(ogg), VOICE_MESSAGE_FILENAME),
        flags=discord.MessageFlags(voice=True),
        message_reference=(  # a reply to a message deleted meanwhile is still posted
            discord.utils.MISSING
            if reference is None
            else reference.to_reference(fail_if_not_exists=False).to_dict()
        ),
        allowed_mentions=discord.AllowedMentions.none(),
        mention_author=False,
    )
    with params:
        # With a file, discord.py serialises the payload into the ``payload_json`` part
        # (``params.payload`` is None): the voice fields go into that JSON.
        for part in params.multipart or ():
            if part["name"] == "payload_json":
                payload = json.loads(part["value"])
                payload["attachments"][0].update(
                    duration_secs=float(seconds),
                    waveform=base64.b64encode(bytes(waveform)).decode("ascii"),
                )
                part["value"] = json.dumps(payload)
            elif "filename" in part:
                part["content_type"] = "audio/ogg"
        data = await state.http.send_message(target.id, params=params)
    return state.create_message(channel=target, data=data)
