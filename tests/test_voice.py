"""Speech in a voice call through SimCord: /voice join and leave, /speak said in the call in
order, skip and clear. The connection is a recording ``VoiceProtocol`` passed through
``channel.connect(cls=...)``, the seam discord.py provides: it keeps every 20 ms frame."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import discord
import numpy as np
import pytest

from bot.calls import Playback, Utterance
from bot.read_aloud import speakable, spoken_line
from handlers.speak import CALL_FRAME_BYTES, SpeakRequest, SpeakResult, SpeakTask, call_pcm
from tests import tinymodels
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    ogg,
    scene,
    simcord_bot,
    stack,
)


class RecordingVoice(discord.VoiceProtocol):
    """Connects at once and plays by reading the source's frames, as discord.py's player
    thread does, a frame every millisecond, so that a skip can land mid-utterance."""

    made: ClassVar[list[RecordingVoice]] = []

    def __init__(self, client: discord.Client, channel: Any) -> None:
        super().__init__(client, channel)
        self.connected = False
        self.utterances: list[list[bytes]] = []
        self._stop = threading.Event()
        RecordingVoice.made.append(self)

    async def connect(self, *, timeout: float, reconnect: bool, **flags: bool) -> None:
        self.connected = True

    async def disconnect(self, *, force: bool) -> None:
        self.connected = False
        self.cleanup()

    def play(self, source: discord.AudioSource, *, after: Any) -> None:
        self._stop.clear()
        frames: list[bytes] = []
        self.utterances.append(frames)

        def run() -> None:
            while not self._stop.is_set() and (frame := source.read()):
                frames.append(frame)
                time.sleep(0.001)
            after(None)

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def tone(seconds: float) -> bytes:
    """A 440 Hz tone as a call plays it."""
    t = np.arange(round(seconds * 16_000)) / 16_000
    return call_pcm((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)


def spoken(request: SpeakRequest) -> SpeakResult:
    """Each text as a tone of as many tenths of a second as it has words: for a call only
    when the request asks for one, as the speak task renders it."""
    seconds = len(request.text.split()) / 10
    if request.for_call:
        return SpeakResult(b"", b"", 16_000, seconds, pcm=tone(seconds))
    return SpeakResult(b"RIFF", ogg(), 16_000, seconds)


@pytest.fixture
def recording(harness: Harness) -> type[RecordingVoice]:
    RecordingVoice.made.clear()
    harness.bot.voice_protocol = RecordingVoice
    harness.tasks["speak"].respond = spoken
    return RecordingVoice


async def until(condition: Any, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def in_call(harness: Harness) -> tuple[Any, Any]:
    s = await scene(harness)
    call = s.guild.create_voice_channel("study call")
    await s.alice.join_voice(call)
    await s.bob.join_voice(call)
    joined = await s.alice.slash(s.channel, "voice join")
    await harness.env.settle()
    assert joined.ephemeral and "Joined" in joined.response.content
    return s, call


async def test_join_needs_the_member_in_a_voice_channel(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s = await scene(harness)
    refused = await s.alice.slash(s.channel, "voice join")
    assert refused.ephemeral and "join a voice channel first" in refused.response.content
    assert recording.made == []


async def test_join_is_refused_where_the_bot_may_not_speak(
    harness: Harness, recording: type[RecordingVoice], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)
    call = s.guild.create_voice_channel("muted call")
    await s.alice.join_voice(call)
    listen_only = discord.Permissions(view_channel=True, connect=True, speak=False)
    monkeypatch.setattr(discord.VoiceChannel, "permissions_for", lambda self, who: listen_only)
    refused = await s.alice.slash(s.channel, "voice join")
    assert "Connect and Speak permissions" in refused.response.content
    assert recording.made == []


async def test_speak_is_said_in_the_call_in_order_then_leave(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, call = await in_call(harness)
    (voice,) = recording.made
    assert voice.connected and voice.channel.id == call.id
    first = await s.alice.slash(s.channel, "speak", text="one two three")
    second = await s.bob.slash(s.channel, "speak", text="four five")
    await harness.finish()
    await until(lambda: len(voice.utterances) == 2 and not voice._stop.is_set()
                and sum(map(len, voice.utterances)) == 25)  # fmt: skip
    assert [len(frames) for frames in voice.utterances] == [15, 10]  # 0.3 s, then 0.2 s
    assert all(len(frame) == CALL_FRAME_BYTES for frames in voice.utterances for frame in frames)
    assert b"".join(voice.utterances[0]) == tone(0.3)
    assert "said in <#" in first.response.content and "0.3 s" in first.response.content
    assert not first.response.attachments and "said in" in second.response.content

    left = await s.alice.slash(s.channel, "voice leave")
    assert "Left the call" in left.response.content and not voice.connected
    refused = await s.alice.slash(s.channel, "speak", text="hello", where="call")
    assert refused.ephemeral and "/voice join" in refused.response.content
    as_file = await s.alice.slash(s.channel, "speak", text="hello")  # not in a call: a file
    await harness.finish()
    assert as_file.response.attachments


async def test_members_skip_their_own_said_or_waiting(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, _ = await in_call(harness)
    (voice,) = recording.made
    playback = harness.bot.calls.playbacks[s.guild.id]
    long = " ".join(["a"] * 200)  # twenty seconds: 1,000 frames, a second or more here
    await s.alice.slash(s.channel, "speak", text=long)
    await until(lambda: bool(voice.utterances) and len(voice.utterances[0]) > 5)
    refused = await s.bob.slash(s.channel, "voice skip")
    assert "nothing of yours" in refused.response.content
    await s.bob.slash(s.channel, "speak", text="never heard")
    await until(lambda: len(playback.waiting) == 1 and playback.waiting[0].audio.done())
    withdrawn = await s.bob.slash(s.channel, "voice skip")
    assert "Dropped your next in line" in withdrawn.response.content
    assert not playback.waiting and len(voice.utterances) == 1  # alice's still plays
    skipped = await s.alice.slash(s.channel, "voice skip")
    assert "Skipped" in skipped.response.content
    await until(lambda: voice._stop.is_set() and playback.current is None)
    assert len(voice.utterances) == 1 and len(voice.utterances[0]) < 1000  # cut short
    await harness.finish()


async def test_a_manager_clears_and_speech_not_made_yet_never_is(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, _ = await in_call(harness)
    speak = harness.tasks["speak"]
    speak.hold = True  # the speech is still being made when the queue is cleared
    asked = await s.bob.slash(s.channel, "speak", text="never heard")
    await asyncio.to_thread(speak.entered.wait, 10)
    denied = await s.bob.slash(s.channel, "voice clear")
    assert "only server managers" in denied.response.content
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    cleared = await carol.slash(s.channel, "voice clear")
    assert "Dropped 1 waiting" in cleared.response.content
    assert await asyncio.to_thread(speak.stopped.wait, 10)  # its batch was told to stop
    await harness.finish()
    assert "dropped from the call's queue by a server manager" in asked.response.content
    assert recording.made[0].utterances == []
    await harness.bot.usage.flush()
    statuses = {row["task"]: row["status"] for row in harness.rows()}
    assert statuses["speak"] == "cancelled"


async def test_join_keeps_a_call_and_only_a_manager_takes_the_bot_from_listeners(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, call = await in_call(harness)
    again = await s.alice.slash(s.channel, "voice join")
    assert "already" in again.response.content
    assert len(recording.made) == 1 and recording.made[0].connected  # not reconnected
    other = s.guild.create_voice_channel("other call")
    dave = s.guild.add_member(harness.env.create_user("dave"))
    await dave.join_voice(other)
    refused = await dave.slash(s.channel, "voice join")
    assert "people are listening there" in refused.response.content
    left = await dave.slash(s.channel, "voice leave")
    assert f"join <#{call.id}>" in left.response.content
    assert len(recording.made) == 1 and recording.made[0].connected
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    await carol.join_voice(other)
    moved = await carol.slash(s.channel, "voice join")
    await harness.env.settle()
    assert "Joined" in moved.response.content
    first, second = recording.made
    assert not first.connected and second.connected and second.channel.id == other.id
    assert harness.bot.calls.playbacks[s.guild.id].voice is second


async def test_speak_in_the_call_is_refused_before_any_work_without_a_playback(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    """Connected but without a queue (still connecting, or being left): nothing is run or
    charged for speech that could not be said."""
    s, _ = await in_call(harness)
    harness.bot.calls.playbacks.clear()
    refused = await s.alice.slash(s.channel, "speak", text="hello", where="call")
    assert refused.ephemeral and "/voice join" in refused.response.content
    await harness.finish()
    assert harness.tasks["speak"].runs == []


async def test_without_libopus_join_says_what_is_missing_in_one_line(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord.opus, "is_loaded", lambda: False)
    monkeypatch.setattr(discord.opus, "_load_default", lambda: False)
    s = await scene(harness)  # the bot keeps discord.py's own VoiceClient
    call = s.guild.create_voice_channel("call")
    await s.alice.join_voice(call)
    refused = await s.alice.slash(s.channel, "voice join")
    assert refused.ephemeral
    assert refused.response.content == (
        "voice needs libopus: `apt install libopus0` (or your system's package)"
    )


async def test_the_bot_leaves_a_call_nobody_is_left_in(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, _ = await in_call(harness)
    (voice,) = recording.made
    await s.alice.leave_voice()
    assert voice.connected  # bob is still there
    await s.bob.leave_voice()
    await harness.env.settle()
    assert not voice.connected


class SilentVoice:
    """Plays each utterance on a thread for as long as it lasts (a millisecond a frame)."""

    def __init__(self) -> None:
        self.played: list[int] = []
        self.started = 0

    def play(self, source: discord.AudioSource, *, after: Any) -> None:
        self.started += 1

        def run() -> None:
            count = 0
            while source.read():
                count += 1
                time.sleep(0.001)
            self.played.append(count)
            after(None)

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        pass


async def test_utterances_play_in_order_whichever_is_ready_first() -> None:
    loop = asyncio.get_running_loop()
    voice = SilentVoice()
    playback = Playback(voice, idle_s=600, on_idle=lambda: None)  # type: ignore[arg-type]
    first: asyncio.Future[bytes] = loop.create_future()
    second: asyncio.Future[bytes] = loop.create_future()
    playback.add(Utterance(1, first))
    playback.add(Utterance(2, second))
    second.set_result(tone(0.2))  # ready first, said second
    await asyncio.sleep(0)  # its done-callback runs: the queue looks, and waits for the first
    assert voice.started == 0 and playback.current is None and len(playback.waiting) == 2
    first.set_result(tone(0.1))
    await until(lambda: voice.played == [5, 10] and playback.current is None)
    playback.close()


class ReconnectingVoice(SilentVoice):
    """Refuses to play once, as discord.py does while its connection reconnects."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def play(self, source: discord.AudioSource, *, after: Any) -> None:
        if not self.refused:
            self.refused += 1
            raise discord.ClientException("Not connected to voice.")
        super().play(source, after=after)


