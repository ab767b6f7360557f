"""The Discord bot driven through SimCord: real discord.py against an in-memory Discord.

Model work is scripted (``ScriptedTask``) so each test controls timing; the handlers' own
validation still runs, and results have the real result types.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import numpy as np
import pytest
import simcord
import soundfile
from PIL import Image

from bot.app import Services
from bot.client import AssistantBot, friendly
from bot.executor import Executor, ExecutorConfig, LocalBackend, ModelRegistry
from bot.guilds import GuildSettingsStore
from bot.invocations import Invoker
from bot.quotas import QuotaPolicy, Quotas
from bot.settings import Settings
from bot.usage import UsageLog
from handlers.base import BatchContext, LoadSpec, Task, TaskKind, raise_if_stopped
from handlers.chat import ChatResult, ChatTask
from handlers.classify import ClassifyResult, ClassifyTask
from handlers.describe import DescribeResult, DescribeTask
from handlers.imagine import ImageModelChoice, ImagineResult, ImagineTask
from handlers.sentiment import SentimentResult, SentimentTask
from handlers.speak import SpeakResult, SpeakTask
from handlers.summarize import SummarizeResult, SummarizeTask
from handlers.transcribe import Segment, TranscribeResult, TranscribeTask
from handlers.translate import TranslateResult, TranslateTask
from handlers.upscale import UpscaleResult, UpscaleTask
from tests.fakes import limits


def png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


def ogg() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1600, np.float32), 16000, format="OGG", subtype="OPUS")
    return buffer.getvalue()


WAVEFORM = bytes([0, 128, 255, 64])

RESPONSES: dict[str, Callable[[Any], Any]] = {
    "summarize": lambda r: SummarizeResult(f"summary: {r.text[:30]}", 1),
    "translate": lambda r: TranslateResult(f"[fr] {r.text}", "en", "fr"),
    "imagine": lambda r: ImagineResult(
        [png()] * r.count, r.seed or 7, 8, 8, 4, 7.5, 0, model=r.model
    ),
    "speak": lambda r: SpeakResult(b"RIFF", ogg(), 16000, 0.1, WAVEFORM),
    "sentiment": lambda r: SentimentResult("POSITIVE", 0.93),
    "classify": lambda r: ClassifyResult(list(r.labels), [1 / len(r.labels)] * len(r.labels)),
    "chat": lambda r: ChatResult(
        {"long": "word " * 1000, "huge": "x" * 9000}.get(r.message, f"echo: {r.message}"), 3, True
    ),
    "describe": lambda r: DescribeResult(
        f"{len(r.images)} image(s): a teal square", 5, len(r.images)
    ),
    "transcribe": lambda r: TranscribeResult(
        "we meet on friday",
        r.language or "en",
        2.0,
        (Segment(0.0, 2.0, "we meet on friday"),),
        r.timestamps,
    ),
    "upscale": lambda r: UpscaleResult(png(16), "png", 16, 16, r.factor, r.seed or 5, False),
}
REAL = {
    "summarize": SummarizeTask(),
    "translate": TranslateTask(),
    "imagine": ImagineTask(
        native_size=64,
        default_name="sd",
        models={"turbo": ImageModelChoice("turbo-model", 1, 0.0, "model", native_size=128)},
    ),
    "speak": SpeakTask(),
    "sentiment": SentimentTask(),
    "classify": ClassifyTask(),
    "chat": ChatTask(),
    "transcribe": TranscribeTask(),
    "describe": DescribeTask(),
    "upscale": UpscaleTask(max_side=256),
}


@dataclass(eq=False)
class ScriptedTask(Task[Any, Any]):
    """A task with a real handler's name, kind and validation, and scripted model work."""

    real: Task[Any, Any]
    respond: Callable[[Any], Any]
    hold: bool = False
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    steps: int = 0
    previews: list[bytes] = field(default_factory=list)
    """Sent for each request as it runs, as an image model's previews are."""
    runs: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = self.real.name
        self.kind = self.real.kind

    def __getattr__(self, name: str) -> Any:
        """The real handler's settings (limits, sizes, the safety model) for the bot to read."""
        return getattr(self.real, name)

    def validate(self, request: Any) -> None:
        self.real.validate(request)

    def batch_key(self, request: Any) -> Any:
        return self.real.batch_key(request)

    def model_for(self, request: Any, default: str) -> str:
        return self.real.model_for(request, default)

    def window(self, source: str) -> Any:
        """The chat task's real tokenizer and context, which conversations are fitted to."""
        return self.real.window(source)  # type: ignore[attr-defined]

    def load(self, spec: LoadSpec) -> str:
        return "scripted"

    def model_bytes(self, model: Any) -> int:
        return 0

    def run_batch(self, model: Any, requests: Sequence[Any], ctx: BatchContext) -> list[Any]:
        self.runs.append(list(requests))
        for preview in self.previews:
            for index in range(len(requests)):
                ctx.partial(index, preview)
        if self.hold:
            self.entered.set()
            while not self.gate.wait(0.005):
                if ctx.should_stop():
                    self.stopped.set()
                    raise_if_stopped(ctx)
        for step in range(1, self.steps + 1):
            ctx.progress(step, self.steps)
        return [self.respond(r) for r in requests]


