"""Trust boundaries: a member reads only what they may, private stays private, quotas hold
under bursts. One test per finding of the review (RELIABILITY.md, Security, lists them),
through SimCord wherever Discord is involved."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from bot import cli
from bot.executor import Busy
from bot.guilds import GuildSettingsStore
from bot.invocations import Caller, Invoker
from bot.markdown import neutralize
from bot.quotas import DAY, QuotaExceeded, QuotaPolicy, Quotas
from bot.usage import UsageLog, migrate
from handlers.chat import ChatResult
from handlers.classify import ClassifyResult
from tests.fakes import FakeTask, Item, make_executor
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    Scene,
    harness,
    scene,
    simcord_bot,
    stack,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(path: Path, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql).fetchall()


def link_to(guild_id: int, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


# 1. History the member may not read


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_history_is_read_with_the_members_own_permissions(harness: Harness) -> None:
    s = await scene(harness)
    no_history = discord.PermissionOverwrite(read_message_history=False)
    notes = s.guild.create_text_channel("notes", overwrites={s.alice: no_history})
    await s.bob.send(notes, "The answer key is 42.")
    refused = await s.alice.slash(notes, "summarize", messages=10)
    await harness.finish()
    assert refused.response.content == "**messages**: points to messages you cannot read"
    assert harness.tasks["summarize"].runs == []
    allowed = await s.bob.slash(notes, "summarize", messages=10)
    await harness.finish()
    assert allowed.response.content.startswith("summary: bob: The answer key is 42.")
    await harness.bot.usage.flush()
    assert [r["status"] for r in harness.rows()] == ["invalid", "ok"]


# 2. Private threads by link


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_private_thread_is_read_only_by_its_members(harness: Harness) -> None:
    s = await scene(harness)
    carol = s.guild.add_member(harness.env.create_user("carol"))
    parent = harness.bot.get_channel(s.channel.id)
    assert isinstance(parent, discord.TextChannel)
    thread = await parent.create_thread(name="mods", type=discord.ChannelType.private_thread)
    await thread.add_user(discord.Object(carol.id))  # the bot is in it, alice is not
    (mods,) = s.channel.threads
    secret = await carol.send(mods, "We ban the spammer at noon.")
    link = link_to(s.guild.id, mods.id, secret.id)
    refused = await s.alice.slash(s.channel, "summarize", link=link)
    await harness.finish()
    assert refused.response.content == "**link**: points to messages you cannot read"
    assert harness.tasks["summarize"].runs == []
    member = await carol.slash(s.channel, "summarize", link=link)
    await harness.finish()
    assert member.response.content == "summary: We ban the spammer at noon."


# 3. Private replies that go public


def public_posts(h: Harness, channel: Any, viewer: Any) -> list[str]:
    """What another member sees in the channel."""
    return [m.content for m in channel.history(viewer=viewer) if m.author.id == h.bot.user.id]


async def test_a_private_reply_stays_private_to_the_end(harness: Harness) -> None:
    s = await scene(harness)
    await harness.bot.guild_settings.update(s.guild.id, ephemeral=True)
    long = await s.alice.slash(s.channel, "chat", message="long")
    await harness.finish()
    assert long.ephemeral and len(long.followups) == 2
    assert all(piece.ephemeral for piece in long.followups)
    # A result and a failure that outlive the 15-minute token go by DM, not to the channel.
    summarize, sentiment = harness.tasks["summarize"], harness.tasks["sentiment"]

    def broken(request: Any) -> Any:
        raise ValueError("the model broke")

    sentiment.respond = broken
    for task, command, options in (
        (summarize, "summarize", {"text": "A long lesson."}),
        (sentiment, "sentiment", {"text": "fine"}),
    ):
        task.hold = True
        task.entered.clear()
        await s.alice.slash(s.channel, command, **options)
        await asyncio.to_thread(task.entered.wait, 10)
        await harness.env.advance_time(16 * 60)
        task.gate.set()
        await harness.finish()
    assert public_posts(harness, s.channel, s.bob) == []
    dms = [m.content for m in s.alice.user.dm_channel.history()]
    assert dms[0] == "Your /summarize is ready:\nsummary: A long lesson."
    assert dms[1].startswith("Your /sentiment is ready:\n⚠️ the model failed")


# 4. Quotas and cooldowns defeated by concurrency


async def yield_turns(turns: int) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


class AcknowledgeFailed(Exception):
    """Discord refused the deferral (the front end's await between admission and queueing)."""


async def burst(
    folder: Path,
    arrivals: list[int],
    acknowledgements: list[int],
    failures: list[bool],
    used_today: int,
    after_midnight: bool,
    max_queue: int,
) -> tuple[int, int]:
    """Ten requests by one member at once, each arriving and acknowledged after its own
    number of event-loop turns, right after midnight or after a restart with
    ``used_today`` already counted in the log; (jobs run, quota count afterwards)."""
    day = 20 * DAY
    clock = Clock(day + (0.5 if after_midnight else 3600))
    usage = UsageLog(folder / "u.sqlite3", clock=clock, flush_interval_s=3600)
    await usage.open()
    for n in range(8):  # yesterday's use counts for nothing today
        usage.record({"id": f"y{n}", "source": "discord", "user_id": "u", "task": "fake",
                      "status": "ok", "started_at": day - 60 + n})  # fmt: skip
    for n in range(used_today):
        usage.record({"id": f"t{n}", "source": "discord", "user_id": "u", "task": "fake",
                      "status": "ok", "started_at": day + 0.1})  # fmt: skip
    quotas = Quotas(QuotaPolicy({"fake": 5}), usage, clock)
    await quotas.load()  # the bot starts here
    executor = make_executor(FakeTask(), max_queue=max_queue, max_per_user=20)
    await executor.start()
    invoker = Invoker(executor, usage, quotas, GuildSettingsStore(usage))

    async def member(n: int) -> Any:
        await yield_turns(arrivals[n])
        with invoker.admit("fake", Caller("u", guild_id=7), Item(f"r{n}")) as admission:
            await yield_turns(acknowledgements[n])
            if failures[n]:
                raise AcknowledgeFailed
            return admission.submit(Item(f"r{n}"))

    outcomes = await asyncio.gather(*(member(n) for n in range(10)), return_exceptions=True)
    refusals = QuotaExceeded | Busy | AcknowledgeFailed
    unexpected = [
        o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, refusals)
    ]
    assert not unexpected
    handles = [o for o in outcomes if not isinstance(o, BaseException)]
    await asyncio.gather(*handles)
    await executor.shutdown()
    (count,) = [used for task, used, _, _ in quotas.summary("u") if task == "fake"]
    await usage.close()
    ok = rows(
        folder / "u.sqlite3", "SELECT * FROM invocations WHERE status = 'ok' AND id NOT LIKE 'y%'"
    )
    assert len(ok) == used_today + len(handles)  # the log and the count agree
    return len(handles), count


