"""What the command modules share: who is calling and with what rights, the options they
offer, how each task's result looks, and running a task for an interaction (admit, defer,
follow). Below every cog, so that no cog imports another."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.delivery import InteractionPlace, Reply, ReplyPolicy
from bot.hearing import render_transcript
from bot.invocations import COMMANDS_OVER_TASKS, Caller
from bot.seeing import hidden, render_description
from handlers.base import HandlerError
from handlers.chat import ChatResult
from handlers.classify import ClassifyResult
from handlers.describe import DescribeResult
from handlers.imagine import ImagineResult
from handlers.languages import LANGUAGES
from handlers.sentiment import SentimentResult
from handlers.speak import SpeakResult
from handlers.summarize import SummarizeResult
from handlers.transcribe import TranscribeResult
from handlers.translate import TranslateResult
from handlers.upscale import UpscaleResult

if TYPE_CHECKING:
    from bot.client import AssistantBot
    from bot.executor import JobHandle

    Interaction = discord.Interaction[AssistantBot]

Text = app_commands.Range[str, 1, 4000]


def caller_of(interaction: Interaction) -> Caller:
    caller = place_caller(
        interaction.user, interaction.channel, interaction.channel_id, interaction.guild_id,
        interaction.client.is_private(interaction),
    )  # fmt: skip
    command = interaction.command
    root = getattr(command, "root_parent", None) or command  # a menu has no parent
    if root is not None and root.name in COMMANDS_OVER_TASKS:
        return dataclasses.replace(caller, command=root.name)
    return caller


def place_caller(
    user: discord.User | discord.Member,
    channel: Any,
    channel_id: int | None,
    guild_id: int | None,
    private: bool,
) -> Caller:
    """Who asks and where, as admission sees it, for a command or a message alike."""
    return Caller(
        user_id=str(user.id),
        source="discord",
        guild_id=guild_id,
        channel_id=channel_id,
        parent_id=getattr(channel, "parent_id", None),
        roles=tuple(role.id for role in user.roles) if isinstance(user, discord.Member) else (),
        age_restricted=bool(channel is not None and getattr(channel, "is_nsfw", bool)()),
        private=private,
    )


def image_model_choices(bot: AssistantBot, current: str) -> list[app_commands.Choice[str]]:
    """The installed image models whose name holds what the member typed, the default first."""
    task = bot.executor.tasks.get("imagine")
    names = task.model_names() if task is not None else []  # type: ignore[attr-defined]
    wanted = current.strip().lower()
    return [app_commands.Choice(name=n, value=n) for n in names if wanted in n][:25]


def voice_names(bot: AssistantBot) -> list[str]:
    """The speech voices offered; none when the voice table could not be loaded (/speak
    then says why)."""
    try:
        return bot.executor.tasks["speak"].voice_names()  # type: ignore[attr-defined]
    except HandlerError:
        return []


def voice_choices(bot: AssistantBot, current: str) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=n, value=n) for n in voice_names(bot) if current in n][:25]


class NotAnAdmin(app_commands.CheckFailure):
    def __init__(self) -> None:
        super().__init__("this command is for server managers and the bot's owners")


def is_admin(interaction: Interaction) -> bool:
    """Manage Server, or one of the configured owners (the Discord setting can be changed)."""
    user = interaction.user
    return str(user.id) in interaction.client.settings.owner_ids or (
        isinstance(user, discord.Member) and user.guild_permissions.manage_guild
    )


def admin_only() -> app_commands.check:
    async def predicate(interaction: Interaction) -> bool:
        if not is_admin(interaction):
            raise NotAnAdmin
        return True

    return app_commands.check(predicate)


WITHHELD = "withheld-"
"""How the file of an image the safety filter withheld is named: a notice, not an image to
vary."""


def render(result: Any) -> Reply:
    """How each task's result looks in Discord: what the model wrote, and the bot's note."""
    match result:
        case SummarizeResult():
            note = f"-# summarised from {result.chunks} parts" if result.chunks > 1 else ""
            return Reply(result.summary, note)
        case TranslateResult():
            note = f"-# {result.source} → {result.target}"
            if result.guessed:
                name = LANGUAGES.get(result.source, result.source)
                note += f" · from {name}, guessed: if wrong, use /translate with from:"
            return Reply(result.text, note)
        case ImagineResult():
            note = f"-# seed {result.seed} · {result.width}x{result.height} · {result.steps} steps"
            if result.model is not None:
                note += f" · {result.model}"
            if result.flagged:
                note += f" · {result.flagged} withheld by the safety filter"
            names = [
                f"{WITHHELD}{k + 1}.png"
                if k in result.withheld
                else f"imagine-{result.seed + k}.png"
                for k in range(len(result.images))
            ]
            files = list(zip(names, result.images, strict=True))
            return Reply(note=note, files=files)
        case UpscaleResult():
            if result.withheld:
                note = "-# the upscaled image was withheld by the safety filter"
                return Reply(note=note, files=[(f"{WITHHELD}upscale.png", result.image)])
            note = f"-# upscaled {result.factor}x · {result.width}x{result.height}"
            if result.format != "png":
                note += f" · {result.format.upper()}, to fit Discord's upload limit"
            name = f"upscale-{result.seed}-{result.factor}x.{result.format}"
            return Reply(note=note, files=[(name, result.image)])
        case SpeakResult():
            return Reply(note=f"-# {result.seconds:.1f} s", files=[("speech.ogg", result.ogg)])
        case SentimentResult():
            return Reply(f"**{result.label}** ({result.score:.0%})")
        case ClassifyResult():
            rows = zip(result.labels, result.scores, strict=True)
            return Reply("\n".join(f"`{score:6.1%}` {label}" for label, score in rows))
        case ChatResult():
            return Reply(result.text) if result.text else Reply(note="*(no answer)*")
        case TranscribeResult():
            return render_transcript(result)
        case DescribeResult():
            return render_description(result)
    raise TypeError(f"no rendering for {type(result).__name__}")


async def run_task(
    interaction: Interaction,
    task: str,
    request: Any = None,
    read: Callable[[], Awaitable[Any]] | None = None,
    render_result: Callable[[Any], Reply] = render,
    then: Callable[[JobHandle], None] | None = None,
    final_view: Callable[[Interaction, Any], Awaitable[discord.ui.View | None]] | None = None,
    spoiler: bool = False,
    private: bool = False,
) -> None:
    """Admit (a refusal answers privately at once), defer, then do what may be slow:
    ``read`` the request if it isn't given, make the ``final_view`` the result will carry
    (an image's buttons store its options). Then a watcher follows the job, replying as the
    reply policy says (``render_result`` shapes the result), and ``then`` is told of the
    job (speech said in a call). A ``spoiler`` result (made from a spoiler image) is
    rendered, and previewed, behind a spoiler. A ``private`` one (a member's own catch-up)
    is seen by them alone, whatever the server's reply setting."""
    bot = interaction.client
    policy = ReplyPolicy(True, "dm") if private else bot.reply_policy(interaction)
    with bot.invoker.admit(task, caller_of(interaction), request) as admission:
        await interaction.response.defer(thinking=True, ephemeral=policy.ephemeral)
        if read is not None:
            request = await read()
        view = await final_view(interaction, request) if final_view is not None else None
        handle = admission.submit(request)
    if then is not None:
        then(handle)
    place = InteractionPlace(interaction, policy)
    rendered = (lambda result: hidden(render_result(result))) if spoiler else render_result
    bot.follow(handle, place, rendered, interaction.user.id, view, spoiler)