def unwrap(error: BaseException) -> BaseException:
    return error.original if isinstance(error, discord.app_commands.CommandInvokeError) else error


@dataclass
class Harness:
    env: simcord.Env
    bot: AssistantBot
    tasks: dict[str, ScriptedTask]
    db: Path
    expected_bugs: list[BaseException] = field(default_factory=list)

    async def finish(self) -> None:
        """Until every followed job has its final reply."""
        for watcher in list(self.bot.watchers.values()):
            await asyncio.wait_for(asyncio.shield(watcher.finished), 10)
        await self.env.settle()

    def rows(self) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM invocations ORDER BY started_at").fetchall()


@dataclass
class Stack:
    bot: AssistantBot
    tasks: dict[str, ScriptedTask]
    db: Path


@pytest.fixture
async def stack(
    tmp_path: Path, request: pytest.FixtureRequest, tiny_chat: Path
) -> AsyncIterator[Stack]:
    """The bot over scripted tasks; ``indirect`` params set max_queue, the edit interval, a
    few settings (read_messages, direct_messages, log_prompts), quotas, and the chat
    window (``chat_context`` tokens, ``chat_answer`` of them for the answer)."""
    options = getattr(request, "param", {})
    real = {
        **REAL,
        "chat": ChatTask(
            context_tokens=options.get("chat_context", 4096),
            default_new_tokens=options.get("chat_answer", 32),
        ),
    }
    tasks = {name: ScriptedTask(real[name], respond) for name, respond in RESPONSES.items()}
    class_limits = limits(max_batch=4)
    executor = Executor(
        tasks,
        {name: str(tiny_chat) if name == "chat" else f"{name}-model" for name in tasks},
        LocalBackend(ModelRegistry("cpu")),
        ExecutorConfig(
            max_queue=options.get("max_queue", 8),
            max_per_user=2,
            limits={kind: class_limits for kind in TaskKind},
        ),
    )
    settings = Settings(
        _env_file=None,
        edit_interval_s=options.get("interval", 0.0),
        read_messages=options.get("read_messages", False),
        direct_messages=options.get("direct_messages", "text-only"),
        log_prompts=options.get("log_prompts", False),
        **({"message_menus": options["menus"]} if "menus" in options else {}),
    )
    usage = UsageLog(tmp_path / "usage.sqlite3", flush_interval_s=3600)
    await usage.open()
    await executor.start()  # outside the bot, as main() does: the bot never awaits the GPU
    quotas = Quotas(QuotaPolicy(options.get("quotas", {"imagine": 5})), usage)
    await quotas.load()
    guilds = GuildSettingsStore(usage)
    await guilds.load()
    invoker = Invoker(
        executor, usage, quotas, guilds, settings.log_prompts, settings.direct_messages
    )
    bot = AssistantBot(Services(executor, usage, invoker), settings)
    yield Stack(bot, tasks, tmp_path / "usage.sqlite3")
    for task in tasks.values():
        task.gate.set()
    await executor.shutdown()
    await usage.close()


@pytest.fixture
def simcord_bot(stack: Stack) -> AssistantBot:
    return stack.bot