async def test_speech_that_cannot_be_played_is_skipped_and_the_queue_goes_on() -> None:
    loop = asyncio.get_running_loop()
    voice = ReconnectingVoice()
    playback = Playback(voice, idle_s=600, on_idle=lambda: None)  # type: ignore[arg-type]
    first: asyncio.Future[bytes] = loop.create_future()
    second: asyncio.Future[bytes] = loop.create_future()
    playback.add(Utterance(1, first))
    playback.add(Utterance(1, second))
    second.set_result(tone(0.2))
    await asyncio.sleep(0)
    first.set_result(tone(0.1))  # its turn: refused, and the next one follows at once
    await until(lambda: voice.played == [10] and playback.current is None)
    assert voice.refused == 1 and not playback.waiting
    playback.close()


async def test_an_idle_call_is_left_only_after_its_silence() -> None:
    """The idle timer is fired by hand here: what counts is what it does when it fires."""
    loop = asyncio.get_running_loop()
    idled: list[bool] = []
    voice = SilentVoice()
    playback = Playback(voice, idle_s=600, on_idle=lambda: idled.append(True))  # type: ignore[arg-type]
    ready: asyncio.Future[bytes] = loop.create_future()
    playback.add(Utterance(1, ready))
    playback._idle_over()  # the silence is over, but something waits to be said
    assert idled == []
    before_speech = loop.time()
    ready.set_result(tone(0.5))  # 25 frames
    await until(lambda: voice.played == [25] and playback.current is None)
    assert playback._idle is not None
    assert playback._idle.when() >= before_speech + 600  # counted from the speech's end
    playback._idle_over()
    assert idled == [True]


