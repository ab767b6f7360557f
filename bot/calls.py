"""The bot's voice calls, one per server: a playback queue that says speech in order on the
server's voice connection. ``/speak`` and reading aloud queue speech here; ``/voice`` joins,
leaves, skips and clears (``bot/cogs/voice.py``). Held by the bot as ``bot.calls``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import discord

from bot.delivery import Reply
from handlers.base import HandlerError

if TYPE_CHECKING:
    from bot.executor import JobHandle

log = logging.getLogger(__name__)


class VoiceUnavailable(HandlerError):
    """Voice cannot work here; the message says why, in one line."""


def pcm_source(pcm: bytes) -> discord.PCMAudio:
    """Ready 48 kHz stereo PCM (whole 20 ms frames, ``handlers.speak.call_pcm``), which
    discord.py's player reads a frame at a time."""
    return discord.PCMAudio(io.BytesIO(pcm))


@dataclass(eq=False)
class Utterance:
    requester_id: int
    audio: asyncio.Future[bytes]
    """Voice PCM, once synthesized; an exception if that failed."""
    job: JobHandle | None = None
    """The speak job making it: cancelled when the utterance is dropped, so that nobody's
    device time or quota goes to speech nobody will hear."""

    def drop(self, reason: str) -> None:
        self.audio.cancel()
        if self.job is not None:
            self.job.cancel(reason)


@dataclass
class Playback:
    """One server's utterances, played in order on its voice connection: each starts when
    it is ready and the one before it has ended. Driven by callbacks (the speech's future,
    the player's end, a timer), so nothing waits on the event loop between utterances."""

    voice: discord.VoiceProtocol
    idle_s: float
    on_idle: Callable[[], None]
    """Told when nothing was said or waiting for ``idle_s``."""
    reading: int | None = None
    """The text channel whose new messages are read aloud, if any."""
    waiting: deque[Utterance] = field(default_factory=deque)
    current: Utterance | None = None
    closed: bool = False
    _idle: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self._rest()

    def add(self, utterance: Utterance) -> None:
        self.waiting.append(utterance)
        self._rest()
        utterance.audio.add_done_callback(lambda _: self._advance())

    def _rest(self) -> None:
        """(Re)start the idle timer; it only fires while nothing plays or waits."""
        if self._idle is not None:
            self._idle.cancel()
        if not self.closed:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.idle_s, self._idle_over)

    def _idle_over(self) -> None:
        if self.closed:
            return
        if self.current is not None or self.waiting:
            self._rest()
            return
        self.on_idle()

    def skip(self, member_id: int, manager: bool) -> Literal["playing", "waiting"] | None:
        """Stop what is playing if it is the member's (anyone's, for a manager); else drop
        the member's next utterance still waiting. Which it was, or None."""
        current = self.current
        if current is not None and (manager or current.requester_id == member_id):
            self.voice.stop()  # type: ignore[attr-defined]
            return "playing"
        for utterance in self.waiting:
            if utterance.requester_id == member_id:
                self.waiting.remove(utterance)
                utterance.drop("skipped by the requester")
                self._advance()
                return "waiting"
        return None

    def clear(self, reason: str = "dropped from the call's queue by a server manager") -> int:
        """Drop everything waiting and stop what plays; how many were dropped."""
        dropped = list(self.waiting)
        self.waiting.clear()
        for utterance in dropped:
            utterance.drop(reason)
        if self.current is not None:
            self.voice.stop()  # type: ignore[attr-defined]
        return len(dropped)

    def close(self) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        self.clear("the bot left the call before it was said")

    def _advance(self) -> None:
        """Play the next utterance, if nothing plays and it is ready."""
        while not self.closed and self.current is None and self.waiting:
            utterance = self.waiting[0]
            if not utterance.audio.done():
                return
            self.waiting.popleft()
            audio = utterance.audio
            if audio.cancelled() or audio.exception() is not None:
                continue  # the job failed or was cancelled: its reply says so
            self._start(utterance, audio.result())

    def _start(self, utterance: Utterance, pcm: bytes) -> None:
        loop = asyncio.get_running_loop()

        def after(error: Exception | None) -> None:  # on the player's thread
            if error is not None:
                log.warning("playing speech failed: %s", error)
            with contextlib.suppress(RuntimeError):  # the bot's loop has closed
                loop.call_soon_threadsafe(self._ended, utterance)

        try:
            self.voice.play(pcm_source(pcm), after=after)  # type: ignore[attr-defined]
        except Exception as exc:  # discord.ClientException while the connection reconnects
            log.warning("cannot play speech in the call, so it is skipped: %s", exc)
            return
        self.current = utterance

    def _ended(self, utterance: Utterance) -> None:
        if self.current is utterance:
            self.current = None
        self._rest()
        self._advance()


class Calls:
    """Each server's call (its ``Playback``), by server id."""

    def __init__(self) -> None:
        self.playbacks: dict[int, Playback] = {}

    def with_member(self, guild_id: int | None, member: Any) -> Playback | None:
        """The call ``member`` is in with the bot in this server, if any (not one still
        connecting or being left)."""
        playback = self.playbacks.get(guild_id or 0)
        here = getattr(playback.voice, "channel", None) if playback is not None else None
        channel = voice_channel_of(member)
        if playback is None or playback.closed or here is None or channel is None:
            return None
        return playback if here.id == channel.id else None

    def say(self, playback: Playback, requester_id: int, handle: JobHandle) -> None:
        """Queue the job's speech in the call; it plays when it and those before it are."""
        if playback.closed:  # left while the reply was being deferred
            handle.cancel("the bot left the call before it was said")
            return
        self.queue(playback, requester_id, handle)

    @staticmethod
    def queue(playback: Playback, requester_id: int, handle: JobHandle) -> None:
        """The job's speech, in line: a ``for_call`` request's, rendered for the call where
        the model ran, so it plays as it comes."""
        audio: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def synthesized() -> None:
            if audio.done():  # dropped meanwhile
                return
            if handle.error is not None:
                audio.set_exception(handle.error)
            else:
                audio.set_result(handle.peek_result().pcm)

        handle.add_done_callback(synthesized)
        playback.add(Utterance(requester_id, audio, handle))


def voice_channel_of(member: Any) -> discord.VoiceChannel | None:
    """The voice channel a member is in, as the gateway last told."""
    channel = getattr(getattr(member, "voice", None), "channel", None)
    return channel if isinstance(channel, discord.VoiceChannel) else None


def speech_render(channel: str) -> Callable[[Any], Reply]:
    """The reply under a /speak for the call: where, and how long. It comes when the speech
    is ready, which may be before its turn to be said."""

    def render(result: Any) -> Reply:
        return Reply(note=f"-# 🔊 in line to be said in {channel} · {result.seconds:.1f} s")

    return render