@pytest.fixture
def harness(simcord_env: simcord.Env, stack: Stack) -> Iterator[Harness]:
    """The running bot; afterwards, every error the bot raised must be one it answers kindly."""
    simcord_env.check_errors = False
    harness = Harness(simcord_env, stack.bot, stack.tasks, stack.db)
    yield harness
    bugs = [e for e in simcord_env.errors if friendly(unwrap(e)) is None]
    assert bugs == harness.expected_bugs


@dataclass
class Scene:
    guild: Any
    channel: Any
    alice: Any
    bob: Any


async def scene(h: Harness, *, images_anywhere: bool = True) -> Scene:
    guild = h.env.create_guild()
    channel = guild.create_text_channel("study")  # SimCord channels are not age-restricted
    if images_anywhere:
        await h.bot.guild_settings.update(guild.id, nsfw="allow")
    alice = guild.add_member(h.env.create_user("alice"))
    bob = guild.add_member(h.env.create_user("bob"))
    return Scene(guild, channel, alice, bob)


def edits(h: Harness) -> list[str]:
    """Every content the bot set on interaction replies, in order."""
    return [
        entry.json["content"]
        for entry in h.env.http_requests
        if entry.method == "PATCH" and isinstance(entry.json, dict) and entry.json.get("content")
    ]


COMMANDS = [
    ("summarize", {"text": "The group met. They reviewed notes."}, "summary: The group met"),
    ("translate", {"text": "Good morning", "to": "fr", "from": "en"}, "[fr] Good morning"),
    ("sentiment", {"text": "I love this"}, "**POSITIVE** (93%)"),
    ("classify", {"text": "exam moved", "labels": "school, music"}, "school"),
    ("chat", {"message": "hello"}, "echo: hello"),
]


@pytest.mark.parametrize(("command", "options", "expected"), COMMANDS)
async def test_text_commands_defer_then_answer(
    harness: Harness, command: str, options: dict[str, Any], expected: str
) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, command, **options)
    await harness.finish()
    assert result.acknowledged and not result.ephemeral
    assert expected in result.response.content
    # The deferral was the first thing the bot sent, before any model work ran.
    first = next(e for e in harness.env.http_requests if "/interactions/" in e.path)
    assert first.json == {"type": 5}
    assert len(harness.tasks[command].runs) == 1


async def test_imagine_sends_pngs_with_the_seed(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "imagine", prompt="a red fox", seed=42, count=2)
    await harness.finish()
    response = result.response
    assert next(e for e in harness.env.http_requests if "/interactions/" in e.path).json == {
        "type": 5
    }
    assert "seed 42" in response.content
    assert [a.filename for a in response.attachments] == ["imagine-42.png", "imagine-43.png"]


async def test_imagine_outside_age_restricted_channels_is_refused(harness: Harness) -> None:
    s = await scene(harness, images_anywhere=False)
    result = await s.alice.slash(s.channel, "imagine", prompt="a red fox")
    assert result.ephemeral and "age-restricted" in result.response.content
    assert harness.tasks["imagine"].runs == []


async def test_speak_sends_audio(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "speak", text="Welcome to the group.")
    await harness.finish()
    first = next(e for e in harness.env.http_requests if "/interactions/" in e.path)
    assert first.json == {"type": 5}
    (attachment,) = result.response.attachments
    assert attachment.filename == "speech.ogg"


