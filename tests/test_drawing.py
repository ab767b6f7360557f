"""Drawing from a picture on Discord through SimCord: /imagine image:, the Imagine from this
menu and its form, the Vary and Upscale buttons under images, and their refusals in one line.
The imagine task is scripted (tests/test_discord.py); the handler draws from pictures with a
tiny pipeline in tests/test_imagine.py."""

from __future__ import annotations

import io

import discord
import pytest
from PIL import Image

from bot.image_buttons import ImageButton
from handlers.imagine import ImagineRequest, ImagineResult
from handlers.upscale import UpscaleRequest, UpscaleResult
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    png,
    scene,
    simcord_bot,
    stack,
)


def drawn(h: Harness) -> list[ImagineRequest]:
    return [request for run in h.tasks["imagine"].runs for request in run]


def upscaled(h: Harness) -> list[UpscaleRequest]:
    return [request for run in h.tasks["upscale"].runs for request in run]


def labels(message: discord.Message) -> list[str]:
    return [c["label"] for row in message.components for c in row["components"]]


async def test_imagine_draws_from_an_attached_picture(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(
        s.channel, "imagine", prompt="as a watercolour", image=("cat.png", png(16)), strength=0.5
    )
    await harness.finish()
    assert result.response.attachments and not result.ephemeral
    (request,) = drawn(harness)
    assert request.image == png(16) and request.strength == 0.5
    assert request.prompt == "as a watercolour"
    await harness.bot.usage.flush()
    (row,) = [r for r in harness.rows() if r["task"] == "imagine"]
    assert row["status"] == "ok" and row["input_size"] >= len(png(16))
    assert "image" not in (row["options"] or "")  # the picture never reaches the log


async def test_a_bad_picture_or_strength_is_refused_in_one_line(harness: Harness) -> None:
    s = await scene(harness)
    text = await s.alice.slash(s.channel, "imagine", prompt="a cat", image=("a.txt", b"hi"))
    assert text.ephemeral and text.response.content == "**image**: is not an image"
    lonely = await s.alice.slash(s.channel, "imagine", prompt="a cat", strength=0.5)
    assert lonely.ephemeral and "applies only when starting from an image" in (
        lonely.response.content
    )
    harness.bot.settings.imagine.max_image_bytes = 10
    big = await s.alice.slash(s.channel, "imagine", prompt="a cat", image=("a.png", png()))
    assert big.ephemeral and "the limit is 10 bytes" in big.response.content
    assert drawn(harness) == []


async def test_the_menu_asks_what_to_draw_then_draws_from_the_messages_image(
    harness: Harness,
) -> None:
    s = await scene(harness)
    await s.bob.send(s.channel, "my sketch", attachments=[("sketch.png", png(16))])
    sketch = max((m for m in s.channel.history() if m.author.id == s.bob.id), key=lambda m: m.id)
    form = await s.alice.context_menu(s.channel, "Imagine from this", sketch)
    assert form.modal is not None
    done = await s.alice.submit_modal(form, {"prompt": "a castle", "strength": "0,4"})
    await harness.finish()
    assert done.response.attachments
    (request,) = drawn(harness)
    assert (request.prompt, request.strength, request.image) == ("a castle", 0.4, png(16))
    wrong = await s.alice.context_menu(s.channel, "Imagine from this", sketch)
    refused = await s.alice.submit_modal(wrong, {"prompt": "a castle", "strength": "lots"})
    assert "is not a number from 0.05 to 1" in refused.response.content
    words = await s.bob.send(s.channel, "no picture")
    none = await s.alice.context_menu(s.channel, "Imagine from this", words)
    assert none.ephemeral and none.response.content == "**message**: has no image"
    assert len(drawn(harness)) == 1


async def test_the_menu_reads_with_the_members_permissions(harness: Harness) -> None:
    s = await scene(harness)
    no_history = discord.PermissionOverwrite(read_message_history=False)
    notes = s.guild.create_text_channel("notes", overwrites={s.alice: no_history})
    await s.bob.send(notes, "answers", attachments=[("answers.png", png())])
    message = max((m for m in notes.history() if m.author.id == s.bob.id), key=lambda m: m.id)
    form = await s.alice.context_menu(notes, "Imagine from this", message)
    refused = await s.alice.submit_modal(form, {"prompt": "a castle"})
    await harness.finish()
    assert "cannot read" in refused.response.content and drawn(harness) == []


async def test_several_images_get_numbered_vary_buttons_each_drawing_from_its_own(
    harness: Harness,
) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "imagine", prompt="a fox", count=2)
    await harness.finish()
    message = result.response
    labels = [[c["label"] for c in row["components"]] for row in message.components]
    assert labels == [
        ["Reroll", "Delete"], ["Subtle 1", "Subtle 2"], ["Strong 1", "Strong 2"],
        ["2x 1", "2x 2"], ["4x 1", "4x 2"],
    ]  # fmt: skip
    await s.bob.click(message, label="Subtle 2")
    await harness.finish()
    varied = drawn(harness)[-1]
    assert (varied.strength, varied.count, varied.image) == (0.35, 1, png())


async def test_a_variations_button_posted_before_vary_draws_a_strong_variation() -> None:
    template = ImageButton.__discord_ui_compiled_template__
    match = template.fullmatch("img:vary:" + "a" * 32)
    assert match is not None
    button = await ImageButton.from_custom_id(None, None, match)  # type: ignore[arg-type]
    assert (button.action, button.index) == ("strong", None)


