"""/config through SimCord: a server manager sets each rule the bot enforces and sees it
take effect for members, and /config show tells what is in force."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from bot.guilds import CLASSROOM_NEGATIVE_PROMPT, GuildSettings
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    png,
    scene,
    simcord_bot,
    stack,
)


async def manager(h: Harness, guild: Any) -> Any:
    mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    return guild.add_member(h.env.create_user("carol"), roles=[mods])


async def configure(h: Harness, carol: Any, where: Any, command: str, /, **options: Any) -> str:
    """Run ``/config <command>`` in channel ``where`` and return its private answer."""
    result = await carol.slash(where, f"config {command}", **options)
    await h.env.settle()
    reply = result.followups[-1] if result.followups else result.response
    assert result.ephemeral, reply.content
    return reply.content


@pytest.fixture
def age_restricted(monkeypatch: pytest.MonkeyPatch) -> str:
    """SimCord has no age-restricted channels: a channel of this name counts as one."""
    name = "after-dark"
    monkeypatch.setattr(discord.TextChannel, "is_nsfw", lambda channel: channel.name == name)
    return name


async def test_show_tells_every_rule_and_where_it_comes_from(harness: Harness) -> None:
    s = await scene(harness, images_anywhere=False)
    carol = await manager(harness, s.guild)
    shown = await configure(harness, carol, s.channel, "show")
    for line in (
        "- Replies: public",
        "- Images: only in age-restricted channels",
        "- Classroom-safe: off",
        "- Channels: every channel",
        "- Daily limits per member: /imagine 5 (bot default)",
        "- Cooldowns: none",
        "- Words refused in /imagine prompts: none",
        "- Chat persona: the bot's default",
        "- Read aloud in calls: up to 300 characters of a message (bot default)",
    ):
        assert line in shown.splitlines()
    await configure(harness, carol, s.channel, "quota", task="chat", per_day=3)
    await configure(harness, carol, s.channel, "command", name="speak", enabled=False)
    shown = await configure(harness, carol, s.channel, "show")
    assert "- Daily limits per member: /chat 3, /imagine 5 (bot default)" in shown
    assert "; off: /speak" in shown


async def test_non_managers_cannot_change_settings(harness: Harness) -> None:
    s = await scene(harness)
    assert not any(c.startswith("config") for c in s.alice.available_commands(s.channel))
    carol = await manager(harness, s.guild)
    assert {"config show", "config quota", "config classroom_safe"} <= set(
        carol.available_commands(s.channel)
    )


async def test_replies_private_makes_answers_private(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    assert "private" in await configure(harness, carol, s.channel, "replies", visibility="private")
    result = await s.alice.slash(s.channel, "sentiment", text="I love this group")
    await harness.finish()
    assert result.ephemeral
    await configure(harness, carol, s.channel, "replies", visibility="public")
    result = await s.alice.slash(s.channel, "sentiment", text="I love this group")
    await harness.finish()
    assert not result.ephemeral


async def test_images_anywhere_or_age_restricted_only(harness: Harness) -> None:
    s = await scene(harness, images_anywhere=False)
    carol = await manager(harness, s.guild)
    refused = await s.alice.slash(s.channel, "imagine", prompt="a red fox")
    assert "age-restricted" in refused.response.content
    await configure(harness, carol, s.channel, "images", where="allow")
    await s.alice.slash(s.channel, "imagine", prompt="a red fox")
    await harness.finish()
    assert len(harness.tasks["imagine"].runs) == 1


async def test_allowed_channels(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    lab = s.guild.create_text_channel("lab")
    answer = await configure(harness, carol, s.channel, "channel", channel=lab, allowed=True)
    assert f"<#{lab.id}>" in answer
    refused = await s.alice.slash(s.channel, "sentiment", text="fine")
    assert refused.ephemeral and "cannot be used in this channel" in refused.response.content
    served = await s.alice.slash(lab, "sentiment", text="fine")
    await harness.finish()
    assert "POSITIVE" in served.response.content
    last = await configure(harness, carol, s.channel, "channel", channel=lab, allowed=False)
    assert last.startswith("**allowed**:") and "reset rule:channels" in last
    await configure(harness, carol, s.channel, "reset", rule="channels")
    assert harness.bot.guild_settings.get(s.guild.id).allowed_channels is None


async def test_quotas_cooldowns_and_exempt_roles(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    await configure(harness, carol, s.channel, "quota", task="/sentiment", per_day=1)
    await configure(harness, carol, s.channel, "cooldown", task="classify", seconds=600)
    await s.alice.slash(s.channel, "sentiment", text="one")
    over = await s.alice.slash(s.channel, "sentiment", text="two")
    assert "all 1 sentiment requests" in over.response.content
    await s.alice.slash(s.channel, "classify", text="a", labels="x,y")
    cooling = await s.alice.slash(s.channel, "classify", text="b", labels="x,y")
    assert "cooling down" in cooling.response.content
    await harness.finish()

    helpers = s.guild.create_role("helpers")
    dave = s.guild.add_member(harness.env.create_user("dave"), roles=[helpers])
    await configure(harness, carol, s.channel, "exempt_role", role=helpers, exempt=True)
    for text in ("one", "two", "three"):
        answer = await dave.slash(s.channel, "sentiment", text=text)
        await harness.finish()
        assert "POSITIVE" in answer.response.content

    await configure(harness, carol, s.channel, "quota", task="sentiment")  # the bot's again
    settings = harness.bot.guild_settings.get(s.guild.id)
    assert settings.quotas == {} and settings.cooldowns == {"classify": 600}
    typo = await configure(harness, carol, s.channel, "quota", task="sentimnt", per_day=2)
    assert typo.startswith("**task**:")


async def test_blocked_terms_and_negative_prompt_reach_imagine(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    await configure(harness, carol, s.channel, "blocked_term", term="Dragon")
    refused = await s.alice.slash(s.channel, "imagine", prompt="a red DRAGON at dusk")
    assert refused.response.content.startswith("**prompt**:")
    assert harness.tasks["imagine"].runs == []
    await configure(harness, carol, s.channel, "blocked_term", term="dragon", blocked=False)
    await configure(harness, carol, s.channel, "negative_prompt", text="blurry, text")
    await s.alice.slash(s.channel, "imagine", prompt="a red dragon", negative="watermark")
    await harness.finish()
    ((request,),) = harness.tasks["imagine"].runs
    assert request.negative_prompt == "watermark, blurry, text"

    # The member's own words keep their room, and are told how much the server takes.
    long = await s.alice.slash(s.channel, "imagine", prompt="a fox", negative="x" * 995)
    assert long.response.content.startswith("**negative**:")
    assert "keep yours under 986" in long.response.content


async def test_classroom_safe_is_one_switch(harness: Harness, age_restricted: str) -> None:
    s = await scene(harness)  # images allowed anywhere
    carol = await manager(harness, s.guild)
    dark = s.guild.create_text_channel(age_restricted)

    warned = await configure(harness, carol, s.channel, "classroom_safe", on=True)
    assert "no image safety filter" in warned
    refused = await s.alice.slash(dark, "imagine", prompt="a red fox")
    assert "BOT_IMAGINE__SAFETY_MODEL" in refused.response.content

    harness.tasks["imagine"].real.safety_model = "tiny/safety"
    shown = await configure(harness, carol, s.channel, "show")
    assert "- Images: only in age-restricted channels" in shown
    assert "- Classroom-safe: **on**" in shown and "no safety filter" not in shown
    outside = await s.alice.slash(s.channel, "imagine", prompt="a red fox")
    assert "age-restricted" in outside.response.content
    word = await s.alice.slash(dark, "imagine", prompt="a naked tree in winter")
    assert word.response.content.startswith("**prompt**:")
    await s.alice.slash(dark, "imagine", prompt="a red fox")
    await harness.finish()
    ((request,),) = harness.tasks["imagine"].runs
    assert request.negative_prompt == CLASSROOM_NEGATIVE_PROMPT

    await configure(harness, carol, s.channel, "classroom_safe", on=False)
    await s.alice.slash(s.channel, "imagine", prompt="a naked tree in winter")
    await harness.finish()
    assert harness.tasks["imagine"].runs[-1][0].negative_prompt == ""


async def test_chat_threads_persona_and_reset_everything(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    await configure(harness, carol, s.channel, "chat_threads", on=True)
    await configure(harness, carol, s.channel, "persona", text="You are a tutor.")
    both = await configure(harness, carol, s.channel, "persona", text="x", clear=True)
    assert both.startswith("**text**:")
    settings = harness.bot.guild_settings.get(s.guild.id)
    assert settings.chat_threads and settings.persona == "You are a tutor."
    await configure(harness, carol, s.channel, "reset", rule="everything")
    assert harness.bot.guild_settings.get(s.guild.id) == GuildSettings()


async def test_the_image_model_a_server_draws_with_and_a_members_own_pick(
    harness: Harness,
) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    offered = await s.alice.autocomplete(s.channel, "imagine", "model", "", prompt="a fox")
    assert [choice["value"] for choice in offered] == ["sd", "turbo"]
    shown = await configure(harness, carol, s.channel, "show")
    assert "- Image model when a member picks none: sd (bot default)" in shown
    refused = await configure(harness, carol, s.channel, "image_model", name="flux")
    assert refused == "**name**: choose one of sd, turbo"
    done = await configure(harness, carol, s.channel, "image_model", name="turbo")
    assert done == "✅ /imagine now draws with turbo here."
    first = await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await s.bob.slash(s.channel, "imagine", prompt="a fox", model="sd")
    await harness.finish()
    assert [run[0].model for run in harness.tasks["imagine"].runs] == ["turbo", "sd"]
    assert first.response.content.endswith("· turbo")
    rerolled = await s.bob.click(first.response, label="Reroll")
    await harness.finish()
    assert harness.tasks["imagine"].runs[-1][0].model == "turbo"  # the image's own model
    assert rerolled.response.content.endswith("· turbo")
    unknown = await s.alice.slash(s.channel, "imagine", prompt="a fox", model="flux")
    assert unknown.response.content == (
        "**model**: 'flux' is not installed here; choose from sd, turbo"
    )
    await configure(harness, carol, s.channel, "reset", rule="image_model")
    await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await harness.finish()
    assert harness.tasks["imagine"].runs[-1][0].model is None
    photo = await s.alice.slash(
        s.channel, "imagine", prompt="a fox", model="turbo", image=("cat.png", png(16))
    )
    await harness.finish()
    drawn = harness.tasks["imagine"].runs[-1][0]
    assert (drawn.model, drawn.image) == ("turbo", png(16)) and photo.response.attachments


async def test_reroll_keeps_the_model_an_image_was_drawn_by(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    first = await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await harness.finish()
    await configure(harness, carol, s.channel, "image_model", name="turbo")
    await s.bob.click(first.response, label="Reroll")
    await harness.finish()
    assert [run[0].model for run in harness.tasks["imagine"].runs] == [None, "sd"]


async def test_no_upscale_buttons_where_upscaling_is_off(harness: Harness) -> None:
    s = await scene(harness)
    carol = await manager(harness, s.guild)
    await configure(harness, carol, s.channel, "command", name="upscale", enabled=False)
    result = await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await harness.finish()
    labels = [c["label"] for row in result.response.components for c in row["components"]]
    assert labels == ["Reroll", "Vary (subtle)", "Vary (strong)", "Delete"]


async def test_a_server_default_no_longer_installed_falls_back_to_the_bots(
    harness: Harness,
) -> None:
    s = await scene(harness)
    await harness.bot.guild_settings.update(s.guild.id, image_model="gone")
    carol = await manager(harness, s.guild)
    shown = await configure(harness, carol, s.channel, "show")
    assert (
        "- Image model when a member picks none: gone is not installed any more, so sd "
        "(bot default)" in shown
    )
    await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await harness.finish()
    assert harness.tasks["imagine"].runs[-1][0].model is None


async def test_the_upscale_buttons_follow_the_models_own_size(harness: Harness) -> None:
    """turbo draws 128-px images, the default 64-px ones; upscales end at 256 px here."""
    s = await scene(harness)
    fast = await s.alice.slash(s.channel, "imagine", prompt="a fox", model="turbo")
    slow = await s.alice.slash(s.channel, "imagine", prompt="a fox")
    await harness.finish()
    fast_labels = [c["label"] for row in fast.response.components for c in row["components"]]
    slow_labels = [c["label"] for row in slow.response.components for c in row["components"]]
    assert "Upscale 2x" in fast_labels and "Upscale 4x" not in fast_labels
    assert "Upscale 4x" in slow_labels