def test_messages_are_made_speakable() -> None:
    names = {"@42": "bob", "#7": "homework", "@&5": "tutors"}
    text = (
        "**Hi** <@!42>, see [the notes](https://x.example/n) and https://y.example/a?b=1 "
        "in <#7> for <@&5> <:party_parrot:123> ```print(1)``` `x = 2` ~~old~~ <t:1700000000:R>"
    )
    assert speakable(text, names) == (
        "Hi bob, see the notes and (a link) in homework for tutors party parrot (code) "
        "x = 2 old (a time)"
    )
    assert speakable("<@99> https://only.example") == "(a link)"  # an unknown mention: nothing
    assert speakable("the killer is ||Bob||!") == "the killer is (a spoiler) !"
    assert speakable("try </voice read:1234567890> now") == "try /voice read now"
    assert speakable("👍🎉 <@99>") == ""  # nothing to say: not sent to the model at all
    assert speakable("hi 👋🏽 there, 👨‍👩‍👧 and 1️⃣") == "hi there, and 1"
    assert speakable("30°C, №5, می‌خواهم") == "30°C, №5, می‌خواهم"  # symbols and joiners of words
    # #34: pictographs outside the old hand-written ranges; symbols with a name stay.
    assert speakable("a \u2b50 b \u231b c \u25b6\ufe0f d \u203c\ufe0f e") == "a b c d e"
    assert speakable("\u00a9 2026 Acme\u00ae, #\ufe0f\u20e3 \U0001f1eb\U0001f1f7 1") == (
        "\u00a9 2026 Acme\u00ae, # 1"
    )
    assert speakable("a \U0001f1e6 b, x\u200d\U0001f600 y, wow\u203c") == "a b, x y, wow!!"
    assert speakable("\u0915\u094d\u200d\u0937") == "\u0915\u094d\u200d\u0937"  # Hindi
    assert speakable("***_deep_*** ____ end") == "deep end"
    # Only paired markup and line markers go; names keep their characters.
    assert speakable("C# is > Java, snake_case") == "C# is > Java, snake_case"
    assert speakable("-# small\n> quoted **bold _it_**") == "small quoted bold it"
    assert speakable("ask <@42>", {"@42": "__bob__"}) == "ask __bob__"
    assert (
        spoken_line("alice", "one two three four five", 13)
        == "alice said: one two three, and so on"
    )
    assert spoken_line("alice", "short", 100, say_names=False) == "short"
    # The whole line fits the speech task's limit, "alice said:" and "and so on" included.
    fitted = spoken_line("alice", "word " * 300, 2000, fits=600)
    assert len(fitted) <= 600 and fitted.endswith("word, and so on")


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_channel_is_read_aloud_in_order_each_in_its_authors_voice(
    harness: Harness, recording: type[RecordingVoice], tmp_path: Path
) -> None:
    harness.tasks["speak"].real = SpeakTask(
        voices=str(tinymodels.build_voices_npy(tmp_path / "voices.npy"))
    )
    s, _ = await in_call(harness)
    (voice,) = recording.made
    chosen = await s.alice.slash(s.channel, "voice myvoice", voice="voice1")
    assert "voice1" in chosen.response.content
    reading = await s.alice.slash(s.channel, "voice read", channel=s.channel)
    assert "Reading" in reading.response.content
    await s.alice.send(s.channel, f"Hello <@{s.bob.id}> see https://x.example")
    await s.bob.send(s.channel, "**bold** move")
    await s.alice.send(s.channel, "third")
    await harness.finish()
    await until(lambda: len(voice.utterances) == 3 and not voice._stop.is_set())
    spoken = [(r.text, r.voice) for run in harness.tasks["speak"].runs for r in run]
    assert spoken == [
        ("alice said: Hello bob see (a link)", "voice1"),
        ("bob said: bold move", None),
        ("alice said: third", "voice1"),
    ]
    words = [len(text.split()) for text, _ in spoken]  # a tenth of a second per word
    await until(lambda: [len(f) for f in voice.utterances] == [5 * n for n in words])

    await s.alice.slash(s.channel, "voice read")  # stop
    await s.bob.send(s.channel, "not read")
    await harness.finish()
    assert len(harness.tasks["speak"].runs) == 3


