"""Spoken answers: a member who talked to the bot in a voice message may be answered in one.

Off unless both the server (``/config voice_replies``) and the member (``/voice replies``)
turned it on; in direct messages the member's own choice is enough. The text answer is
always posted (it is what the conversation remembers); the voice message follows it, made
by the speak task under the member's quota, with their chosen voice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord

from bot.executor import JobHandle
from bot.guilds import DIRECT_MESSAGES, GuildSettingsStore
from bot.invocations import Caller, Invoker
from bot.read_aloud import speakable, spoken_line
from bot.voice_messages import send_voice_message
from handlers.speak import SpeakRequest

log = logging.getLogger(__name__)


class VoiceReplies:
    def __init__(self, invoker: Invoker, guilds: GuildSettingsStore, max_chars: int) -> None:
        self.invoker = invoker
        self.guilds = guilds
        self.max_chars = max_chars
        """The longest text the speak task takes: a longer answer is said in part."""
        self._pending: set[asyncio.Task[None]] = set()

    def wanted(self, message: discord.Message) -> bool:
        member = message.author.id
        if message.guild is None:
            return member in self.guilds.get(DIRECT_MESSAGES).voice_reply_members
        guild = self.guilds.get(message.guild.id)
        return guild.voice_replies and member in guild.voice_reply_members

    def answer(self, message: discord.Message, caller: Caller, chat: JobHandle) -> None:
        """Once ``chat`` has answered ``message``, say the answer back in a voice message,
        if the server and the member want that."""
        if not self.wanted(message):
            return
        task = asyncio.create_task(self._answer(message, caller, chat))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer(self, message: discord.Message, caller: Caller, chat: JobHandle) -> None:
        try:
            answer: Any = await chat
        except Exception:
            return  # the failure is already shown where the answer would be
        text = speakable(getattr(answer, "text", ""))
        if not text:
            return
        line = spoken_line("", text, self.max_chars, say_names=False, fits=self.max_chars)
        voice = None
        if message.guild is not None:
            voice = self.guilds.get(message.guild.id).member_voices.get(message.author.id)
        try:
            with self.invoker.admit("speak", caller) as admission:
                handle = admission.submit(SpeakRequest(line, voice))
            speech = await handle
            await send_voice_message(
                message.channel, speech.ogg, speech.seconds, speech.waveform, message
            )
        except Exception as exc:  # the text answer stands; the spoken one is a bonus
            log.info("no spoken answer to message %s: %s", message.id, exc)