async def test_queue_position_appears_and_changes(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["sentiment"]
    task.hold = True
    executor = harness.bot.executor
    blocker = executor.submit("sentiment", REAL_REQUEST, user_id="x")
    await asyncio.to_thread(task.entered.wait, 10)
    ahead = [executor.submit("sentiment", REAL_REQUEST, user_id=u) for u in ("y", "z")]
    await s.alice.slash(s.channel, "sentiment", text="am I next?")
    assert "number 3 in the queue" in edits(harness)[-1]
    ahead[0].cancel()
    await harness.env.settle()
    assert "number 2 in the queue" in edits(harness)[-1]
    task.hold = False
    task.gate.set()
    await asyncio.gather(blocker, ahead[1])
    await harness.finish()
    assert "**POSITIVE**" in edits(harness)[-1]


REAL_REQUEST = __import__("handlers.sentiment", fromlist=["x"]).SentimentRequest("queued")


@pytest.mark.parametrize("stack", [{"max_queue": 1}], indirect=True)
async def test_a_full_queue_gets_the_busy_reply(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["chat"]
    task.hold = True
    await s.bob.slash(s.channel, "chat", message="first")
    await asyncio.to_thread(task.entered.wait, 10)
    refused = await s.alice.slash(s.channel, "chat", message="second")
    assert refused.ephemeral and "busy" in refused.response.content
    task.gate.set()
    await harness.finish()


async def test_cancel_removes_a_queued_job(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["chat"]
    task.hold = True
    await s.bob.slash(s.channel, "chat", message="first")
    await asyncio.to_thread(task.entered.wait, 10)
    waiting = await s.alice.slash(s.channel, "chat", message="second")
    stranger = await s.bob.click(waiting.response, label="Cancel")
    assert stranger.ephemeral and "Only the member who asked" in stranger.response.content
    pressed = await s.alice.click(waiting.response, label="Cancel")
    assert pressed.ephemeral and pressed.response.content == "Cancelled."
    task.gate.set()
    await harness.finish()
    assert "cancelled by the requester" in waiting.response.content
    assert all(r.message != "second" for run in task.runs for r in run)


async def test_cancel_stops_a_running_job(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["imagine"]
    task.hold = True
    running = await s.alice.slash(s.channel, "imagine", prompt="slow painting")
    await asyncio.to_thread(task.entered.wait, 10)
    await s.alice.click(running.response, label="Cancel")
    await harness.finish()
    assert await asyncio.to_thread(task.stopped.wait, 10)
    assert "cancelled by the requester" in running.response.content
    assert not running.response.attachments


async def test_long_text_is_split_and_huge_text_attached(harness: Harness) -> None:
    s = await scene(harness)
    long = await s.alice.slash(s.channel, "chat", message="long")
    await harness.finish()
    parts = [long.response.content] + [m.content for m in long.followups]
    assert len(parts) == 3 and all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == ["word"] * 1000
    huge = await s.bob.slash(s.channel, "chat", message="huge")
    await harness.finish()
    (attachment,) = huge.response.attachments
    assert attachment.filename == "result.txt" and "full text attached" in huge.response.content


async def test_mentions_in_echoed_text_ping_nobody(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "chat", message="@everyone look <@&1>")
    await harness.finish()
    message = result.response.message
    assert "@everyone" in message.content
    assert not message.mention_everyone and not message.role_mentions


async def test_members_cannot_run_admin_commands(harness: Harness) -> None:
    s = await scene(harness)
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    for command in ("queue", "stats", "config show"):
        assert command not in s.alice.available_commands(s.channel)
        assert command in carol.available_commands(s.channel)
    result = await carol.slash(s.channel, "queue")
    assert result.ephemeral and "jobs in progress" in result.response.content


async def test_after_the_token_expires_the_result_goes_to_the_channel(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["summarize"]
    task.hold = True
    await s.alice.slash(s.channel, "summarize", text="A long lesson.")
    await asyncio.to_thread(task.entered.wait, 10)
    await harness.env.advance_time(16 * 60)
    task.gate.set()
    await harness.finish()
    last = s.channel.last_message
    assert last.content.startswith(f"{s.alice.mention} your /summarize is ready")
    assert [u.id for u in last.mentions] == [s.alice.id]


async def test_an_unexpected_error_replies_privately_with_an_id(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(harness.bot.invoker, "admit", broken)
    result = await s.alice.slash(s.channel, "sentiment", text="hi")
    harness.expected_bugs.extend(e for e in harness.env.errors if "fire" in str(unwrap(e)))
    assert result.ephemeral
    assert "error id `" in result.response.content and "fire" not in result.response.content


async def test_invalid_options_are_refused_privately_naming_the_option(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "classify", text="x", labels="only-one")
    assert result.ephemeral and result.response.content.startswith("**labels**:")


async def test_each_interaction_leaves_exactly_one_usage_row(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.slash(s.channel, "sentiment", text="good")
    await s.alice.slash(s.channel, "classify", text="x", labels="one")
    await s.bob.slash(s.channel, "chat", message="hi")
    await harness.finish()
    await harness.bot.usage.flush()
    rows = harness.rows()
    assert [(r["task"], r["status"]) for r in rows] == [
        ("sentiment", "ok"),
        ("classify", "invalid"),
        ("chat", "ok"),
    ]
    assert {r["user_id"] for r in rows} == {str(s.alice.id), str(s.bob.id)}
    assert all(r["guild_id"] == s.guild.id for r in rows)


@pytest.mark.parametrize("stack", [{"interval": 2.0}], indirect=True)
async def test_progress_edits_are_throttled(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["imagine"]
    task.steps = 20
    await s.alice.slash(s.channel, "imagine", prompt="many steps")
    await harness.finish()
    progress = [e for e in edits(harness) if "/20" in e]
    assert len(progress) < 20


SPEAKING_MENUS = ["Summarize", "Translate", "Speak", "Transcribe", "Describe image"]


@pytest.mark.parametrize("stack", [{"menus": SPEAKING_MENUS}], indirect=True)
async def test_message_context_menus(harness: Harness) -> None:
    s = await scene(harness)
    message = await s.bob.send(s.channel, "Chapter three covers enzymes. Read it by Friday.")
    summary = await s.alice.context_menu(s.channel, "Summarize", message)
    await harness.finish()
    assert summary.response.content.startswith("summary: Chapter three")
    german = await s.bob.send(s.channel, "Der Hund schläft heute im Garten.")
    await s.alice.context_menu(s.channel, "Translate", german)
    await harness.finish()
    (request,) = harness.tasks["translate"].runs[-1]
    assert request.text == german.content and request.target == "en-US"  # the member's locale
    spoken = await s.alice.context_menu(s.channel, "Speak", message)
    await harness.finish()
    assert [a.filename for a in spoken.response.attachments] == ["speech.ogg"]
    menus = harness.bot.tree.get_commands(type=discord.AppCommandType.message)
    assert sorted(m.name for m in menus) == sorted(SPEAKING_MENUS)  # the owner's five


def test_a_sixth_message_menu_is_refused_by_the_settings() -> None:
    six = [*SPEAKING_MENUS, "Imagine from this"]
    with pytest.raises(ValueError, match="at most 5"):
        Settings(_env_file=None, message_menus=six)


async def test_translate_defaults_to_the_members_language(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.slash(s.channel, "translate", text="Bonjour à tous")
    await harness.finish()
    (request,) = harness.tasks["translate"].runs[-1]
    assert request.target == "en-US"  # SimCord members use Discord's default locale


async def test_summarize_a_text_file(harness: Harness) -> None:
    s = await scene(harness)
    notes = b"Photosynthesis makes sugar from light."
    result = await s.alice.slash(s.channel, "summarize", file=("notes.txt", notes))
    await harness.finish()
    assert result.response.content == "summary: Photosynthesis makes sugar fro"
    refused = await s.alice.slash(s.channel, "summarize", file=("photo.png", png()))
    assert refused.ephemeral and refused.response.content.startswith("**file**:")


async def test_summarize_sources_need_exactly_one_and_reading_enabled(harness: Harness) -> None:
    s = await scene(harness)
    both = await s.alice.slash(s.channel, "summarize", text="x", messages=5)
    assert both.ephemeral and "exactly one of" in both.response.content
    history = await s.alice.slash(s.channel, "summarize", messages=5)
    assert history.ephemeral and "BOT_READ_MESSAGES" in history.response.content
    await harness.bot.usage.flush()
    assert [r["status"] for r in harness.rows()] == ["invalid", "invalid"]
    assert harness.tasks["summarize"].runs == []


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_summarize_recent_messages(harness: Harness) -> None:
    s = await scene(harness)
    await s.bob.send(s.channel, "We meet at six.")
    await s.alice.send(s.channel, "Bring the lab notes.")
    result = await s.alice.slash(s.channel, "summarize", messages=2)
    await harness.finish()
    (request,) = harness.tasks["summarize"].runs[-1]
    assert request.text == "bob: We meet at six.\nalice: Bring the lab notes."
    assert result.response.content.startswith("summary: bob: We meet")


async def test_image_buttons_reroll_vary_and_delete(harness: Harness) -> None:
    s = await scene(harness)
    first = await s.alice.slash(s.channel, "imagine", prompt="a red fox", seed=42)
    await harness.finish()
    message = first.response
    labels = [c["label"] for row in message.components for c in row["components"]]
    assert labels == ["Reroll", "Vary (subtle)", "Vary (strong)", "Upscale 2x", "Upscale 4x",
                      "Delete"]  # fmt: skip
    reroll = await s.bob.click(message, label="Reroll")
    await harness.finish()
    again = harness.tasks["imagine"].runs[-1][0]
    assert (again.prompt, again.count) == ("a red fox", 1) and again.seed != 42
    assert reroll.response.attachments
    rerolled = [c["label"] for row in reroll.response.components for c in row["components"]]
    assert rerolled == labels  # its own buttons
    await s.bob.click(message, label="Vary (strong)")
    await harness.finish()
    varied = harness.tasks["imagine"].runs[-1][0]
    assert (varied.prompt, varied.count, varied.strength) == ("a red fox", 1, 0.75)
    assert varied.image == png() and varied.seed != 42  # drawn from the image it is under
    await harness.bot.usage.flush()
    assert [r["user_id"] for r in harness.rows()][-1] == str(s.bob.id)  # bob's own request
    refused = await s.bob.click(message, label="Delete")
    assert refused.ephemeral and "Only the member who asked" in refused.response.content
    deleted = await s.alice.click(message, label="Delete")
    assert deleted.response.content == "Deleted."


async def test_image_buttons_work_after_a_restart(harness: Harness, stack: Stack) -> None:
    s = await scene(harness)
    first = await s.alice.slash(s.channel, "imagine", prompt="a lighthouse")
    await harness.finish()
    fresh = AssistantBot(
        Services(stack.bot.executor, stack.bot.usage, stack.bot.invoker), stack.bot.settings
    )
    await harness.env.restart_bot(fresh)
    harness.bot = fresh
    await s.alice.click(first.response, label="Reroll")
    await harness.finish()
    assert harness.tasks["imagine"].runs[-1][0].prompt == "a lighthouse"


async def test_stats_shows_a_chart_and_figures_to_admins(harness: Harness) -> None:
    s = await scene(harness)
    await s.alice.slash(s.channel, "sentiment", text="good")
    await s.alice.slash(s.channel, "chat", message="hi")
    await harness.finish()
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    other = harness.env.create_guild("elsewhere")
    elsewhere = other.create_text_channel("general")
    dave = other.add_member(harness.env.create_user("dave"))
    await dave.slash(elsewhere, "usage")
    result = await carol.slash(s.channel, "stats", days=1)
    assert result.ephemeral
    chart, table = result.response.attachments
    assert (chart.filename, table.filename) == ("usage.png", "usage.txt")
    with Image.open(io.BytesIO(await chart.read())) as image:
        assert image.size == (800, 400)
    text = (await table.read()).decode()
    assert "sentiment" in text and str(s.alice.id) in text
    assert str(dave.id) not in text and "usage " not in text  # only this server's rows


async def test_a_result_over_the_upload_limit_is_refused_clearly(harness: Harness) -> None:
    s = await scene(harness)
    giant = png() + b"\0" * (26 * 2**20)  # SimCord's limit is Discord's 25 MiB for bots
    harness.tasks["imagine"].respond = lambda r: ImagineResult([giant], 1, 8, 8, 4, 7.5, 0)
    result = await s.alice.slash(s.channel, "imagine", prompt="a very detailed fox")
    await harness.finish()
    assert "larger than this server's 25 MiB upload limit" in result.response.content
    assert not result.response.attachments


async def test_config_turns_commands_off_and_on(harness: Harness) -> None:
    s = await scene(harness)
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    await carol.slash(s.channel, "config command", name="chat", enabled=False)
    refused = await s.alice.slash(s.channel, "chat", message="hi")
    assert refused.ephemeral and "turned off" in refused.response.content
    typo = await carol.slash(s.channel, "config command", name="chta", enabled=True)
    assert typo.ephemeral and typo.response.content.startswith("**name**:")
    await carol.slash(s.channel, "config command", name="chat", enabled=True)
    settings = harness.bot.guild_settings.get(s.guild.id)
    assert settings.enabled_commands is None  # everything on again
