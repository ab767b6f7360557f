"""Seeing on Discord through SimCord: /describe and the Describe image menu, and their
refusals in one line. The describe task is scripted (tests/test_discord.py); the handler is
tested with a tiny Idefics3 in tests/test_describe.py."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import discord
from PIL import Image

from bot.cogs.seeing import PROMPT_CHARS, prompt_from
from bot.seeing import is_image
from handlers.audio import over
from handlers.describe import DESCRIBE_EACH, IN_BRIEF, DescribeRequest
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    scene,
    simcord_bot,
    stack,
)


def png(color: str = "teal", size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def described(h: Harness) -> list[DescribeRequest]:
    return [request for run in h.tasks["describe"].runs for request in run]


async def posted(h: Harness, member: Any, channel: Any, *files: tuple[str, bytes]) -> Any:
    await member.send(channel, "look", attachments=list(files))
    return max((m for m in channel.history() if m.author.id == member.id), key=lambda m: m.id)


async def test_describe_an_image_with_a_question(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(
        s.channel, "describe", image=("board.png", png()), question="What does it say?"
    )
    await harness.finish()
    assert "a teal square" in result.response.content and not result.ephemeral
    (request,) = described(harness)
    assert request.images == (png(),) and request.question == "What does it say?"


async def test_describe_refuses_in_one_line_before_downloading(harness: Harness) -> None:
    s = await scene(harness)
    notes = await s.alice.slash(s.channel, "describe", image=("notes.txt", b"hello"))
    assert notes.ephemeral and notes.response.content == "**image**: is not an image"
    harness.bot.settings.describe.max_bytes = 10
    big = await s.alice.slash(s.channel, "describe", image=("big.png", png()))
    assert big.ephemeral and "; the limit is 10 bytes" in big.response.content
    assert described(harness) == []
    await harness.bot.usage.flush()
    assert [r["status"] for r in harness.rows() if r["task"] == "describe"] == ["invalid"] * 2


async def test_the_menu_describes_each_image_of_a_message(harness: Harness) -> None:
    s = await scene(harness)
    message = await posted(harness, s.bob, s.channel, ("a.png", png("red")), ("b.png", png()))
    result = await s.alice.context_menu(s.channel, "Describe image", message)
    await harness.finish()
    assert "2 image(s)" in result.response.content
    (request,) = described(harness)
    assert request.images == (png("red"), png()) and request.question == DESCRIBE_EACH
    text = await s.bob.send(s.channel, "no picture here")
    none = await s.alice.context_menu(s.channel, "Describe image", text)
    assert none.ephemeral and none.response.content == "**message**: has no image"
    harness.bot.settings.describe.max_images = 1
    many = await s.alice.context_menu(s.channel, "Describe image", message)
    assert many.ephemeral and "2 images; at most 1 at a time" in many.response.content
    assert len(described(harness)) == 1


async def test_the_menu_reads_with_the_members_permissions(harness: Harness) -> None:
    s = await scene(harness)
    no_history = discord.PermissionOverwrite(read_message_history=False)
    notes = s.guild.create_text_channel("notes", overwrites={s.alice: no_history})
    message = await posted(harness, s.bob, notes, ("answers.png", png()))
    refused = await s.alice.context_menu(notes, "Describe image", message)
    await harness.finish()
    assert "cannot read" in refused.response.content and described(harness) == []


async def test_describe_follows_the_direct_message_policy_and_the_servers_switch(
    harness: Harness,
) -> None:
    s = await scene(harness)
    dan = harness.env.create_user("dan")  # text-only direct messages: not even offered there
    assert "summarize" in dan.available_commands()
    assert "describe" not in dan.available_commands()
    await harness.bot.guild_settings.update(s.guild.id, enabled_commands=["chat"])
    off = await s.alice.slash(s.channel, "describe", image=("a.png", png()))
    assert off.ephemeral and "/describe is turned off in this server" in off.response.content
    assert described(harness) == []


async def test_imagine_this_draws_the_description(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "describe", image=("board.png", png()))
    await harness.finish()
    drawn = await s.bob.click(result.response, label="Imagine this")
    await harness.finish()
    (request,) = [r for run in harness.tasks["imagine"].runs for r in run]
    assert request.prompt == "1 image(s): a teal square"
    assert [a.filename for a in drawn.response.attachments] == ["imagine-7.png"]


def test_a_prompt_is_the_description_without_notes_or_alt_text() -> None:
    description = "A whiteboard with a formula.\nAlt text: a whiteboard\n-# 👁️ a note\n" + (
        "word " * 200
    )
    prompt = prompt_from(description)
    assert prompt.startswith("A whiteboard with a formula. word word")
    assert "Alt text" not in prompt and "note" not in prompt
    assert len(prompt) <= PROMPT_CHARS and prompt.endswith("word")


def test_a_size_just_over_a_limit_never_reads_as_the_limit() -> None:
    assert over(2**20 + 1, 2**20) == "is 1,048,577 bytes; the limit is 1,048,576 bytes"
    assert over(25 * 2**20 + 2**19, 25 * 2**20) == "is 25.5 MiB; the limit is 25 MiB"
    assert over(300 * 1024, 100) == "is 300 KiB; the limit is 100 bytes"


async def flagged(h: Harness, member: Any, channel: Any, name: str, flags: int) -> Any:
    """A member's message with one image whose attachment carries Discord's ``flags``."""
    backend = h.env.backend
    (attachment,) = backend.store_attachments(channel.id, [(name, png())])
    attachment.update(content_type="image/png", flags=flags)
    backend.create_message(channel.id, member.id, "", attachments=[attachment])
    await h.env.settle()
    return max((m for m in channel.history() if m.author.id == member.id), key=lambda m: m.id)


async def test_imagine_this_is_offered_only_where_imagine_works(harness: Harness) -> None:
    s = await scene(harness, images_anywhere=False)  # images only in age-restricted channels
    result = await s.alice.slash(s.channel, "describe", image=("board.png", png()))
    await harness.finish()
    assert "a teal square" in result.response.content
    assert not result.response.components  # nothing to press that would only refuse


async def test_a_spoiler_is_described_behind_a_spoiler_and_explicit_media_is_refused(
    harness: Harness,
) -> None:
    s = await scene(harness)
    spoiler = await flagged(harness, s.bob, s.channel, "SPOILER_plot.png", 0)
    hidden = await s.alice.context_menu(s.channel, "Describe image", spoiler)
    await harness.finish()
    assert hidden.response.content.startswith("||1 image(s): a teal square||")
    assert not hidden.response.components
    explicit = await flagged(harness, s.bob, s.channel, "photo.png", 16)  # contains explicit media
    refused = await s.alice.context_menu(s.channel, "Describe image", explicit)
    assert refused.ephemeral and "marked explicit by Discord" in refused.response.content
    assert len(described(harness)) == 1


async def test_classroom_safe_servers_screen_images_or_refuse_without_a_filter(
    harness: Harness,
) -> None:
    s = await scene(harness)
    await harness.bot.guild_settings.update(s.guild.id, classroom_safe=True)
    refused = await s.alice.slash(s.channel, "describe", image=("a.png", png()))
    assert refused.ephemeral and "off in this classroom-safe server" in refused.response.content
    assert "BOT_IMAGINE__SAFETY_MODEL" in refused.response.content
    assert described(harness) == []
    harness.tasks["describe"].real.safety_model = "a-safety-classifier"  # type: ignore[attr-defined]
    result = await s.alice.slash(s.channel, "describe", image=("a.png", png()))
    await harness.finish()
    assert "a teal square" in result.response.content
    (request,) = described(harness)
    assert request.screen  # the worker's classifier judges it before the model sees it


async def test_the_menu_gives_each_image_its_share_of_the_answer(harness: Harness) -> None:
    s = await scene(harness)
    message = await posted(harness, s.bob, s.channel, ("a.png", png("red")), ("b.png", png()))
    await s.alice.context_menu(s.channel, "Describe image", message)
    await harness.finish()
    (request,) = described(harness)
    assert request.max_new_tokens == 2 * harness.bot.settings.describe.default_new_tokens


def test_the_menu_is_not_offered_where_direct_messages_are_text_only(harness: Harness) -> None:
    menus = {c.name: c for c in harness.bot.tree.get_commands(type=discord.AppCommandType.message)}
    assert menus["Describe image"].allowed_contexts.dm_channel is False
    assert menus["Summarize"].allowed_contexts.dm_channel is True


def test_a_prompt_drops_escapes_and_the_bots_own_lines() -> None:
    text = "\\# A \\[slide\\] on **mitosis**\n**Alt text:** a slide\n*(full text attached)*"
    assert prompt_from(text) == "# A [slide] on **mitosis**"
    assert prompt_from("*(no description)*") == ""


# Images in conversations


def chats(h: Harness) -> list[Any]:
    return [request for run in h.tasks["chat"].runs for request in run]


def mention(h: Harness, text: str) -> str:
    assert h.bot.user is not None
    return f"{h.bot.user.mention} {text}"


async def talk(h: Harness, member: Any, channel: Any, text: str, **kwargs: Any) -> Any:
    """A member's message, then the bot's last answer once every job has its reply."""
    await member.send(channel, text, **kwargs)
    await h.finish()
    assert h.bot.user is not None
    return [m for m in channel.history() if m.author.id == h.bot.user.id][-1]


async def test_a_mention_with_an_image_is_answered_by_the_vision_model(harness: Harness) -> None:
    s = await scene(harness)
    answer = await talk(
        harness, s.alice, s.channel, mention(harness, "what is on this slide?"),
        attachments=[("slide.png", png("red"))],
    )  # fmt: skip
    assert answer.content == "1 image(s): a teal square"
    (request,) = described(harness)
    assert request.images == (png("red"),) and request.question == "what is on this slide?"
    assert request.name == "alice" and request.history == () and request.images_per_turn == (1,)
    assert request.system == harness.bot.settings.chat.system_prompt
    assert chats(harness) == []
    await harness.bot.usage.flush()
    assert [(r["task"], r["status"]) for r in harness.rows()] == [("describe", "ok")]


async def test_an_earlier_image_is_still_seen_and_past_the_budget_becomes_its_description(
    harness: Harness,
) -> None:
    s = await scene(harness)
    harness.bot.settings.describe.conversation_images = 1
    first = await talk(
        harness, s.alice, s.channel, mention(harness, "what is this?"),
        attachments=[("cell.png", png("red"))],
    )  # fmt: skip
    second = await talk(harness, s.alice, s.channel, "and its nucleus?", reply_to=first)
    *_, follow_up = described(harness)
    assert follow_up.images == (png("red"),) and follow_up.images_per_turn == (1, 0, 0)
    assert follow_up.history[0].content == "what is this?"
    await talk(
        harness, s.bob, s.channel, mention(harness, "compare with mine"), reply_to=second,
        attachments=[("mine.png", png("blue"))],
    )  # fmt: skip
    *_, brief, third = described(harness)
    assert brief.images == (png("red"),) and brief.question == IN_BRIEF
    assert third.images == (png("blue"),) and third.images_per_turn == (0, 0, 0, 0, 1)
    assert third.history[0].content == "what is this?\n[image: 1 image(s): a teal square]"
    count = len(described(harness))
    await talk(harness, s.bob, s.channel, mention(harness, "thanks"), reply_to=second)
    assert len(described(harness)) == count + 1  # the description is kept, not made again


async def test_a_text_only_chat_is_handed_each_image_as_its_description(
    harness: Harness,
) -> None:
    s = await scene(harness)
    harness.bot.settings.describe.conversation_images = 0
    answer = await talk(
        harness, s.alice, s.channel, mention(harness, "what is this?"),
        attachments=[("cell.png", png("red"))],
    )  # fmt: skip
    (brief,) = described(harness)
    assert brief.images == (png("red"),) and brief.question == IN_BRIEF
    (request,) = chats(harness)
    assert request.message == "what is this?\n[image: 1 image(s): a teal square]"
    assert answer.content.startswith("echo: what is this?")


async def test_a_member_who_cannot_read_the_chain_is_not_shown_its_images(
    harness: Harness,
) -> None:
    s = await scene(harness)
    no_history = discord.PermissionOverwrite(read_message_history=False)
    notes = s.guild.create_text_channel("notes", overwrites={s.alice: no_history})
    shown = await talk(
        harness, s.bob, notes, mention(harness, "the answers"),
        attachments=[("answers.png", png("red"))],
    )  # fmt: skip
    await talk(harness, s.alice, notes, mention(harness, "what were they?"), reply_to=shown)
    (bobs,) = described(harness)
    assert bobs.images == (png("red"),)
    (request,) = chats(harness)  # alice's turn: her own words, nothing of bob's image
    assert request.message == "what were they?" and request.history == ()


async def test_images_in_a_conversation_are_refused_in_one_line(harness: Harness) -> None:
    s = await scene(harness)
    harness.bot.settings.describe.max_images = 1
    many = await talk(
        harness, s.alice, s.channel, mention(harness, "these?"),
        attachments=[("a.png", png()), ("b.png", png())],
    )  # fmt: skip
    assert "2 images; at most 1 at a time" in many.content
    backend = harness.env.backend
    (photo,) = backend.store_attachments(s.channel.id, [("photo.png", png())])
    photo.update(content_type="image/png", flags=16)  # Discord: contains explicit media
    backend.create_message(s.channel.id, s.alice.id, mention(harness, "this?"), attachments=[photo])
    await harness.env.settle()
    await harness.finish()
    assert harness.bot.user is not None
    *_, explicit = [m for m in s.channel.history() if m.author.id == harness.bot.user.id]
    assert "marked explicit by Discord" in explicit.content
    assert described(harness) == [] and chats(harness) == []
    await harness.bot.guild_settings.update(s.guild.id, enabled_commands=["chat"])
    off = await talk(
        harness, s.alice, s.channel, mention(harness, "this?"), attachments=[("a.png", png())]
    )
    assert "/describe is turned off in this server" in off.content
    assert described(harness) == [] and chats(harness) == []


async def test_an_image_in_a_direct_message_follows_the_policy(harness: Harness) -> None:
    s = await scene(harness)
    backend = harness.env.backend
    files = backend.store_attachments(backend.get_dm_channel(s.alice.id).id, [("a.png", png())])
    await s.alice.send_dm("what is this?", attachments=files)
    await harness.finish()
    dm = s.alice.user.dm_channel
    (answer,) = [m for m in dm.history() if m.author.id != s.alice.id]
    assert "works in servers only" in answer.content
    assert described(harness) == [] and chats(harness) == []


def unfurled(h: Harness, host: str, data: bytes) -> dict[str, Any]:
    """An embed as Discord unfurls a link to an image, its copy served from ``host``."""
    proxied = f"https://{host}/external/abc/https/example.org/cat.png"
    h.env.backend.cdn._blobs[proxied] = data
    image = {"url": "https://example.org/cat.png", "proxy_url": proxied, "width": 16,
             "height": 16}  # fmt: skip
    return {"type": "image", "url": "https://example.org/cat.png", "thumbnail": image}


async def test_an_image_unfurled_from_a_link_is_seen_from_discords_media_proxy_only(
    harness: Harness,
) -> None:
    s = await scene(harness)
    backend = harness.env.backend
    assert harness.bot.user is not None
    backend.create_message(
        s.channel.id, s.alice.id, mention(harness, "https://example.org/cat.png what breed?"),
        embeds=[unfurled(harness, "media.discordapp.net", png("orange"))],
    )  # fmt: skip
    await harness.env.settle()
    await harness.finish()
    (request,) = described(harness)
    assert request.images == (png("orange"),)
    backend.create_message(
        s.channel.id, s.alice.id, mention(harness, "and this one?"),
        embeds=[unfurled(harness, "evil.example", png("black"))],
    )  # fmt: skip
    await harness.env.settle()
    await harness.finish()
    assert len(described(harness)) == 1  # never fetched from elsewhere: a text turn
    assert chats(harness)[-1].message == "and this one?"
    article = {**unfurled(harness, "media.discordapp.net", png("white")), "type": "article"}
    backend.create_message(
        s.channel.id, s.alice.id, mention(harness, "https://example.org/news summarise it"),
        embeds=[article],
    )  # fmt: skip
    await harness.env.settle()
    await harness.finish()
    assert len(described(harness)) == 1  # a page's preview picture is not an image shown


async def test_the_menu_describes_the_images_of_a_forwarded_message(harness: Harness) -> None:
    s = await scene(harness)
    original = await posted(harness, s.bob, s.channel, ("diagram.png", png("red")))
    elsewhere = s.guild.create_text_channel("elsewhere")
    forward = await s.alice.forward(original, elsewhere)
    await s.alice.context_menu(elsewhere, "Describe image", forward)
    await harness.finish()
    (request,) = described(harness)
    assert request.images == (png("red"),)


async def test_an_earlier_image_too_large_to_show_never_breaks_the_conversation(
    harness: Harness,
) -> None:
    s = await scene(harness)
    first = await talk(
        harness, s.alice, s.channel, mention(harness, "look"),
        attachments=[("big.png", png("red"))],
    )  # fmt: skip
    harness.bot.settings.describe.max_bytes = 10  # the image is now too large to fetch
    later = await talk(harness, s.bob, s.channel, mention(harness, "and?"), reply_to=first)
    assert later.content.startswith("echo: and?")  # the chat model answers, nothing refused
    *_, request = chats(harness)
    assert request.history[0].content == "look\n[image: an image not shown here " + (
        "(marked explicit by Discord, or too large)]"
    )
    assert len(described(harness)) == 1


async def test_an_answer_about_a_spoiler_image_streams_behind_a_spoiler(
    harness: Harness,
) -> None:
    s = await scene(harness)
    harness.tasks["describe"].hold = True
    backend = harness.env.backend
    (secret,) = backend.store_attachments(s.channel.id, [("SPOILER_end.png", png())])
    secret.update(content_type="image/png")
    backend.create_message(
        s.channel.id, s.alice.id, mention(harness, "who is it?"), attachments=[secret]
    )
    await harness.env.settle()
    assert harness.tasks["describe"].entered.wait(5)
    (watcher,) = harness.bot.watchers.values()
    assert watcher.spoiler
    harness.tasks["describe"].gate.set()
    await harness.finish()
    assert harness.bot.user is not None
    *_, answer = [m for m in s.channel.history() if m.author.id == harness.bot.user.id]
    assert answer.content.startswith("||1 image(s): a teal square||")


def test_a_vector_drawing_is_not_an_image_the_models_can_read() -> None:
    svg = discord.Attachment(
        data={
            "id": 1,
            "filename": "logo.svg",
            "size": 10,
            "url": "https://x",
            "proxy_url": "https://x",
            "content_type": "image/svg+xml",
        },
        state=SimpleNamespace(http=None),  # type: ignore[arg-type]
    )
    assert not is_image(svg)