async def test_reading_aloud_needs_the_message_content_intent(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, _ = await in_call(harness)
    refused = await s.alice.slash(s.channel, "voice read", channel=s.channel)
    assert refused.ephemeral and "BOT_READ_MESSAGES=true" in refused.response.content


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_channel_not_everyone_can_read_is_not_read_aloud(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    """The call may hear it: a private channel would reach people who cannot read it."""
    s, _ = await in_call(harness)
    hidden = {s.guild.default_role: discord.PermissionOverwrite(view_channel=False),
              s.alice: discord.PermissionOverwrite(view_channel=True)}  # fmt: skip
    staff = s.guild.create_text_channel("staff", overwrites=hidden)
    refused = await s.alice.slash(s.channel, "voice read", channel=staff)
    assert refused.ephemeral and "not open to everyone" in refused.response.content
    await s.alice.send(staff, "the exam answers")
    await harness.finish()
    assert harness.tasks["speak"].runs == []


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_servers_read_aloud_limit_is_set_by_managers_and_fits_the_speech_task(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, _ = await in_call(harness)
    denied = await s.alice.slash(s.channel, "voice read", channel=s.channel, max_chars=40)
    assert "only server managers" in denied.response.content
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    reading = await carol.slash(s.channel, "voice read", channel=s.channel, max_chars=40)
    assert "up to 40 characters" in reading.response.content
    assert harness.bot.guild_settings.get(s.guild.id).read_aloud_max_chars == 40
    await s.alice.send(s.channel, "word " * 300)  # 1,500 characters
    await harness.finish()
    await carol.slash(s.channel, "voice read", channel=s.channel, max_chars=2000)
    await s.alice.send(s.channel, "word " * 300)  # more than /speak takes (600)
    await harness.finish()
    short, long = [r.text for run in harness.tasks["speak"].runs for r in run]
    assert short == "alice said: " + " ".join(["word"] * 8) + ", and so on"
    assert 590 <= len(long) <= 600 and long.endswith(", and so on")

    # The limit alone changes, reading goes on; a manager puts it back with /config reset.
    refused = await s.alice.slash(s.channel, "voice read", max_chars=100)
    assert "only server managers" in refused.response.content
    limited = await carol.slash(s.channel, "voice read", max_chars=100)
    assert "Up to 100 characters" in limited.response.content
    shown = await carol.slash(s.channel, "config show")
    assert "- Read aloud in calls: up to 100 characters of a message" in shown.response.content
    await carol.slash(s.channel, "config reset", rule="read_aloud")
    await harness.env.settle()
    assert harness.bot.guild_settings.get(s.guild.id).read_aloud_max_chars is None
    await s.alice.send(s.channel, "still read")
    await harness.finish()
    assert harness.tasks["speak"].runs[-1][0].text == "alice said: still read"


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_reading_stops_when_the_channel_is_closed_later(
    harness: Harness, recording: type[RecordingVoice]
) -> None:
    s, _ = await in_call(harness)
    await s.alice.slash(s.channel, "voice read", channel=s.channel)
    channel = harness.bot.get_channel(s.channel.id)
    assert isinstance(channel, discord.TextChannel)
    alice = channel.guild.get_member(s.alice.id) or discord.Object(s.alice.id)
    for still_in in (channel.guild.me, alice):  # she still writes there, the bot still sees
        await channel.set_permissions(still_in, view_channel=True)
    await channel.set_permissions(channel.guild.default_role, view_channel=False)
    await harness.env.settle()
    await s.alice.send(s.channel, "now only for some")
    await harness.finish()
    assert harness.tasks["speak"].runs == []
    assert harness.bot.calls.playbacks[s.guild.id].reading is None
