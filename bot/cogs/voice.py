"""Speech in the study group's call: /voice join and leave, /speak said in the call,
reading a text channel aloud (/voice read, a voice per member with /voice myvoice), and the
playback queue of each server's call (``bot/calls.py``: skip your own, managers skip any or
clear).

Speech is synthesized through the executor like every /speak (same caps, quotas and fair
queue) and rendered as the call plays it where the model runs (``SpeakRequest.for_call``),
so the event loop only hands frames over; each utterance plays as soon as it and those
before it are ready. The voice connection is a
``discord.VoiceProtocol`` made by ``AssistantBot.voice_protocol``: discord.py's own
``VoiceClient`` (PyNaCl, davey and libopus), or a recording one in the tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.calls import Playback, VoiceUnavailable, voice_channel_of
from bot.commands import caller_of, is_admin, place_caller, voice_choices, voice_names
from bot.delivery import NO_MENTIONS
from bot.guilds import DIRECT_MESSAGES
from bot.read_aloud import speakable, spoken_line
from bot.voice_audio import missing_voice_support
from handlers.base import InvalidInput
from handlers.speak import SpeakRequest

if TYPE_CHECKING:
    from bot.client import AssistantBot

    Interaction = discord.Interaction[AssistantBot]

log = logging.getLogger(__name__)


class Voice(commands.GroupCog, group_name="voice", group_description="Speech in your call"):
    def __init__(self, bot: AssistantBot) -> None:
        self.bot = bot
        self.calls = bot.calls
        self._leaving: set[asyncio.Future[None]] = set()
        self._moving: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        """Per server: one join or leave at a time, so two never undo each other."""
        super().__init__()

    async def cog_unload(self) -> None:
        for playback in self.calls.playbacks.values():
            playback.close()
            await playback.voice.disconnect(force=True)
        self.calls.playbacks.clear()

    @app_commands.command(description="Join your voice channel to speak there")
    @app_commands.guild_only()
    async def join(self, interaction: Interaction) -> None:
        assert interaction.guild is not None
        channel = voice_channel_of(interaction.user)
        if channel is None:
            raise VoiceUnavailable("join a voice channel first, then ask me to join it")
        rights = channel.permissions_for(interaction.guild.me)
        if not (rights.connect and rights.speak):
            raise VoiceUnavailable(
                f"I may not connect and speak in {channel.mention}; a server manager can "
                "give me the Connect and Speak permissions there"
            )
        if self.bot.voice_protocol is discord.VoiceClient and (why := missing_voice_support()):
            raise VoiceUnavailable(why)
        guild = interaction.guild
        current = guild.voice_client
        here = getattr(current, "channel", None)
        moving = current is not None and here is not None and here.id != channel.id
        if moving and self._listeners(here) and not is_admin(interaction):
            raise VoiceUnavailable(
                f"I am speaking in {here.mention} and people are listening there; a "
                "server manager can move me"
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with self._moving[guild.id]:
            playback = self.calls.playbacks.get(guild.id)
            if playback is not None and getattr(playback.voice.channel, "id", None) == channel.id:
                await interaction.followup.send(
                    f"🔊 I am in {channel.mention} already.",
                    ephemeral=True,
                    allowed_mentions=NO_MENTIONS,
                )
                self._record(interaction, "join")
                return
            if (current := guild.voice_client) is not None:
                await self._leave(guild.id, current)
            voice = await channel.connect(cls=self.bot.voice_protocol, self_deaf=True)
            guild_id = guild.id
            joined = Playback(
                voice,
                self.bot.settings.voice.idle_minutes * 60,
                lambda: self._let_go(guild_id, joined),
            )
            self.calls.playbacks[guild_id] = joined
        await interaction.followup.send(
            f"🔊 Joined {channel.mention}: `/speak` there is said aloud.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )
        self._record(interaction, "join")

    @app_commands.command(description="Leave the voice channel")
    @app_commands.guild_only()
    async def leave(self, interaction: Interaction) -> None:
        assert interaction.guild is not None
        guild = interaction.guild
        voice = guild.voice_client
        if voice is None:
            raise VoiceUnavailable("I am not in a voice channel here")
        self._check_in_call(interaction, "take me out of")
        await interaction.response.defer(ephemeral=True, thinking=True)  # Discord confirms
        async with self._moving[guild.id]:
            if (voice := guild.voice_client) is not None:
                await self._leave(guild.id, voice)
        await interaction.followup.send("👋 Left the call.", ephemeral=True)
        self._record(interaction, "leave")

    def _check_in_call(self, interaction: Interaction, what: str) -> None:
        """Only someone in the call (or a manager) changes what it hears; an empty call is
        anyone's."""
        assert interaction.guild is not None
        here = getattr(interaction.guild.voice_client, "channel", None)
        member = voice_channel_of(interaction.user)
        if here is None or is_admin(interaction) or not self._listeners(here):
            return
        if member is None or member.id != here.id:
            raise VoiceUnavailable(f"join {here.mention} to {what} the call")

    @staticmethod
    def _listeners(channel: Any) -> list[discord.Member]:
        return [m for m in getattr(channel, "members", []) if not m.bot]

    async def _leave(self, guild_id: int, voice: discord.VoiceProtocol) -> None:
        playback = self.calls.playbacks.pop(guild_id, None)
        if playback is not None:
            playback.close()
        await voice.disconnect(force=True)

    def _let_go(self, guild_id: int, playback: Playback) -> None:
        """Leave a call nobody uses (idle, or empty), from a timer or an event; only the
        call this playback is in, not one joined since."""

        async def leave() -> None:
            async with self._moving[guild_id]:
                if self.calls.playbacks.get(guild_id) is playback:
                    log.info("leaving the voice channel of server %d: nothing said", guild_id)
                    await self._leave(guild_id, playback.voice)

        leaving = asyncio.ensure_future(leave())
        self._leaving.add(leaving)
        leaving.add_done_callback(self._leaving.discard)

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """Leave when the last member leaves the call; forget a call the bot was taken out
        of (disconnected by a moderator)."""
        guild = member.guild
        playback = self.calls.playbacks.get(guild.id)
        if playback is None:
            return
        channel = getattr(playback.voice, "channel", None)
        if member.id == guild.me.id and after.channel is None:
            if before.channel is not None and getattr(channel, "id", None) != before.channel.id:
                return  # the end of a call left for the one the bot is in now
            self.calls.playbacks.pop(guild.id, None)
            playback.close()
            return
        if isinstance(channel, discord.VoiceChannel) and not self._listeners(channel):
            async with self._moving[guild.id]:
                if self.calls.playbacks.get(guild.id) is playback and not self._listeners(channel):
                    log.info("leaving the voice channel of server %d: nobody is in it", guild.id)
                    await self._leave(guild.id, playback.voice)

    @app_commands.command(
        description="Skip what is being said, or your next in line (any, for managers)"
    )
    @app_commands.guild_only()
    async def skip(self, interaction: Interaction) -> None:
        playback = self.calls.playbacks.get(interaction.guild_id or 0)
        skipped = playback.skip(interaction.user.id, is_admin(interaction)) if playback else None
        if skipped is None:
            raise VoiceUnavailable("nothing of yours is being said or waiting to be")
        done = "⏭️ Skipped." if skipped == "playing" else "⏭️ Dropped your next in line."
        await interaction.response.send_message(done, ephemeral=True)
        self._record(interaction, "skip")

    @app_commands.command(description="Drop everything waiting to be said (server managers)")
    @app_commands.guild_only()
    async def clear(self, interaction: Interaction) -> None:
        playback = self.calls.playbacks.get(interaction.guild_id or 0)
        if not is_admin(interaction):
            raise VoiceUnavailable("only server managers can clear what everyone asked for")
        dropped = playback.clear() if playback is not None else 0
        await interaction.response.send_message(f"🧹 Dropped {dropped} waiting.", ephemeral=True)
        self._record(interaction, "clear")

    @app_commands.command(description="Read a text channel's new messages aloud in the call")
    @app_commands.describe(
        channel="The text channel (empty: stop reading)",
        max_chars="Longest part of a message that is read, here from now on (server managers)",
    )
    @app_commands.guild_only()
    async def read(
        self,
        interaction: Interaction,
        channel: discord.TextChannel | None = None,
        max_chars: app_commands.Range[int, 20, 2000] | None = None,
    ) -> None:
        assert interaction.guild is not None
        playback = self.calls.playbacks.get(interaction.guild.id)
        if playback is None:
            raise VoiceUnavailable("I am not in a voice channel here: `/voice join` first")
        self._check_in_call(interaction, "change what is read in")
        if max_chars is not None and not is_admin(interaction):
            raise VoiceUnavailable("only server managers set how much of a message is read")
        if channel is None and max_chars is None:
            playback.reading = None
            await interaction.response.send_message("🔇 Stopped reading aloud.", ephemeral=True)
            self._record(interaction, "read")
            return
        if channel is not None:
            self._check_readable(interaction, channel)
        if max_chars is not None:
            await interaction.response.defer(ephemeral=True, thinking=True)  # a disk write
            await self.bot.guild_settings.update(
                interaction.guild.id, read_aloud_max_chars=max_chars
            )
        most = self._max_chars(interaction.guild.id)
        if channel is not None:
            playback.reading = channel.id
            said = (
                f"📖 Reading {channel.mention} aloud, each message as its author's voice, "
                f"up to {most} characters of it."
            )
        else:
            said = f"📖 Up to {most} characters of a message are read aloud here."
        if interaction.response.is_done():
            await interaction.followup.send(said, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.response.send_message(
                said, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        self._record(interaction, "read")

    def _check_readable(self, interaction: Interaction, channel: discord.TextChannel) -> None:
        assert interaction.guild is not None
        if not self._public(channel, interaction.user):
            raise VoiceUnavailable(
                f"{channel.mention} is not open to everyone, and the call may hear it: I read "
                "aloud only channels every member can read"
            )
        if not channel.permissions_for(interaction.guild.me).view_channel:
            raise VoiceUnavailable(f"I cannot see {channel.mention}, so I cannot read it")
        if not self.bot.settings.read_messages:
            raise VoiceUnavailable(
                "reading aloud needs the Message Content intent: the bot's owner enables it "
                "on the Bot page and sets BOT_READ_MESSAGES=true"
            )

    def _max_chars(self, guild_id: int) -> int:
        """Longest part of a message read aloud here."""
        chosen = self.bot.guild_settings.get(guild_id).read_aloud_max_chars
        return chosen or self.bot.settings.voice.max_chars

    @app_commands.command(description="Answer my voice messages with a voice message too")
    @app_commands.describe(on="Spoken answers to your voice messages (where the server allows)")
    async def replies(self, interaction: Interaction, on: bool) -> None:
        where = interaction.guild_id if not self.bot.is_private(interaction) else None
        key = DIRECT_MESSAGES if where is None else where
        await interaction.response.defer(ephemeral=True, thinking=True)  # a disk write
        store = self.bot.guild_settings
        members = set(store.get(key).voice_reply_members)
        members = members | {interaction.user.id} if on else members - {interaction.user.id}
        await store.update(key, voice_reply_members=sorted(members))
        if not on:
            done = "🔇 Your voice messages are answered in text only."
        elif where is None and self.bot.settings.direct_messages != "all":
            done = (
                "🗣️ Noted, but this bot does not hear voice messages in direct messages; "
                "talk to it in a server (its owner can set BOT_DIRECT_MESSAGES=all)."
            )
        elif where is not None and not store.get(where).voice_replies:
            done = (
                "🗣️ Noted, but this server answers voice messages in text only: its managers "
                "can turn spoken answers on with /config voice_replies."
            )
        else:
            done = "🗣️ Your voice messages are now answered with a voice message too."
        await interaction.followup.send(done, ephemeral=True)
        self._record(interaction, "replies")

    @app_commands.command(description="The voice you are read aloud with here")
    @app_commands.describe(voice="A voice (empty: the bot's default)")
    @app_commands.guild_only()
    async def myvoice(self, interaction: Interaction, voice: str | None = None) -> None:
        assert interaction.guild_id is not None
        if voice is not None and voice not in voice_names(self.bot):
            raise InvalidInput("voice", "choose one of the voices offered")
        await interaction.response.defer(ephemeral=True, thinking=True)  # a disk write
        store = self.bot.guild_settings
        voices = dict(store.get(interaction.guild_id).member_voices)
        voices.pop(interaction.user.id, None)
        if voice is not None:
            voices[interaction.user.id] = voice
        await store.update(interaction.guild_id, member_voices=voices)
        await interaction.followup.send(
            f"🗣️ You are read with the voice `{voice}`." if voice else "🗣️ The default voice.",
            ephemeral=True,
        )
        self._record(interaction, "myvoice")

    @myvoice.autocomplete("voice")
    async def _voices(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return voice_choices(self.bot, current)

    @staticmethod
    def _public(channel: Any, member: Any = None) -> bool:
        """Whoever is in the call may hear it: only a channel that everyone in the server
        (and the member asking) can read is read aloud."""
        readers = [channel.guild.default_role] + ([member] if member is not None else [])
        rights = [channel.permissions_for(reader) for reader in readers]
        return all(p.view_channel and p.read_message_history for p in rights)

    def _record(self, interaction: Interaction, command: str) -> None:
        """One usage row, as every command leaves."""
        self.bot.invoker.record_command(f"voice-{command}", caller_of(interaction))

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A new message in the channel read aloud: said in its author's voice, admitted
        like their own /speak (their caps and quotas)."""
        guild = message.guild
        playback = self.calls.playbacks.get(guild.id) if guild is not None else None
        if playback is None or playback.reading != message.channel.id or message.author.bot:
            return
        assert guild is not None
        if not self._public(message.channel):
            log.info("stopped reading aloud in server %d: the channel was closed", guild.id)
            playback.reading = None
            return
        names = {f"@{m.id}": m.display_name for m in message.mentions}
        names |= {f"@&{r.id}": r.name for r in message.role_mentions}
        names |= {f"#{c.id}": c.name for c in message.channel_mentions}
        # Only the start of a long message is ever said: the rest is not worked through.
        text = speakable(message.content[: 3 * self.bot.settings.speak.max_chars], names)
        if not text:
            return
        author = message.author
        said = spoken_line(
            speakable(author.display_name) or author.name,
            text,
            self._max_chars(guild.id),
            self.bot.settings.voice.say_names,
            fits=self.bot.settings.speak.max_chars,
        )
        voice = self.bot.guild_settings.get(guild.id).member_voices.get(author.id)
        caller = dataclasses.replace(  # the usage log tells read-aloud from /speak
            place_caller(author, message.channel, message.channel.id, guild.id, False),
            source="voice",
        )
        try:
            handle = self.bot.invoker.submit(
                "speak", SpeakRequest(said, voice, for_call=True), caller
            )
        except Exception as exc:  # busy, over quota, invalid: that message is not read
            log.info("not reading a message aloud: %s", exc)
            return
        self.calls.queue(playback, author.id, handle)


async def setup(bot: AssistantBot) -> None:
    await bot.add_cog(Voice(bot))