async def test_what_is_drawn_from_a_spoiler_image_is_a_spoiler_too(harness: Harness) -> None:
    s = await scene(harness)
    await s.bob.send(s.channel, "ending", attachments=[("SPOILER_end.png", png(16))])
    secret = max((m for m in s.channel.history() if m.author.id == s.bob.id), key=lambda m: m.id)
    form = await s.alice.context_menu(s.channel, "Imagine from this", secret)
    done = await s.alice.submit_modal(form, {"prompt": "a castle"})
    await harness.finish()
    assert [a.filename for a in done.response.attachments] == ["SPOILER_imagine-7.png"]
    varied = await s.bob.click(done.response, label="Vary (subtle)")
    await harness.finish()
    assert [a.filename for a in varied.response.attachments] == ["SPOILER_imagine-7.png"]


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "purple").save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_a_preview_shows_in_the_reply_until_the_images_replace_it(
    harness: Harness,
) -> None:
    s = await scene(harness)
    task = harness.tasks["imagine"]
    task.previews, task.hold = [jpeg()], True
    await s.alice.slash(s.channel, "imagine", prompt="a fox")
    assert task.entered.wait(5)
    await harness.env.settle()
    assert harness.bot.user is not None
    (progress,) = [m for m in s.channel.history() if m.author.id == harness.bot.user.id]
    assert [a.filename for a in progress.attachments] == ["preview.jpg"]
    assert await progress.attachments[0].read() == jpeg()
    task.gate.set()
    await harness.finish()
    (done,) = [m for m in s.channel.history() if m.author.id == harness.bot.user.id]
    assert [a.filename for a in done.attachments] == ["imagine-7.png"]


async def test_an_image_the_safety_filter_withheld_is_not_varied(harness: Harness) -> None:
    s = await scene(harness)
    task = harness.tasks["imagine"]
    task.respond = lambda r: ImagineResult([png(), png()], 7, 8, 8, 4, 7.5, 1, withheld=(1,))
    result = await s.alice.slash(s.channel, "imagine", prompt="a fox", count=2)
    await harness.finish()
    names = [a.filename for a in result.response.attachments]
    assert names == ["imagine-7.png", "withheld-2.png"]
    refused = await s.alice.click(result.response, label="Strong 2")
    assert refused.ephemeral and "withheld by the safety filter" in refused.response.content
    assert len(drawn(harness)) == 1


async def test_upscale_posts_the_image_larger_as_the_pressers_own_request(
    harness: Harness,
) -> None:
    s = await scene(harness)
    first = await s.alice.slash(s.channel, "imagine", prompt="a red fox", count=2)
    await harness.finish()
    done = await s.bob.click(first.response, label="2x 2")
    await harness.finish()
    (request,) = upscaled(harness)
    assert (request.factor, request.prompt, request.image) == (2, "a red fox", png())
    assert [a.filename for a in done.response.attachments] == ["upscale-5-2x.png"]
    assert "upscaled 2x · 16x16" in done.response.content and not done.response.components
    await s.alice.click(first.response, label="4x 1")
    await harness.finish()
    assert upscaled(harness)[-1].factor == 4
    await harness.bot.usage.flush()
    rows = [(r["user_id"], r["status"]) for r in harness.rows() if r["task"] == "upscale"]
    assert rows == [(str(s.bob.id), "ok"), (str(s.alice.id), "ok")]  # each presser's own


async def test_an_upscale_past_the_size_limit_is_not_offered_or_is_refused_in_one_line(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await scene(harness)
    limits = harness.tasks["upscale"].real  # shared by every test: patched, then restored
    monkeypatch.setattr(limits, "max_side", 128)  # 4x of the 64-pixel images would be 256
    first = await s.alice.slash(s.channel, "imagine", prompt="a red fox")
    await harness.finish()
    assert "Upscale 2x" in labels(first.response)
    assert "Upscale 4x" not in labels(first.response)
    monkeypatch.setattr(limits, "max_side", 12)  # 2x of the posted 8-pixel image is 16
    refused = await s.bob.click(first.response, label="Upscale 2x")
    await harness.finish()
    assert "2x would make a 16x16 image, over the 12 pixels a side" in refused.response.content
    assert upscaled(harness) == []


async def test_a_withheld_image_is_not_upscaled_and_an_upscale_can_be_withheld(
    harness: Harness,
) -> None:
    s = await scene(harness)
    harness.tasks["imagine"].respond = lambda r: ImagineResult(
        [png(), png()], 7, 8, 8, 4, 7.5, 1, withheld=(1,)
    )
    result = await s.alice.slash(s.channel, "imagine", prompt="a fox", count=2)
    await harness.finish()
    refused = await s.alice.click(result.response, label="2x 2")
    assert refused.ephemeral and "withheld by the safety filter" in refused.response.content
    assert upscaled(harness) == []
    harness.tasks["upscale"].respond = lambda r: UpscaleResult(png(), "png", 8, 8, 2, 1, True)
    done = await s.alice.click(result.response, label="2x 1")
    await harness.finish()
    assert [a.filename for a in done.response.attachments] == ["withheld-upscale.png"]
    assert "withheld by the safety filter" in done.response.content


async def test_a_large_upscale_is_said_to_be_a_webp(harness: Harness) -> None:
    s = await scene(harness)
    harness.tasks["upscale"].respond = lambda r: UpscaleResult(b"RIFF", "webp", 64, 64, 4, 3, False)
    first = await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await harness.finish()
    done = await s.alice.click(first.response, label="Upscale 4x")
    await harness.finish()
    assert [a.filename for a in done.response.attachments] == ["upscale-3-4x.webp"]
    assert "WEBP, to fit Discord's upload limit" in done.response.content