TURNS = st.lists(st.integers(0, 6), min_size=10, max_size=10)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(arrivals=TURNS, acknowledgements=TURNS, used_today=st.integers(0, 5),
       after_midnight=st.booleans())  # fmt: skip
def test_ten_concurrent_requests_against_a_quota_of_5_run_exactly_5(
    arrivals: list[int], acknowledgements: list[int], used_today: int, after_midnight: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        ran, count = asyncio.run(
            burst(Path(folder), arrivals, acknowledgements, [False] * 10, used_today,
                  after_midnight, max_queue=64)
        )  # fmt: skip
    assert ran == 5 - used_today and count == 5


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(arrivals=TURNS, acknowledgements=TURNS,
       failures=st.lists(st.booleans(), min_size=10, max_size=10),
       used_today=st.integers(0, 5), max_queue=st.integers(1, 10))  # fmt: skip
def test_refused_admissions_give_back_exactly_what_they_took(
    arrivals: list[int],
    acknowledgements: list[int],
    failures: list[bool],
    used_today: int,
    max_queue: int,
) -> None:
    """Failed acknowledgements and busy refusals release their reservation, and only it."""
    with tempfile.TemporaryDirectory() as folder:
        ran, count = asyncio.run(
            burst(Path(folder), arrivals, acknowledgements, failures, used_today, False,
                  max_queue)
        )  # fmt: skip
    assert ran <= 5 - used_today and count == used_today + ran


# 5. Direct messages skip every guild rule


async def test_direct_messages_offer_text_commands_only_by_default(harness: Harness) -> None:
    dan = harness.env.create_user("dan")
    offered = dan.available_commands()
    assert {"chat", "summarize", "translate", "sentiment", "classify", "usage"} <= set(offered)
    assert not {"imagine", "speak", "config show"} & set(offered)
    answer = await dan.slash("chat", message="hi")
    await harness.finish()
    assert answer.response.content == "echo: hi"


@pytest.mark.parametrize("stack", [{"direct_messages": "all"}], indirect=True)
async def test_a_command_discord_still_offers_in_a_dm_is_refused_in_one_line(
    harness: Harness,
) -> None:
    """Discord shows a global command for a while after the admin narrows the policy; the
    bot's own check holds meanwhile."""
    dan = harness.env.create_user("dan")
    assert "imagine" in dan.available_commands()
    harness.bot.invoker.direct_messages = "text-only"
    refused = await dan.slash("imagine", prompt="a red fox")
    assert refused.ephemeral
    assert refused.response.content == (
        "/imagine works in servers only; in direct messages this bot answers text commands"
    )
    harness.bot.invoker.direct_messages = "off"
    refused = await dan.slash("chat", message="hi")
    assert refused.ephemeral and "servers only" in refused.response.content
    assert harness.tasks["imagine"].runs == [] and harness.tasks["chat"].runs == []


# 6. Prompts stored with BOT_LOG_PROMPTS=false


async def test_prompts_are_kept_only_as_long_as_reroll_needs_them(harness: Harness) -> None:
    s = await scene(harness)
    usage = harness.bot.usage
    clock = Clock(usage.clock())
    usage.clock = clock
    first = await s.alice.slash(s.channel, "imagine", prompt="my secret garden", negative="weeds")
    await harness.finish()
    await s.alice.click(first.response, label="Reroll")
    await harness.finish()
    assert harness.tasks["imagine"].runs[-1][0].prompt == "my secret garden"
    clock.now += 24 * 3600 + 1  # BOT_IMAGINE__REROLL_HOURS, 24 by default
    stale = await s.alice.click(first.response, label="Reroll")
    await harness.finish()
    assert "too old for its buttons" in stale.response.content
    await usage.apply_retention()
    with sqlite3.connect(harness.db) as db:
        stored = db.execute("SELECT * FROM image_requests").fetchall()
        logged = db.execute("SELECT * FROM invocations").fetchall()
    assert stored == []
    assert not re.search("secret garden|weeds", repr(logged))
    assert len(harness.tasks["imagine"].runs) == 2


async def test_a_refused_request_logs_no_option_the_member_typed(harness: Harness) -> None:
    s = await scene(harness)
    refused = await s.alice.slash(s.channel, "translate", text="hello", to="My Secret Place")
    assert refused.ephemeral and refused.response.content.startswith("**target**:")
    await harness.bot.usage.flush()
    (row,) = harness.rows()
    assert row["status"] == "invalid"
    assert row["input_size"] == len("hello") + len("My Secret Place") + len("auto")
    assert "Secret" not in repr(tuple(row))


# 7. Phishing through the bot's voice

PHISH = (
    "# Free Nitro\n"
    "-# sent by the server's staff\n"
    "> ## Quoted heading\n"
    "[Claim Nitro](https://evil.example/claim) [[nested]](<https://evil.example>)\n"
    "**bold** stays, and\n- a list\n- stays\n"
    "```py\n# a comment in code\nitems[0](x)\n```"
)


async def test_echoed_and_generated_text_cannot_pass_for_the_bots_own(harness: Harness) -> None:
    s = await scene(harness)
    harness.tasks["chat"].respond = lambda r: ChatResult(PHISH, 3, True)
    answer = await s.alice.slash(s.channel, "chat", message="hi")
    await harness.finish()
    posted = answer.response.content
    prose = posted.split("```")[0]
    assert not re.search(r"(?<!\\)\[[^\n]*\]\(", prose)  # no masked link
    assert not re.search(r"^(?:> )?(?:#{1,3}|-#) ", prose, re.MULTILINE)
    assert "**bold** stays" in posted and "\n- a list\n- stays\n" in posted
    assert posted.endswith("```py\n# a comment in code\nitems[0](x)\n```")  # code untouched
    harness.tasks["classify"].respond = lambda r: ClassifyResult(list(r.labels), [0.5, 0.5])
    labels = await s.alice.slash(s.channel, "classify", text="x",
                                 labels="[Claim](https://evil.example), music")  # fmt: skip
    await harness.finish()
    assert "\\[Claim](https://evil.example)" in labels.response.content
    translated = await s.alice.slash(s.channel, "translate", text="hi", to="fr", **{"from": "en"})
    await harness.finish()
    assert translated.response.content.endswith("\n-# en → fr")  # the bot's own note stays


def masked_links(markdown: str) -> list[str]:
    """Where the links a renderer shows in ``markdown`` lead, autolinks (which show where
    they lead) left out: CommonMark without raw HTML or link reference definitions, which
    Discord does not have."""
    renderer = MarkdownIt("commonmark", {"html": False}).disable("reference")
    found = []
    tokens = renderer.parse(markdown)
    while tokens:
        token = tokens.pop()
        tokens.extend(token.children or [])
        if token.type == "link_open" and token.markup != "autolink":
            found.append(str(token.attrs["href"]))
    return found


# Discord's inline rules (its fork of simple-markdown), in the order they are tried at each
# position, as far as they can hide or show a masked link: the rule that matches first wins,
# spans are read again inside, code is not.
DISCORD_RULES = [
    ("code", re.compile(r"```(?:([a-z0-9_+\-.#]+?)\n)?\n*([^\n][\s\S]*?)\n*```", re.I)),
    ("text", re.compile(r"\\[^0-9A-Za-z\s]")),  # an escape
    ("text", re.compile(r"<[^: >]+:/[^ >]+>")),  # an autolink: shows where it leads
    ("text", re.compile(r"https?://[^\s<]+[^<.,:;\"')\]\s]")),  # a bare link: the same
    ("link", re.compile(
        r"\[((?:\[[^\]]*\]|[^\[\]]|\](?=[^\[]*\]))*)\]"
        r"\(\s*<?((?:\([^)]*\)|[^\s\\]|\\.)*?)>?(?:\s+['\"]([\s\S]*?)['\"])?\s*\)"
    )),
    ("span", re.compile(r"\b_((?:__|\\[\s\S]|[^\\_])+?)_\b"
                        r"|\*(?=\S)((?:\*\*|\\[\s\S]|\s+(?:\\[\s\S]|[^\s*\\]|\*\*)|[^\s*\\])+?)"
                        r"\*(?!\*)")),
    ("span", re.compile(r"\*\*((?:\\[\s\S]|[^\\])+?)\*\*(?!\*)")),
    ("span", re.compile(r"__((?:\\[\s\S]|[^\\])+?)__(?!_)")),
    ("span", re.compile(r"~~([\s\S]+?)~~(?!_)")),
    ("span", re.compile(r"\|\|([\s\S]+?)\|\|")),
    ("code", re.compile(r"(`+)([\s\S]*?[^`])\1(?!`)")),
]  # fmt: skip


def discord_masked_links(markdown: str) -> list[str]:
    """The masked links Discord would show in ``markdown``, by its rules above."""
    found: list[str] = []
    at = 0
    while at < len(markdown):
        for kind, rule in DISCORD_RULES:
            match = rule.match(markdown, at)
            if match is None:
                continue
            if kind == "link":
                found.append(match[2])
            elif kind == "span":
                found += discord_masked_links(next(g for g in match.groups() if g is not None))
            at = match.end()
            break
        else:
            at += 1
    return found


MARKDOWN_PIECES = st.sampled_from([
    "[", "]", "(", ")", "](", "\\", "\\\\", "`", "``", "```", "\n", "\n\n", " ", "*", "_",
    "~~", "||", "<", ">", "> ", "# ", "-# ", "- ", "!", "Claim", "https://evil.example",
    "<https://evil.example>", "[Claim Nitro](https://evil.example)", "```py\n", "\n```\n",
    "<https://a\n", "x>", "__", "**",
])  # fmt: skip


MARKDOWN_LINES = st.sampled_from([
    "```", "```py", "```` ", "", "text", "[Claim Nitro](https://evil.example)", "*a", "b* [x](y)",
    "<https://a", "x>", "`a", "b`", "> q", "# h", "- [x](y)", "__a", "||a", "~~a", "\\", "a ```b",
])  # fmt: skip
"""Whole lines, where code blocks and spans that run over lines meet."""
MARKDOWN = st.one_of(
    st.lists(MARKDOWN_PIECES, max_size=30).map("".join),
    st.lists(MARKDOWN_LINES, max_size=12).map("\n".join),
)


@settings(max_examples=3000, deadline=None)
@given(MARKDOWN)
def test_no_masked_link_survives_neutralizing(markdown: str) -> None:
    """Neither CommonMark (markdown-it-py) nor Discord's rules show a masked link."""
    neutral = neutralize(markdown)
    assert masked_links(neutral) == [] and discord_masked_links(neutral) == []


def test_discords_rules_above_see_what_discord_shows() -> None:
    """The model of Discord's reading, on cases checked in Discord's own rules."""
    assert discord_masked_links("[Claim](https://evil.example)") == ["https://evil.example"]
    assert discord_masked_links("\\\\[Claim](https://evil.example)") == ["https://evil.example"]
    assert discord_masked_links("\\[Claim](https://evil.example)") == []
    assert discord_masked_links("`[Claim](https://evil.example)`") == []
    assert discord_masked_links("```\n[Claim](https://evil.example)\n```") == []
    assert discord_masked_links("*a\n```\nb* [Claim](https://evil.example)\n```") == [
        "https://evil.example"
    ]


@pytest.mark.parametrize(
    "markdown",
    [
        "\\[Claim Nitro](https://evil.example)",  # an escaped backslash escapes nothing
        "\\\\\\[Claim Nitro](https://evil.example)",
        "`code` and `\\`[Claim Nitro](https://evil.example)`",
        "*a\n```\nb* [Claim Nitro](https://evil.example)\n```",  # Discord: emphasis, then text
        "a ```b\n```\n[Claim Nitro](https://evil.example)\n```",  # Discord: code ends at line 2
        "```py\n```\ntext\n```\n[Claim Nitro](https://evil.example)\n```\n",  # an empty block
        "<https://a\n```x>\n[Claim Nitro](https://evil.example)\n```\n",  # an autolink's lines
    ],
)
def test_links_that_only_discord_would_show_are_escaped(markdown: str) -> None:
    """Discord's reading, which CommonMark does not share: spans and code blocks that run
    over lines. The link's ``[`` must come out escaped (an odd number of backslashes)."""
    escaped = neutralize(markdown)
    opener = escaped.index("[Claim Nitro]")
    backslashes = len(escaped[:opener]) - len(escaped[:opener].rstrip("\\"))
    assert backslashes % 2 == 1, escaped


def test_code_blocks_and_text_without_links_are_left_as_written() -> None:
    code = "Call `items`:\n```py\nitems[0](x)  # call it\n```\n"
    assert neutralize(code) == code
    plain = "**bold**, a_b, ~~struck~~, ||spoiler||\n- a list\n> a quote\n1. [one]"
    assert neutralize(plain) == plain


# 8. Work before the acknowledgement


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_nothing_slow_happens_before_the_acknowledgement(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)
    since = 0
    calls: list[tuple[str, bool]] = []

    def acknowledged() -> bool:
        return any(e.path.endswith("/callback") for e in harness.env.http_requests[since:])

    def spy(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        if asyncio.iscoroutinefunction(original):

            async def spied(*args: Any, **kwargs: Any) -> Any:
                calls.append((name, acknowledged()))
                return await original(*args, **kwargs)

        else:

            def spied(*args: Any, **kwargs: Any) -> Any:
                calls.append((name, acknowledged()))
                return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spied)

    for owner, name in ((harness.bot.usage, "query"), (harness.bot.usage, "write_now"),
                        (discord.Attachment, "read"), (discord.abc.Messageable, "history"),
                        (discord.TextChannel, "history")):  # fmt: skip
        spy(owner, name)
    await s.bob.send(s.channel, "We meet at six.")
    managers = s.guild.create_role("managers", permissions=discord.Permissions(manage_guild=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[managers])
    for member, command, options in (
        (s.alice, "imagine", {"prompt": "a red fox"}),
        (s.alice, "summarize", {"file": ("notes.txt", b"Photosynthesis makes sugar.")}),
        (s.alice, "summarize", {"messages": 5}),
        (carol, "config replies", {"visibility": "private"}),
    ):
        since = len(harness.env.http_requests)
        result = await member.slash(s.channel, command, **options)
        await harness.finish()
        callback = next(
            e for e in harness.env.http_requests[since:] if e.path.endswith("/callback")
        )
        assert callback.json["type"] == 5 and result.response.content  # deferred
    assert [name for name, _ in calls].count("write_now") == 2  # the image request, /config
    assert {name for name, _ in calls} >= {"read", "history"}
    assert [name for name, done in calls if not done] == []


# 9. The Delete button


async def test_delete_follows_the_permissions_in_the_images_channel(harness: Harness) -> None:
    s = await scene(harness)
    mods = s.guild.create_role("mods", permissions=discord.Permissions(manage_messages=True))
    carol = s.guild.add_member(harness.env.create_user("carol"), roles=[mods])
    not_here = {mods: discord.PermissionOverwrite(manage_messages=False)}
    announcements = s.guild.create_text_channel("announcements", overwrites=not_here)
    helpers = s.guild.create_text_channel(
        "help", overwrites={s.bob: discord.PermissionOverwrite(manage_messages=True)}
    )
    first = await s.alice.slash(announcements, "imagine", prompt="a red fox")
    second = await s.alice.slash(helpers, "imagine", prompt="a grey wolf")
    await harness.finish()
    refused = await carol.click(first.response, label="Delete")  # a moderator elsewhere
    assert refused.ephemeral and "Only the member who asked" in refused.response.content
    deleted = await s.bob.click(second.response, label="Delete")  # a moderator of this channel
    assert deleted.ephemeral and deleted.response.content == "Deleted."


# 10. DEBUG logs


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("discord", *cli.PRIVATE_LOGGERS)}
    yield
    root.handlers[:], root.level = saved
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def run_logging(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``python -m bot run`` writes when discord.py logs a gateway event and a request."""

    async def connect(settings: Any, sync_only: bool) -> int:
        event = {"t": "INTERACTION_CREATE", "d": {"token": "aW50ZXJhY3Rpb24-token", "data": {
            "options": [{"name": "text", "value": "my private words"}]}}}  # fmt: skip
        logging.getLogger("discord.gateway").debug("WebSocket Event: %s", event)
        logging.getLogger("discord.http").debug(
            "POST https://discord.com/api/v10/interactions/1/aW50ZXJhY3Rpb24-token/callback"
        )
        logging.getLogger("discord.client").info("logged in")
        logging.getLogger("bot.executor").debug("the bot's own debug line")
        return 0

    monkeypatch.setattr(cli, "_discord", connect)
    assert cli.main(["run"]) == 0
    return capsys.readouterr().err


def test_discord_debug_logs_stay_off_unless_asked_for(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restored_logging: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BOT_LOG_LEVEL", "DEBUG")
    logged = run_logging(monkeypatch, capsys)
    assert "the bot's own debug line" in logged and "logged in" in logged
    assert "aW50ZXJhY3Rpb24-token" not in logged and "private words" not in logged
    monkeypatch.setenv("BOT_DISCORD_LOG_LEVEL", "DEBUG")  # the admin asks for them
    assert "private words" in run_logging(monkeypatch, capsys)


# Round two (issue 25). The masked-link tests (its finding 3) are with finding 7 above.

SECRET = "The exam answers are B, D, A, C."
LEFT_OUT = "-# I read only your message: you cannot read the earlier messages here."


def chat_requests(h: Harness) -> list[Any]:
    return [request for run in h.tasks["chat"].runs for request in run]


def prompt_of(request: Any) -> str:
    """Everything of a chat request that reaches the model as text."""
    turns = " ".join(turn.content for turn in request.history)
    return " ".join((request.system or "", request.summary, turns, request.message))


def mention(h: Harness, text: str) -> str:
    assert h.bot.user is not None
    return f"{h.bot.user.mention} {text}"


def bot_messages(h: Harness, channel: Any) -> list[discord.Message]:
    return [m for m in channel.history() if h.bot.user and m.author.id == h.bot.user.id]


def notes_alice_cannot_read_back(s: Scene) -> Any:
    """A channel where Alice may talk but not read Read Message History."""
    no_history = discord.PermissionOverwrite(read_message_history=False)
    return s.guild.create_text_channel("notes", overwrites={s.alice: no_history})


async def bobs_thread_alice_cannot_read_back(h: Harness, s: Scene) -> Any:
    """A thread Bob opened with /chat in that channel."""
    notes = notes_alice_cannot_read_back(s)
    await s.bob.slash(notes, "chat", message="Exam prep", thread=True)
    await h.finish()
    (room,) = notes.threads
    return room


# 25.1 Conversations read with the member's own permissions


async def test_a_reply_chain_is_read_only_by_members_who_may_read_history(
    harness: Harness,
) -> None:
    s = await scene(harness)
    notes = notes_alice_cannot_read_back(s)
    await s.bob.send(notes, mention(harness, SECRET))
    await harness.finish()
    (answer,) = bot_messages(harness, notes)
    await s.alice.send(notes, "what did I miss?", reply_to=answer)
    await harness.finish()
    *_, request = chat_requests(harness)
    assert (request.message, request.history, request.summary) == ("what did I miss?", (), "")
    assert "B, D, A, C" not in prompt_of(request)
    told = bot_messages(harness, notes)[-1]
    assert told.content == f"echo: what did I miss?\n{LEFT_OUT}"
    # Bob may read the channel: his reply to that answer reads the chain without its note.
    await s.bob.send(notes, "and the last one?", reply_to=told)
    await harness.finish()
    *_, request = chat_requests(harness)
    assert [turn.content for turn in request.history] == [
        SECRET, f"echo: {SECRET}", "what did I miss?", "echo: what did I miss?"  # no note
    ]  # fmt: skip


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_thread_is_read_only_by_members_who_may_read_its_history(
    harness: Harness,
) -> None:
    s = await scene(harness)
    room = await bobs_thread_alice_cannot_read_back(harness, s)
    await s.bob.send(room, SECRET)
    await harness.finish()
    await s.alice.send(room, "what did I miss?")
    await harness.finish()
    *_, request = chat_requests(harness)
    assert request.message == "what did I miss?" and request.history == ()
    assert "B, D, A, C" not in prompt_of(request) and "Exam prep" not in prompt_of(request)
    assert bot_messages(harness, room)[-1].content.endswith(f"\n{LEFT_OUT}")


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_what_the_bot_remembers_is_shown_only_to_members_who_may_read_it(
    harness: Harness,
) -> None:
    s = await scene(harness)
    room = await bobs_thread_alice_cannot_read_back(harness, s)
    await harness.bot.conversations.store.fold(
        await harness.bot.conversations.store.memory(f"thread:{room.id}"), SECRET, 1
    )
    shown = await s.alice.slash(room, "conversation memory")
    await harness.finish()
    assert shown.ephemeral and "B, D, A, C" not in shown.response.content
    assert "you cannot read the earlier messages here" in shown.response.content
    await s.alice.send(room, "memory")
    await harness.finish()
    told = bot_messages(harness, room)[-1]
    assert "B, D, A, C" not in told.content and "cannot read the earlier" in told.content
    await s.bob.send(room, "memory")  # Bob may read the thread
    await harness.finish()
    assert SECRET in bot_messages(harness, room)[-1].content


async def test_a_member_without_history_keeps_their_own_slash_question(
    harness: Harness,
) -> None:
    s = await scene(harness)
    notes = notes_alice_cannot_read_back(s)
    asked = await s.alice.slash(notes, "chat", message="Name the rivers of Europe")
    await harness.finish()
    await s.alice.send(notes, mention(harness, "and of Asia?"), reply_to=asked.response.message)
    await harness.finish()
    *_, request = chat_requests(harness)
    assert [turn.content for turn in request.history] == ["Name the rivers of Europe"]
    assert bot_messages(harness, notes)[-1].content.endswith(f"\n{LEFT_OUT}")


# 25.2 Another member's slash-command input


async def test_a_members_slash_question_never_reaches_another_members_prompt(
    harness: Harness,
) -> None:
    s = await scene(harness)
    chat = harness.tasks["chat"]
    chat.respond = lambda r: ChatResult("Noted." if r.message == SECRET else "echo", 1, True)
    asked = await s.alice.slash(s.channel, "chat", message=SECRET)
    await harness.finish()
    answer = asked.response.message
    await s.bob.send(s.channel, mention(harness, "what was the question?"), reply_to=answer)
    await harness.finish()
    *_, request = chat_requests(harness)
    assert request.message == "what was the question?"
    assert "B, D, A, C" not in prompt_of(request)
    assert [(t.role, t.content) for t in request.history] in ([], [("assistant", "Noted.")])
    # The asker's own reply still has her question.
    await s.alice.send(s.channel, mention(harness, "and the fifth?"), reply_to=answer)
    await harness.finish()
    *_, request = chat_requests(harness)
    assert request.history[0].content == SECRET


async def test_a_long_question_that_opens_a_thread_is_shown_whole(harness: Harness) -> None:
    """A thread's opening question is public, so all of it is shown: what does not fit the
    first message is attached."""
    s = await scene(harness)
    question = "Let us revise. " * 130 + SECRET
    await s.alice.slash(s.channel, "chat", message=question, thread=True)
    await harness.finish()
    (room,) = s.channel.threads
    asked = bot_messages(harness, room)[0]
    assert asked.content.startswith("**alice** asked: Let us revise.")
    (whole,) = asked.attachments
    assert (await whole.read()).decode() == question


async def test_stored_openings_of_unknown_askers_are_forgotten_on_upgrade(tmp_path: Path) -> None:
    """Openings stored before ``private_to`` name no asker: outside threads they are dropped."""
    path = tmp_path / "usage.sqlite3"
    async with aiosqlite.connect(path) as db:
        await migrate(db, target=5)
        for conversation in ("slash:1", "reply:2", "thread:3"):
            await db.execute(
                "INSERT INTO conversations (id, opening, updated_at) VALUES (?, ?, ?)",
                (
                    conversation,
                    '{"id": 1, "role": "user", "text": "q", "name": "alice"}',
                    time.time(),
                ),
            )
        await db.commit()
    async with UsageLog(path):
        pass
    kept = rows(path, "SELECT id FROM conversations WHERE opening IS NOT NULL")
    assert [row["id"] for row in kept] == ["thread:3"]


# 25.4 A reference that leads out of the channel


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
@pytest.mark.parametrize("claimed", ["its own channel", "this channel"])
async def test_a_reply_that_points_into_another_channel_is_not_followed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, claimed: str
) -> None:
    s = await scene(harness)
    staff = s.guild.create_text_channel(
        "staff", overwrites={s.bob: discord.PermissionOverwrite(view_channel=False)}
    )
    carol = s.guild.add_member(harness.env.create_user("carol"))
    await carol.slash(staff, "chat", message=SECRET, thread=True)
    await harness.finish()
    (room,) = staff.threads
    *_, answer = bot_messages(harness, room)
    assert answer.content == f"echo: {SECRET}"
    # A forged reply (Discord refuses one across channels, so SimCord's check is lifted):
    # Bob's message in #study claims to reply to the answer in the staff thread, naming the
    # thread or #study as where it is.
    channel = room.id if claimed == "its own channel" else s.channel.id
    backend = harness.env.backend
    with monkeypatch.context() as forging:
        forging.setattr(backend, "normalize_message_reference", lambda channel, ref: ref)
        backend.create_message(
            s.channel.id,
            s.bob.id,
            mention(harness, "what did they say?"),
            reference={"type": 0, "channel_id": str(channel), "message_id": str(answer.id),
                       "fail_if_not_exists": False},
        )  # fmt: skip
    await harness.env.settle()
    await harness.finish()
    *_, request = chat_requests(harness)
    assert request.message == "what did they say?"
    assert "B, D, A, C" not in prompt_of(request) and request.history == ()


# 25.5 Access removed a moment before the read


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_history_is_checked_when_it_is_read_not_when_the_command_came(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)
    await s.bob.send(s.channel, SECRET)
    defer = discord.InteractionResponse.defer

    async def deferred_then_revoked(self: discord.InteractionResponse, **kwargs: Any) -> None:
        await defer(self, **kwargs)
        channel = harness.bot.get_channel(s.channel.id)
        assert isinstance(channel, discord.TextChannel)
        member = await channel.guild.fetch_member(s.alice.id)
        await channel.set_permissions(member, read_message_history=False)  # a moderator

    monkeypatch.setattr(discord.InteractionResponse, "defer", deferred_then_revoked)
    refused = await s.alice.slash(s.channel, "summarize", messages=10)
    await harness.finish()
    assert refused.response.content == "**messages**: points to messages you cannot read"
    assert harness.tasks["summarize"].runs == []


# 25.6 /conversation memory acknowledges before it reads


async def test_conversation_memory_defers_before_reading_the_database(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)
    await s.alice.slash(s.channel, "chat", message="Exam prep", thread=True)
    await harness.finish()
    (room,) = s.channel.threads
    since = len(harness.env.http_requests)
    reads: list[bool] = []
    quick = harness.bot.usage.quick

    async def spied(*args: Any, **kwargs: Any) -> Any:
        reads.append(any(e.path.endswith("/callback") for e in harness.env.http_requests[since:]))
        return await quick(*args, **kwargs)

    monkeypatch.setattr(harness.bot.usage, "quick", spied)
    shown = await s.alice.slash(room, "conversation memory")
    await harness.finish()
    assert reads and all(reads)  # every read after the acknowledgement
    assert shown.ephemeral and "No summary yet" in shown.response.content


# 25.7 One line for a hidden channel and a missing one


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
@pytest.mark.simcord(approved_intents=discord.Intents.all())
async def test_a_hidden_channel_and_a_missing_one_get_the_same_line(harness: Harness) -> None:
    s = await scene(harness)
    hidden = s.guild.create_text_channel(
        "hidden", overwrites={s.alice: discord.PermissionOverwrite(view_channel=False)}
    )
    secret = await s.bob.send(hidden, SECRET)
    lines = []
    for link in (
        link_to(s.guild.id, hidden.id, secret.id),  # there, but not for her
        link_to(s.guild.id, hidden.id + 999, secret.id),  # no such channel
        link_to(s.guild.id, s.channel.id, secret.id + 999),  # no such message
    ):
        refused = await s.alice.slash(s.channel, "summarize", link=link)
        await harness.finish()
        lines.append(refused.response.content)
    assert lines == ["**link**: points to messages you cannot read"] * 3
    assert harness.tasks["summarize"].runs == []
