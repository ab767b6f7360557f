"""Spoken answers: a member who talked to the bot in a voice message may be answered in one.

Off unless both the server (``/config voice_replies``) and the member (``/voice replies``)
turned it on; in direct messages the member's own choice is enough. The text answer is
always posted (it is what the conversation remembers); the voice message follows it, made
by the speak task under the member's quota, with their chosen voice.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from typing import Any

import discord

from bot.conversations import ConversationStore
from bot.executor import JobHandle
from bot.guilds import DIRECT_MESSAGES, GuildSettingsStore
from bot.invocations import Caller, Invoker
from bot.read_aloud import speakable, spoken_line
from bot.voice_messages import send_voice_message
from handlers.speak import SpeakRequest

log = logging.getLogger(__name__)


class VoiceReplies:
    def __init__(
        self,
        invoker: Invoker,
        guilds: GuildSettingsStore,
        store: ConversationStore,
        max_chars: int,
        languages: Callable[[], list[str]],
    ) -> None:
        self.invoker = invoker
        self.guilds = guilds
        self.store = store
        self.max_chars = max_chars
        """The longest text the speak task takes: a longer answer is said in part."""
        self.languages = languages
        """The languages the speak task says: an answer in another is not read in a voice
        that cannot say it."""
        self._pending: set[asyncio.Task[None]] = set()

    async def settle(self) -> None:
        """Until every spoken answer under way is sent (or has failed): at unload, so that
        none is cut off, and for whoever must see them all."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def wanted(self, message: discord.Message) -> bool:
        member = message.author.id
        if message.guild is None:
            return member in self.guilds.get(DIRECT_MESSAGES).voice_reply_members
        guild = self.guilds.get(message.guild.id)
        return guild.voice_replies and member in guild.voice_reply_members

    def answer(
        self,
        message: discord.Message,
        caller: Caller,
        chat: JobHandle,
        posted: asyncio.Future[list[discord.Message]],
        conversation: str,
        language: str,
    ) -> None:
        """Once ``chat`` has answered ``message`` (heard in ``language``) and the answer is
        ``posted``, say it back in a voice message replying to it, if the server and the
        member want that; a reply to that continues ``conversation``."""
        if not self.wanted(message):
            return
        if language not in self.languages():
            log.info("no spoken answer in %s: the speak task has no voice for it", language)
            return
        channel = message.channel
        if isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            me = channel.guild.me
            if me is None or not channel.permissions_for(me).send_voice_messages:
                log.info("no spoken answer in channel %s: no Send Voice Messages", channel.id)
                return  # checked before the speech is made, so nobody is charged for it
        task = asyncio.create_task(
            self._answer(message, caller, chat, posted, conversation, language)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer(
        self,
        message: discord.Message,
        caller: Caller,
        chat: JobHandle,
        posted: asyncio.Future[list[discord.Message]],
        conversation: str,
        language: str,
    ) -> None:
        try:
            answer: Any = await chat
        except Exception:
            return  # the failure is already shown where the answer would be
        await asyncio.wait([posted])  # the written answer first: the spoken one replies to it
        if posted.cancelled() or posted.exception() is not None:
            return
        shown = posted.result()
        text = speakable(getattr(answer, "text", ""))
        if not text:
            return
        line = spoken_line("", text, self.max_chars, say_names=False, fits=self.max_chars)
        voice = None
        if message.guild is not None:
            voice = self.guilds.get(message.guild.id).member_voices.get(message.author.id)
        try:
            with self.invoker.admit("speak", caller) as admission:
                handle = admission.submit(SpeakRequest(line, voice, language))
            speech = await handle
        except Exception as exc:  # the text answer stands; the spoken one is a bonus
            log.info("no spoken answer to message %s: %s", message.id, exc)
            return
        # Under the written answer, so that a reply to it reads the answer back too.
        reference = shown[-1] if shown else message
        try:
            sent = await send_voice_message(
                message.channel, speech.ogg, speech.seconds, speech.waveform, reference
            )
        except discord.HTTPException as exc:  # made and charged: at least as a file
            log.info("a spoken answer went as a file, not a voice message: %s", exc)
            sent = await reference.reply(
                file=discord.File(io.BytesIO(speech.ogg), "answer.ogg"),
                mention_author=False,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        await self.store.record_answers(conversation, [sent.id], is_turn=False)
